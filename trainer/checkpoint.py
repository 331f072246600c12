"""Atomic checkpoints: safetensors weights + the training state needed for exact resume.

A checkpoint is a folder ``RUN/checkpoints/step_XXXXXXXX/`` holding one
``<name>.safetensors`` per weight group (model, ema, ...), ``train_state.pt``
(optimizer, RNG and data-order state) and ``meta.json``. It is written into a hidden
temporary folder and renamed into place, then ``RUN/checkpoints/latest`` is replaced
atomically, so a ``kill -9`` at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from model.io import (  # noqa: F401 - the read side lives in model.io (re-exported for the trainer)
    REPO_ROOT,
    CheckpointError,
    check_content,
    content_hash,
    file_hash,
    latest_checkpoint,
    load_into,
    load_weights,
    read_card,
    resolve_full,
)
from world.io import atomic_write_text, fsync_dir, write_failure  # noqa: F401 - re-exported


def rng_state() -> dict[str, Any]:
    """The generators' states as tensors and plain values only (what ``torch.load(weights_only=True)``
    reads back: a checkpoint carries no pickled objects that could run code)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
            "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else keys
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    random.setstate(state["python"])


def _load_train_state(path: Path) -> dict[str, Any]:
    """``train_state.pt`` read with ``weights_only=True``: tensors, numbers, strings and containers
    only (and the numpy arrays of checkpoints written before the states were plain). A file that
    holds anything else is refused, never executed."""
    try:
        from numpy._core.multiarray import _reconstruct, scalar  # type: ignore[import-not-found]
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    dtypes = [type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64, np.float32, np.bool_)]
    safe = [_reconstruct, scalar, np.ndarray, np.dtype, *dtypes]
    with torch.serialization.safe_globals(safe):
        return torch.load(path, weights_only=True)


def begin_checkpoint(run_dir: str | Path, step: int) -> Path:
    """The hidden folder a checkpoint is written into before it is renamed into place (rank 0
    makes it; under FSDP every rank writes its shards into it before rank 0 finishes it)."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp_step_{step:08d}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def save_checkpoint(run_dir: str | Path, step: int, weights: dict[str, dict[str, torch.Tensor]],
                    train_state: dict[str, Any], meta: dict[str, Any], keep: int = 3,
                    tmp: Path | None = None) -> Path:
    """Write checkpoint ``step`` atomically; keep the newest ``keep`` checkpoints. ``tmp``: a
    folder from :func:`begin_checkpoint` that already holds other files (FSDP shards)."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:08d}"
    try:
        if tmp is None:
            tmp = begin_checkpoint(run_dir, step)
        for name, sd in weights.items():
            tensors = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
            save_file(tensors, str(tmp / f"{name}.safetensors"), metadata={"step": str(step)})
        torch.save(train_state, tmp / "train_state.pt")
        (tmp / "meta.json").write_text(json.dumps({**meta, "step": step}, indent=2, default=str))
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
    except (OSError, RuntimeError, SafetensorError) as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(_write_failure(e, root, step)) from e
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_dir(root)
    atomic_write_text(root / "latest", final.name + "\n")
    _prune(root, keep, final)
    return final


def _write_failure(e: BaseException, root: Path, step: int) -> str:
    """Why a checkpoint could not be written, in words, and what to do."""
    last = latest_checkpoint(root.parent)
    resume = f"it resumes from {last.name}" if last is not None else "it starts again from step 0"
    _kind, reason = write_failure(e, root, full_below=64 << 20)
    return (f"could not write checkpoint step {step} to {root}: {reason}; the earlier checkpoints are intact: "
            f"fix that and run the same command again ({resume})")


def _prune(root: Path, keep: int, current: Path) -> None:
    """Keep the newest ``keep`` checkpoints, and never the one just written (``current``)."""
    ckpts = sorted(p for p in root.glob("step_*") if p.is_dir())
    for p in ckpts[:-keep] if keep > 0 else []:
        if p != current:
            shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".tmp_step_*"):  # leftovers of killed writers
        if p.is_dir() and not p.name.endswith(f"_{os.getpid()}"):
            shutil.rmtree(p, ignore_errors=True)


def archive_run(run_dir: str | Path) -> Path | None:
    """Before a ``--fresh`` start: move a run folder's previous training (its checkpoints, metrics,
    TensorBoard logs and config) into ``RUN_DIR/replaced/<UTC time>/``, so that the new run starts
    empty and the old one is kept, not overwritten, pruned or resumed by mistake. Returns where it
    went (None when there was nothing to move)."""
    run = Path(run_dir)
    parts = [run / n for n in ("checkpoints", "metrics.jsonl", "tb", "config.json", "config_changes.jsonl")
             if (run / n).exists()]
    if not (run / "checkpoints").is_dir() or not any((run / "checkpoints").glob("step_*")):
        return None
    dest = run / "replaced" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    n = 0
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{dest.name.split('.')[0]}.{n}")
    dest.mkdir(parents=True)
    for p in parts:
        os.rename(p, dest / p.name)
    fsync_dir(run)
    return dest






def load_checkpoint(path: str | Path, names: tuple[str, ...] = ("model",)) -> tuple[dict[str, dict[str, torch.Tensor]],
                                                                               dict[str, Any], dict[str, Any]]:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder {path} not found")
    weights = {n: load_weights(path, n) for n in names}
    try:
        state = _load_train_state(path / "train_state.pt")
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {path / 'train_state.pt'}: it holds objects beyond tensors and plain values, which "
            f"could run code when loaded ({str(e).splitlines()[0][:200]}); only resume run folders you made, "
            f"or start over with --fresh") from e
    except Exception as e:  # noqa: BLE001 - any failure here means the file is damaged
        raise CheckpointError(f"checkpoint {path} has a damaged train_state.pt ({e}); "
                              f"resume from an earlier checkpoint") from e
    try:
        meta = json.loads((path / "meta.json").read_text())
    except Exception as e:  # noqa: BLE001 - any failure here means the files are damaged
        raise CheckpointError(f"checkpoint {path} has a damaged meta.json ({e}); "
                              f"resume from an earlier checkpoint") from e
    return weights, state, meta












