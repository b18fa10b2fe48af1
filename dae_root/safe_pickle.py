"""A restricted unpickler for downloaded annotation and weight files: plain containers and numpy arrays only."""
from __future__ import annotations

import io
import pickle
from pathlib import Path

from dae.errors import DaeError

# Everything a numpy array, scalar or dtype needs to be rebuilt, and nothing that can run other code.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # Python-2 pickles of numpy arrays store their bytes through this
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("collections", "OrderedDict"),
}


class UnsafePickleError(DaeError):
    """The pickle asked for something outside the allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str, **kwargs):
        super().__init__(file, **kwargs)
        self._source = source

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(f"{self._source}: refusing to load: the pickle asks for {module}.{name} "
                                "(only plain containers and numpy arrays are allowed)")


def loads(data: bytes, source: str = "pickle", encoding: str = "latin1"):
    """Unpickle bytes with the allow-list. latin1 keeps Python-2 numpy pickles readable."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source, encoding=encoding).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # truncated or garbage input
        raise DaeError(f"{source}: not a readable pickle ({exc.__class__.__name__}: {exc})") from None


def load(path, encoding: str = "latin1"):
    """Unpickle a file with the allow-list."""
    path = Path(path)
    if not path.is_file():
        raise DaeError(f"{path} does not exist")
    return loads(path.read_bytes(), str(path), encoding=encoding)
