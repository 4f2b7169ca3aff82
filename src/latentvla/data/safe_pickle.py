"""Allow-list unpickling for real-data logs (OpenScene ``navsim_logs/*.pkl``).

A pickle can run any callable it names, so real-data logs are never read with ``pickle.load``: this unpickler
resolves only builtin containers/scalars and the numpy reconstructors that arrays and scalars need. OpenScene
logs were written under numpy 1.x and reference ``numpy.core.*``; numpy 2 renamed that package ``numpy._core``,
so both spellings map to whichever the installed numpy provides. Anything else is refused with an error naming
the file and the class.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from latentvla.data.store import DataError, read_data_file

_BUILTINS = frozenset({
    "dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float", "bool", "complex",
    "slice", "range",
})
# (module suffix after numpy.core / numpy._core, name)
_NUMPY_CORE = frozenset({
    ("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"),
})
_NUMPY_TOP = frozenset({"ndarray", "dtype"})


class UnsafePickleError(DataError):
    """The pickle names a class or function outside the allow-list."""


def _numpy_core(sub: str, name: str) -> Any:
    import importlib

    for pkg in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{pkg}.{sub}"), name)
        except (ImportError, AttributeError):
            continue
    raise AttributeError(f"numpy has no {sub}.{name}")  # pragma: no cover - numpy always has them


class AllowListUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` only returns allow-listed builtins and numpy reconstructors."""

    def __init__(self, file: io.BufferedIOBase, source: str = "<bytes>"):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _BUILTINS:  # __builtin__: protocol-2 pickles
            import builtins

            return getattr(builtins, name)
        if module == "_codecs" and name == "encode":  # protocol-2 pickles of numpy buffers
            import codecs

            return codecs.encode
        if module == "numpy" and name in _NUMPY_TOP:
            return getattr(np, name)
        if module == "numpy" and name.startswith(("float", "int", "uint", "bool")) and hasattr(np, name):
            return getattr(np, name)  # dtype classes by name (numpy scalar types)
        for prefix in ("numpy.core.", "numpy._core."):
            if module.startswith(prefix) and (module[len(prefix):], name) in _NUMPY_CORE:
                return _numpy_core(module[len(prefix):], name)
        if module == "numpy.dtypes" and name.endswith("DType"):
            import numpy.dtypes

            return getattr(numpy.dtypes, name)
        raise UnsafePickleError(f"{self.source}: refusing to unpickle '{module}.{name}': real-data logs may only hold "
                                f"builtin containers and numpy arrays (allow-list unpickler); if this file is a "
                                f"genuine OpenScene log, report the class so it can be reviewed and allow-listed")


def safe_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` through the allow-list; corrupt data raises a ``DataError`` naming ``source``."""
    try:
        return AllowListUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated / garbage pickles raise a zoo of exception types
        raise DataError(f"{source} is not a readable pickle ({type(e).__name__}: {e}); re-download the file") from None


def safe_load(path: str | Path) -> Any:
    """Read and unpickle a file through the allow-list (errors name the file)."""
    path = Path(path)
    data = read_data_file(path, "")
    return safe_loads(data, str(path))
