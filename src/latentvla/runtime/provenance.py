"""Provenance recorded in every run directory: code version, environment, inputs' digests, parent runs."""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from pathlib import Path

import latentvla


def git_commit(start: Path | None = None) -> str | None:
    """The checkout's commit (with '+dirty' when the tree has changes), or None outside a git checkout."""
    cwd = str(start or Path(__file__).resolve().parent)
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def provenance(inputs: dict[str, Path] | None = None, parents: list[str] | None = None) -> dict:
    out = {
        "latentvla_version": latentvla.__version__,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "inputs": {k: file_digest(v) for k, v in (inputs or {}).items() if Path(v).is_file()},
        "parents": list(parents or []),
    }
    try:
        import numpy

        out["numpy"] = numpy.__version__
    except ImportError:  # pragma: no cover
        pass
    return out
