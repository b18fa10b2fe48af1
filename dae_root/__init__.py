"""dae: action quality assessment with predicted score distributions (Distribution Auto-Encoder)."""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("dae-aqa")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
