"""Where a model or a measurement ran: the machine's name (the GPU's, else the CPU model), the device, and the
software versions and threads, as leaderboard rows, run folders' config.json and benchmark results record them.
Importing this module does not import torch (each probe imports it when called).
"""
from __future__ import annotations


def machine_name(device: str = "cpu") -> str:
    """The GPU's name for a CUDA device, else the CPU model (as /proc/cpuinfo or the platform names it)."""
    import platform

    if str(device).startswith("cuda"):
        import torch

        try:
            return torch.cuda.get_device_name(torch.device(device))
        except (RuntimeError, AssertionError, ValueError):
            return f"unknown GPU ({device})"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def environment(device: str = "cpu") -> dict:
    """The leaderboard columns naming where a model was trained: machine, device and torch version."""
    import torch

    return {"machine": machine_name(device), "device": str(device), "torch_version": torch.__version__}


def software_and_machine() -> dict:
    """What a run or study folder's config.json records of where it ran: versions, threads and the machine."""
    import os
    import platform

    import numpy
    import torch

    from dae import __version__

    return {"dae_version": __version__, "torch_version": torch.__version__, "numpy_version": numpy.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "machine": f"{platform.machine()} {machine_name()}", "cpu_count": os.cpu_count()}
