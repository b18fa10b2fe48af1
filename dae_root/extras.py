"""Optional dependencies (the package's extras): import one, or say in one line which extra installs it."""
from __future__ import annotations

import importlib

from dae.errors import DaeError

# module -> (what pip calls it, the dae-aqa extra that installs it)
EXTRAS = {
    "decord": ("decord", "video"),
    "av": ("PyAV", "video"),
    "matplotlib": ("matplotlib", "plots"),
    "dask": ("dask.distributed", "dist"),
    "distributed": ("dask.distributed", "dist"),
}


class MissingExtra(DaeError):
    """An optional dependency is not installed; the message names the pip command that installs it."""


def install_hint(module: str) -> str:
    package, extra = EXTRAS[module.split(".")[0]]
    return f'{package}, which is not installed: pip install "dae-aqa[{extra}]"'


def require(module: str, purpose: str):
    """`import module`, or MissingExtra('<purpose> needs <package>, which is not installed: pip install ...').

    Only the module itself missing counts: an installed package that fails to import raises as it is."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if not (module == missing or module.startswith(missing + ".")):
            raise
        raise MissingExtra(f"{purpose} needs {install_hint(module)}") from None
