"""Datasets: PRISM (real or simulated), prompt categories and MMLU."""
