"""Atomic, deterministic file I/O shared by every stage (datasets, checkpoints, run directories).

Determinism matters: the same seed and config must give byte-identical files, so zip members carry a fixed
timestamp and JSON is written with sorted keys.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, fsync, then rename: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; datasets and caches are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any, indent: int | None = None) -> str:
    """Canonical JSON: sorted keys, numpy scalars/arrays converted, NaN refused."""
    return json.dumps(obj, sort_keys=True, indent=indent, default=_json_default, allow_nan=False)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")


def write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    atomic_write_text(Path(path), dumps_json(obj, indent=indent) + "\n")


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is corrupt (not valid JSON: {e})") from None


def npz_bytes(arrays: Mapping[str, np.ndarray], compress: bool = True) -> bytes:
    """An ``.npz`` that ``np.load`` reads, with fixed member timestamps (np.savez stamps the clock)."""
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_ZIP_TIME)
            info.compress_type = method
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue(), compresslevel=6 if compress else None)
    return buf.getvalue()


def load_npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def format_sha256sums(entries: Iterable[tuple[str, str]]) -> str:
    """``sha256sum -c`` format: '<hex>  <relative path>' per line, sorted by path."""
    return "".join(f"{digest}  {rel}\n" for rel, digest in sorted(entries, key=lambda e: e[0]))


def parse_sha256sums(path: Path) -> dict[str, str]:
    """Relative path -> digest; raises naming the file and line if the format is broken."""
    out: dict[str, str] = {}
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("  ", 1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise ValueError(f"{path}:{i} is not a 'sha256sum' line: {line!r}")
        out[parts[1].lstrip("*")] = parts[0]
    return out


def check_cache_meta(path: Path, meta: Mapping[str, Any], fields: Iterable[str], what: str) -> None:
    """Write ``path/meta.json`` for a new cache directory, or check that an existing one agrees with ``meta`` on
    ``fields``; a mismatch or an unreadable file raises a ValueError that names the cache and says to delete it."""
    meta_path = Path(path) / "meta.json"
    if not meta_path.is_file():
        write_json(meta_path, dict(meta), indent=1)
        return
    try:
        old = read_json(meta_path)
    except ValueError as e:
        raise ValueError(f"{e}; delete {path} to rebuild the {what}") from None
    for field in fields:
        if old.get(field) != meta[field]:
            raise ValueError(f"{what} {path} was built with {field}={old.get(field)!r}, not {meta[field]!r} "
                             f"(changed config, weights or cache format); delete {path} to rebuild it")


def weights_metadata(path: str | Path, fmt: str, missing_hint: str) -> dict[str, str]:
    """The metadata of a safetensors weights file written in format ``fmt``; a missing file raises
    FileNotFoundError with ``missing_hint`` (what to run), another format a ValueError naming both."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found ({missing_hint})")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != fmt:
        raise ValueError(f"{path} is not a {fmt} checkpoint (format={meta.get('format')!r})")
    return meta
