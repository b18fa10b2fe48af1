"""Precision of extraction as part of a feature file's identity: its names, the default, and how older files spelt it."""
from __future__ import annotations

from dae.errors import UsageError

# fp32 (TF32 off) is the reference; bf16 is autocast, ~1e-2 relative from it on features and much faster on
# GPUs. A feature file records its precision, and files (or shards, or a resume) of two precisions never mix.
PRECISIONS = ("fp32", "bf16")
# What earlier versions wrote into the `precision` attribute.
_LEGACY = {"float32": "fp32", "bfloat16 autocast": "bf16"}


def resolve_precision(precision: str | None, device_type: str) -> str:
    """'fp32' or 'bf16'; auto (None) is bf16 on CUDA and fp32 on a CPU."""
    text = "auto" if precision is None else str(precision).strip().lower()
    if text == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    if text not in PRECISIONS:
        raise UsageError(f"--precision {precision!r}: expected auto, {' or '.join(PRECISIONS)}")
    return text


def normalise_precision(value) -> str | None:
    """A file's `precision` attribute as fp32/bf16 (older files wrote 'float32', 'bfloat16 autocast'); None if absent."""
    if value is None or str(value) == "":
        return None
    return _LEGACY.get(str(value), str(value))
