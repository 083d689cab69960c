"""Steering-vector construction methods."""

from steerlens.methods.caa import mean_difference

__all__ = ["mean_difference"]
