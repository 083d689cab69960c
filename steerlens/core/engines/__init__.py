"""The engines that run a hooked model: one ``Engine`` interface (``base``), one module each
for the TransformerLens path (``tl``), the fast path (``hf``) and the compiled decoding engine
(``compiled``, imported on use: it loads ``torch._dynamo``); ``resolve_engine`` picks one."""

from .base import Engine
from .hf import FAST_HOOKS, HFEngine, fast_path_blocker, hf_twin
from .names import ENGINES, PASS_ENGINES, EngineName, PassEngineName
from .resolve import auto_compiles, resolve_engine
from .tl import TLEngine

__all__ = [
    "ENGINES",
    "FAST_HOOKS",
    "PASS_ENGINES",
    "Engine",
    "EngineName",
    "HFEngine",
    "PassEngineName",
    "TLEngine",
    "auto_compiles",
    "fast_path_blocker",
    "hf_twin",
    "resolve_engine",
]
