"""Where I3D runs: the device, its name in files, the model's memory layout, and the autocast of a precision."""
from __future__ import annotations

import contextlib

import torch

from dae.memory import keep_freed_memory


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


def memory_format(device: torch.device):
    """The layout clips enter the model in (the model's own, set by prepare_model)."""
    return torch.channels_last_3d if device.type == "cuda" else torch.contiguous_format


def autocast(device: torch.device, precision: str):
    """The context a forward pass runs in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
