"""Where I3D runs: the device, its name in files, the model's memory layout, and the autocast of a precision."""
from __future__ import annotations

import contextlib
import ctypes
import sys

import torch

# glibc's mallopt parameters (malloc.h) and the values stage one sets on the CPU
_M_TRIM_THRESHOLD, _M_TOP_PAD = -1, -2
_KEEP_FREED_BYTES, _GROW_HEAP_BYTES = 2 ** 31 - 1, 2 ** 30


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"


def default_batch_clips(device: torch.device) -> int:
    return 32 if device.type == "cuda" else 8


def prepare_model(model, device: torch.device, precision: str = "fp32"):
    """I3D on the device in eval mode; on CUDA channels_last_3d, cuDNN picks its fastest kernels and fp32 keeps TF32 off."""
    model = model.to(device).eval()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        if precision == "fp32":  # the reference: TF32 would move features by ~1e-3
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
    else:
        keep_freed_memory()
    return model.to(memory_format=memory_format(device))


def keep_freed_memory() -> bool:
    """Let glibc keep freed heap memory for the next batch instead of handing it back to the kernel.

    I3D on the CPU allocates and frees hundreds of MB of activations per batch; by default glibc trims
    the heap after every large free, so every batch page-faults all of it in again (a quarter of the
    model's time in the kernel on a 2-core EPYC). A high trim threshold and a 1 GiB heap step keep the
    pages mapped: the process holds its peak memory, which extraction reaches every batch anyway.
    Returns False where the C library is not glibc (nothing is changed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED_BYTES)) and bool(mallopt(_M_TOP_PAD, _GROW_HEAP_BYTES))


def memory_format(device: torch.device):
    """The layout clips enter the model in (the model's own, set by prepare_model)."""
    return torch.channels_last_3d if device.type == "cuda" else torch.contiguous_format


def autocast(device: torch.device, precision: str):
    """The context a forward pass runs in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
