"""Small file and command-line helpers every package shares (the runtime, the trainer, the benchmarks).

- :func:`atomic_write_text` / :func:`atomic_write_json`: readers see the old file or the new one,
  never half of one (temporary file, fsync, ``os.replace``, fsync of the folder);
- :func:`git_commit`: the commit of this checkout, for the provenance of reports, cards and datasets;
- :func:`write_failure`: why a write failed, in words (a full disk, a read-only folder, ...);
- :func:`parse_key_values`: ``key=value`` command-line items (``--set``, ``--setting``), values read
  as YAML scalars (``2`` int, ``0.5`` float, ``room`` str).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent


def fsync_dir(path: Path) -> None:
    """Make a folder's entries durable (a rename into it survives a power cut); best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (a process killed mid-write leaves the old file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def atomic_write_json(path: str | Path, data: Any, indent: int | None = None) -> None:
    """:func:`atomic_write_text` of ``data`` as JSON (numpy scalars and arrays as numbers and lists)."""
    atomic_write_text(path, json.dumps(data, indent=indent, default=json_default))


def git(*args: str) -> str | None:
    """The output of ``git ARGS`` in this checkout, or None (not a checkout, no git)."""
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def git_commit() -> str | None:
    """``git rev-parse HEAD`` of this checkout, or None outside one."""
    return git("rev-parse", "HEAD")


def parse_key_values(items: Iterable[str], what: str, example: str = "key=value", yaml_values: bool = True,
                     error: type[Exception] = ValueError) -> dict[str, Any]:
    """``key=value`` items to a dict (a later key wins). Values are YAML scalars unless ``yaml_values``
    is False (then strings). A malformed item raises ``error`` naming ``what`` and the item."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise error(f"{what} must look like key=value (e.g. {example}), got {item!r}")
        if yaml_values:
            try:
                out[key.strip()] = yaml.safe_load(value)
            except yaml.YAMLError as e:
                raise error(f"{what} {item!r}: the value is not a YAML scalar ({e})") from None
        else:
            out[key.strip()] = value
    return out


# what an OSError's errno means for a write, in words
_WRITE_ERRNO = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied", errno.ENOTDIR: "a file stands where a folder should be",
                errno.EEXIST: "a file stands where a folder should be"}


def write_failure(e: BaseException, where: str | Path, full_below: int = 1 << 20) -> tuple[str, str]:
    """Why writing into ``where`` failed: (kind, reason in words). ``kind`` is "full" (no space left: the
    error says so, or under ``full_below`` bytes are free there; torch and safetensors report a full
    disk only as an I/O error), "denied" (read-only or not permitted, a file where a folder should
    be) or "other" (the error's first line)."""
    where = Path(where)
    try:
        free: int | None = shutil.disk_usage(where if where.exists() else where.parent).free
    except OSError:
        free = None
    code = getattr(e, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(e) or (free is not None and free < full_below):
        shown = "?" if free is None else (f"{free >> 20} MiB" if free >= 1 << 20 else f"{free >> 10} KiB")
        return "full", f"No space left on device ({shown} free in {where})"
    if code in _WRITE_ERRNO:
        return "denied", f"{_WRITE_ERRNO[code]} ({getattr(e, 'filename', None) or where})"
    text = str(e).strip()
    return "other", text.splitlines()[0][:300] if text else type(e).__name__
