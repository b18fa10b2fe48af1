"""Which torch device a command runs on: `auto`, `cpu`, `cuda` or `cuda:I`, checked against what torch sees."""
from __future__ import annotations

from dae.errors import UsageError

DEVICE_HELP = "auto, cpu, cuda or cuda:I"


def resolve_device(device: str = "auto"):
    """The torch.device for `device`; auto is the GPU when torch sees one. A device torch cannot use is a usage error."""
    import torch

    text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise UsageError(f"--device {device!r}: expected {DEVICE_HELP}") from None
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {device!r}: expected {DEVICE_HELP}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: this torch sees no CUDA GPU (torch {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA devices")
    return dev
