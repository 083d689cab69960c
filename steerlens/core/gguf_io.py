"""GGUF control-vector files, as read and written by llama.cpp (``--control-vector``) and repeng.

Layout: ``general.architecture = "controlvector"``, ``controlvector.model_hint`` (string),
``controlvector.layer_count`` (uint32) and one float32 tensor ``direction.{k}`` per layer.
llama.cpp adds ``direction.{k}`` to the output of block ``k`` (0-based) and never steers
block 0 (it rejects ``direction.0``). steerlens layer ``l`` is the output of block ``l``, so it
is written as ``direction.{l}`` unchanged, and a layer-0 vector cannot be exported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ARCH = "controlvector"


def write_control_vector(
    path: str | Path, directions: dict[int, np.ndarray], model_hint: str
) -> Path:
    import gguf

    if 0 in directions:
        raise ValueError(
            "llama.cpp control vectors cannot steer layer 0 (it rejects direction.0); "
            "drop layer 0 with vector.select(...) before exporting"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), ARCH)
    writer.add_string(f"{ARCH}.model_hint", model_hint)
    writer.add_uint32(f"{ARCH}.layer_count", len(directions))
    for layer, arr in sorted(directions.items()):
        writer.add_tensor(f"direction.{layer}", np.ascontiguousarray(arr, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _field_str(reader: object, name: str) -> str | None:
    field = reader.get_field(name)  # type: ignore[attr-defined]
    if field is None or not len(field.parts):
        return None
    return str(bytes(field.parts[-1]), encoding="utf-8", errors="replace")


def read_control_vector(path: str | Path) -> tuple[str, dict[int, np.ndarray]]:
    """(model hint, {layer: float32 array}) of a GGUF control vector."""
    import gguf

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no GGUF file at {path}")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a readable GGUF file ({exc})") from exc
    arch = _field_str(reader, "general.architecture")
    if arch != ARCH:
        raise ValueError(f"{path}: architecture is {arch!r}, not a {ARCH!r} file")
    hint = _field_str(reader, f"{ARCH}.model_hint") or "unknown"
    out: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        if not tensor.name.startswith("direction."):
            continue
        try:
            layer = int(tensor.name.split(".", 1)[1])
        except ValueError as exc:
            raise ValueError(f"{path}: bad tensor name {tensor.name!r}") from exc
        out[layer] = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
    if not out:
        raise ValueError(f"{path}: no direction.* tensors")
    return hint, out
