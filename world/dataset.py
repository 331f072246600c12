"""Recorded datasets: crash-safe Minari (arrow) writer and a reader that needs no env vars.

A dataset is a Minari dataset in the ``arrow`` format, stored losslessly (no JPEG: the frames
train a model and PSNR is measured against them)::

    DIR/                      # basename is a Minari dataset id, e.g. adventure-explorer-v0
      data/metadata.json      # Minari's metadata plus dreamstep's recording metadata
      data/<id>/part-0.arrow  # one episode: T+1 observations, actions, rewards, ..., infos
      data/<id>/metadata.json # the episode's metadata (seed, stats)
      stats.json              # the recorder's summary (written by world.record)

``MINARI_DATASETS_PATH=<parent of DIR> python -c "import minari; minari.load_dataset('<basename>')"``
reads it; :func:`open_dataset` and :func:`load_episodes` read it from its folder directly.

Crash safety: an episode is written completely into ``DIR/.staging/`` (by Minari's own
ArrowStorage, so the layout is exactly Minari's), fsynced, moved into ``data/<id>`` with one
atomic ``os.rename``, and only then counted by rewriting ``data/metadata.json`` atomically
(temp file, fsync, ``os.replace``). The top metadata is the single source of truth: an
episode folder it does not count is an unfinished leftover that a resume deletes. A
``kill -9`` at any moment therefore leaves every counted episode readable.

Episode arrays follow Minari: ``observations`` has T+1 frames, ``actions[t]`` is the action
taken at observation t (leading to observation t+1); ``infos`` holds T+1 rows (the reset's
info, then one per step). The clip convention of :mod:`world.core` (``clip_actions[i]``
leads *to* frame i) is ``clip_actions = [0, *actions]``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from world.io import atomic_write_json, fsync_dir, json_default  # noqa: F401 - atomic_write_json: re-exported

DATA = "data"
STAGING = ".staging"
METADATA = "metadata.json"
#: arrow IPC compression of episode files (lossless; tile-based frames shrink ~20-100x)
COMPRESSION = "zstd"
#: Minari dataset ids without a namespace: ``name-vN``
DATASET_NAME_RE = re.compile(r"^[-_A-Za-z0-9]+-v\d+$")
ACTION_CONVENTION = (
    "Minari: observations has T+1 frames and actions[t] is the action taken at observation t, "
    "leading to observation t+1; infos has T+1 rows (reset, then each step). As a clip "
    "(world.core convention, actions[i] leads to frame i): clip_actions = [0] + actions."
)


class DatasetError(RuntimeError):
    """A dataset folder is missing, malformed, or does not match what was asked."""


@dataclass
class EpisodeRecord:
    """One recorded episode, in Minari's layout (see the module docstring)."""

    id: int
    seed: int | None
    observations: np.ndarray  # (T+1, H, W, 3) uint8
    actions: np.ndarray  # (T,) int64
    rewards: np.ndarray  # (T,) float64
    terminations: np.ndarray  # (T,) bool
    truncations: np.ndarray  # (T,) bool
    infos: dict[str, Any] = field(default_factory=dict)  # key -> (T+1, ...) array
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.actions)


# ---------------------------------------------------------------------- naming / paths
def dataset_id(out: str | Path) -> str:
    """The Minari dataset id of a dataset folder: its basename, which must read ``name-vN``."""
    name = Path(out).name
    if not DATASET_NAME_RE.fullmatch(name):
        raise DatasetError(
            f"dataset folder name {name!r} (from {str(out)!r}) is not a valid Minari dataset id: "
            f"the last path component must look like 'name-vN' (letters, digits, '-', '_', then a "
            f"version), e.g. data/datasets/adventure-explorer-v0"
        )
    return name


def _require_dataset(root: Path) -> Path:
    meta = root / DATA / METADATA
    if not meta.is_file():
        raise DatasetError(
            f"no dataset at {str(root.resolve())!r} (expected {meta.resolve()}); record one with "
            f"`python -m world.record --world adventure --policy explorer --out {root}`"
        )
    return meta


def read_metadata(root: str | Path) -> dict[str, Any]:
    """The raw top metadata (``DIR/data/metadata.json``) of a dataset folder."""
    meta = _require_dataset(Path(root))
    try:
        return json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"dataset {str(root)!r} is damaged: {meta} is not valid JSON ({e}); record the "
                           f"dataset again into a new folder") from e


def recorded_settings(root: str | Path | None, world: str) -> dict[str, Any]:
    """The settings of ``world`` a dataset was recorded with ({} when unknown or absent)."""
    if not root or not (Path(root) / DATA / METADATA).is_file():
        return {}
    rec = read_metadata(root).get("recording", {})
    if isinstance(rec, dict) and rec.get("world") == world:
        return dict(rec.get("settings", {}))
    return {}


def trained_datasets(config: dict[str, Any]) -> list[str]:
    """Every dataset a run config or model card says its model trained on: ``data.dataset`` and
    ``data.extra_datasets``, in that order."""
    data = config.get("data") or {}
    return [str(d) for d in [data.get("dataset"), *(data.get("extra_datasets") or [])] if d]


def dir_size(path: Path) -> int:
    """Bytes of all files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------- reading
def open_dataset(root: str | Path) -> Any:
    """The dataset folder as a ``minari.MinariDataset`` (no MINARI_DATASETS_PATH needed)."""
    root = Path(root)
    _require_dataset(root)
    read_metadata(root)  # a damaged metadata.json is named before minari reads it
    try:
        from minari import MinariDataset
    except ImportError as e:
        raise DatasetError("reading datasets needs minari: pip install 'dreamstep[minari]'") from e
    try:
        return MinariDataset(str(root / DATA))
    except Exception as e:  # noqa: BLE001 - minari/arrow errors name no file: say which dataset
        raise _damaged(root, "its metadata", e) from e


def _damaged(root: Path, where: str, e: BaseException) -> DatasetError:
    first = str(e).splitlines()[0][:200] if str(e) else ""
    return DatasetError(f"dataset {root} could not be read at {where}: {type(e).__name__}: {first}; the files are "
                        f"damaged: record the dataset again (python -m world.record ... --out {root}, into a new "
                        f"folder)")


def iter_episodes(root: str | Path, episodes: Sequence[int] | None = None) -> Iterator[EpisodeRecord]:
    """Yield episodes (all, or the given ids in that order) as :class:`EpisodeRecord`."""
    root = Path(root)
    ds = open_dataset(root)
    ids = list(range(ds.total_episodes)) if episodes is None else [int(i) for i in episodes]
    bad = [i for i in ids if not 0 <= i < ds.total_episodes]
    if bad:
        raise DatasetError(f"episode ids {bad} out of range: {root} holds 0..{ds.total_episodes - 1}")
    current = None
    episodes_iter = ds.iterate_episodes(ids)
    while True:
        try:  # minari/arrow/zstd errors name no file: say which dataset and where
            ep = next(episodes_iter, None)
            if ep is None:
                return
            meta = json.loads((root / DATA / str(ep.id) / METADATA).read_text())
            rec = EpisodeRecord(
                id=int(ep.id), seed=meta.get("seed"), observations=np.asarray(ep.observations),
                actions=np.asarray(ep.actions, np.int64), rewards=np.asarray(ep.rewards),
                terminations=np.asarray(ep.terminations, bool),
                truncations=np.asarray(ep.truncations, bool),
                infos=dict(ep.infos) if isinstance(ep.infos, dict) else {}, metadata=meta)
        except (DatasetError, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001
            raise _damaged(root, f"the episode after {current}" if current is not None else "its first episode",
                           e) from e
        current = rec.id
        yield rec


def load_episodes(root: str | Path, episodes: Sequence[int] | None = None) -> list[EpisodeRecord]:
    """Load episodes of a dataset folder into memory (see :func:`iter_episodes`)."""
    return list(iter_episodes(root, episodes))


# ---------------------------------------------------------------------- info columns
def sample_observations(root: str | Path, limit: int, seed: int = 0) -> np.ndarray:
    """Up to ``limit`` observations (N, H, W, 3) uint8 drawn uniformly without replacement from every
    episode of a dataset (all of them when it holds fewer), in dataset order; the draw follows ``seed``.
    One episode is in memory at a time besides the sample."""
    if limit < 1:
        raise DatasetError(f"sample_observations needs limit >= 1, got {limit}")
    root = Path(root)
    meta = read_metadata(root)
    lengths = [int(json.loads((root / DATA / str(i) / METADATA).read_text())["total_steps"]) + 1
               for i in range(int(meta["total_episodes"]))]
    total = sum(lengths)
    if not total:
        raise DatasetError(f"dataset {str(root)!r} holds no observations: record it again")
    pick = np.sort(np.random.default_rng(seed).choice(total, size=min(limit, total), replace=False))
    out, start = [], 0
    for rec, n in zip(iter_episodes(root), lengths):
        mine = pick[(pick >= start) & (pick < start + n)] - start
        if len(mine):
            out.append(rec.observations[mine])
        start += n
    return np.concatenate(out)


def info_columns(infos: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """Turn per-step info dicts into Minari info columns; returns (columns, skipped keys).

    Recorded keys are those every *step* info has (the reset's info may lack some, e.g. an
    event string; its row gets the column's zero). Scalars become Python lists, fixed-shape
    numeric tuples/arrays become ``(N, ...)`` arrays; values of other kinds (nested dicts,
    ragged lists, mixed types) are skipped and reported.
    """
    steps = infos[1:] if len(infos) > 1 else infos
    keys = [k for k in steps[0] if all(k in i for i in steps)]
    columns, skipped = {}, []
    for key in keys:
        column = _column([i.get(key) for i in infos])
        if column is None:
            skipped.append(key)
        else:
            columns[key] = column
    return columns, skipped


def _column(values: list[Any]) -> list[Any] | np.ndarray | None:
    present = [v for v in values if v is not None]
    if all(isinstance(v, (bool, np.bool_)) for v in present):
        return [bool(v) if v is not None else False for v in values]
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in present):
        return [int(v) if v is not None else 0 for v in values]
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in present):
        return [float(v) if v is not None else 0.0 for v in values]
    if all(isinstance(v, str) for v in present):
        return [v if v is not None else "" for v in values]
    if all(isinstance(v, (tuple, list, np.ndarray)) for v in present):
        try:
            arrays = [np.asarray(v) for v in present]
        except ValueError:
            return None
        shape = arrays[0].shape
        if not shape or any(a.shape != shape or a.dtype.kind not in "biuf" for a in arrays):
            return None
        dtype = np.int64 if all(a.dtype.kind in "biu" for a in arrays) else np.float64
        zero = np.zeros(shape, dtype)
        return np.stack([zero if v is None else np.asarray(v, dtype) for v in values])
    return None


# ---------------------------------------------------------------------- writing
def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _compress_arrow(folder: Path) -> None:
    """Rewrite the arrow files in ``folder`` with lossless IPC compression."""
    import pyarrow as pa

    for path in folder.glob("*.arrow"):
        with pa.memory_map(str(path)) as src:
            table = pa.ipc.open_file(src).read_all()
        tmp = path.with_name(f".{path.name}.tmp")
        options = pa.ipc.IpcWriteOptions(compression=COMPRESSION)
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema, options=options) as w:
            w.write_table(table)
        os.replace(tmp, path)


class DatasetWriter:
    """Appends episodes to a dataset folder, crash-safely (see the module docstring).

    ``recording`` describes how the episodes are made (world, settings, policy, seed, ...);
    a resumed dataset must have been recorded with the same description, so that a resumed
    run equals an uninterrupted one. ``extra`` goes into the top metadata as is.
    """

    def __init__(self, root: str | Path, observation_space: gym.spaces.Box,
                 action_space: gym.spaces.Discrete, recording: dict[str, Any],
                 extra: dict[str, Any] | None = None, resume: bool = False) -> None:
        self.root = Path(root).resolve()  # Minari storage breaks on relative paths
        self.id = dataset_id(self.root)
        self.data = self.root / DATA
        self.staging = self.root / STAGING
        self.observation_space, self.action_space = observation_space, action_space
        recording = json.loads(json.dumps(recording, default=json_default))
        if resume and (self.data / METADATA).is_file():
            self._meta = self._resume(recording)
        else:
            self._check_empty(resume)
            self._meta = self._create(recording, extra or {})
        shutil.rmtree(self.staging, ignore_errors=True)

    @property
    def next_episode(self) -> int:
        """Id of the next episode to write (= number of complete episodes)."""
        return int(self._meta["total_episodes"])

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._meta)

    # -------------------------------------------------------------- open
    def _check_empty(self, resume: bool) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise DatasetError(f"--out {str(self.root)!r} exists and is not a folder; pick a new folder")
        if self.root.is_dir() and any(self.root.iterdir()):
            if not resume:
                raise DatasetError(
                    f"output folder {str(self.root)!r} exists and is not empty: pass --resume to "
                    f"continue that recording, or pick a new --out folder"
                )
            foreign = sorted(c.name for c in self.root.iterdir() if c.name not in (DATA, STAGING))
            if foreign:
                raise DatasetError(
                    f"cannot resume {str(self.root)!r}: it holds no dataset but other files "
                    f"{foreign[:5]}; pick a new --out folder"
                )
            # a recording killed before its first metadata write: start over
            shutil.rmtree(self.data, ignore_errors=True)

    def _create(self, recording: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        from minari import __version__ as minari_version
        from minari.serialization import serialize_space

        self.data.mkdir(parents=True, exist_ok=True)
        meta = {
            "dataset_id": self.id,
            "minari_version": minari_version,
            "data_format": "arrow",
            "jpeg_encoding": False,
            "observation_space": serialize_space(self.observation_space),
            "action_space": serialize_space(self.action_space),
            "total_episodes": 0,
            "total_steps": 0,
            "dataset_size": 0.0,
            **extra,
            "recording": recording,
            "episode_seeds": [],
        }
        atomic_write_json(self.data / METADATA, meta)
        return meta

    def _resume(self, recording: dict[str, Any]) -> dict[str, Any]:
        meta = json.loads((self.data / METADATA).read_text())
        old = meta.get("recording", {})
        diff = sorted(k for k in set(old) | set(recording) if old.get(k) != recording.get(k))
        if diff:
            detail = "; ".join(f"{k}: {old.get(k)!r} then, {recording.get(k)!r} now" for k in diff)
            raise DatasetError(
                f"cannot resume {str(self.root)!r}: it was recorded differently ({detail}); "
                f"resume with the same arguments or pick a new --out folder"
            )
        total = int(meta["total_episodes"])
        for child in self.data.iterdir():  # episodes moved in but never counted: unfinished
            if child.is_dir() and (not child.name.isdigit() or int(child.name) >= total):
                shutil.rmtree(child)
        return meta

    # -------------------------------------------------------------- write
    def write_episode(self, observations: np.ndarray, actions: Sequence[int],
                      rewards: Sequence[float], terminations: Sequence[bool],
                      truncations: Sequence[bool], infos: Sequence[dict[str, Any]],
                      seed: int | None, metadata: dict[str, Any] | None = None) -> int:
        """Write the next episode (T+1 observations, T of the rest, T+1 infos); returns its id."""
        from minari.data_collector.episode_buffer import EpisodeBuffer
        from minari.dataset.minari_storage import MinariStorage

        ep_id = self.next_episode
        n = len(actions)
        if len(observations) != n + 1 or len(infos) != n + 1:
            raise DatasetError(f"episode {ep_id}: need T+1 observations and infos for T={n} actions, "
                               f"got {len(observations)} and {len(infos)}")
        columns, skipped = info_columns(infos)
        shutil.rmtree(self.staging, ignore_errors=True)
        storage = MinariStorage.new(self.staging, self.observation_space, self.action_space,
                                    data_format="arrow", jpeg_encoding=False)
        storage.update_episodes([EpisodeBuffer(
            id=ep_id, seed=seed, observations=np.asarray(observations, np.uint8),
            actions=np.asarray(actions, np.int64), rewards=list(map(float, rewards)),
            terminations=list(map(bool, terminations)), truncations=list(map(bool, truncations)),
            infos=columns)])
        folder = self.staging / str(ep_id)
        _compress_arrow(folder)
        ep_meta = {"id": ep_id, "total_steps": n, "seed": seed, **(metadata or {})}
        if skipped:
            ep_meta["skipped_info_keys"] = skipped
        atomic_write_json(folder / METADATA, json.loads(json.dumps(ep_meta, default=json_default)))
        for path in folder.iterdir():
            _fsync_file(path)
        fsync_dir(folder)
        os.rename(folder, self.data / str(ep_id))  # atomic: the episode appears complete or not at all
        fsync_dir(self.data)
        shutil.rmtree(self.staging, ignore_errors=True)
        self._count_episode(n, seed)
        return ep_id

    def _count_episode(self, steps: int, seed: int | None) -> None:
        meta = dict(self._meta)
        meta["total_episodes"] = meta["total_episodes"] + 1
        meta["total_steps"] = meta["total_steps"] + steps
        meta["episode_seeds"] = [*meta["episode_seeds"], seed]
        meta["dataset_size"] = round(dir_size(self.data) / 1e6, 1)
        atomic_write_json(self.data / METADATA, meta)  # the commit point of the episode
        self._meta = meta


# ---------------------------------------------------------------------- the clip convention
# In a clip, ``actions[i]`` is the action taken *before* frame ``i`` is shown, the one that leads
# from frame ``i-1`` to frame ``i`` (Minari stores ``actions[t]`` taken at observation t, so
# ``clip_actions[i] = minari_actions[i - 1]`` and ``clip_actions[0]`` is NOOP).
@dataclass
class Episode:
    frames: np.ndarray      # (T+1, H, W, 3) uint8
    actions: np.ndarray     # (T+1,) int64, clip convention (actions[0] = 0)
    effective: np.ndarray   # (T+1,) int64, the effective actions, same convention
    rewards: np.ndarray     # (T+1,) float32, reward received on arriving at frame i
    terminated: np.ndarray  # (T+1,) bool, frame i ended the episode
    seed: int | None = None

    def __len__(self) -> int:
        return len(self.frames)


def episode_from_record(rec: EpisodeRecord) -> Episode:
    """A recorded episode (Minari's layout, :func:`world.dataset.iter_episodes`) in the clip convention."""
    obs = np.asarray(rec.observations)
    if obs.dtype != np.uint8 or obs.ndim != 4:
        raise DatasetError(f"expected uint8 image observations (T+1, H, W, 3), got {obs.dtype} {obs.shape}")
    T1 = len(obs)
    acts = np.zeros(T1, np.int64)
    acts[1:] = np.asarray(rec.actions, np.int64).reshape(-1)[: T1 - 1]
    eff = acts.copy()
    if "effective_action" in rec.infos:
        e = np.asarray(rec.infos["effective_action"], np.int64).reshape(-1)
        # infos has T+1 entries: info of the reset and of every step
        eff = e[:T1].copy() if len(e) >= T1 else np.concatenate([[0], e])[:T1]
        eff[0] = 0
    rew = np.zeros(T1, np.float32)
    rew[1:] = np.asarray(rec.rewards, np.float32).reshape(-1)[: T1 - 1]
    term = np.zeros(T1, bool)
    term[1:] = np.asarray(rec.terminations, bool).reshape(-1)[: T1 - 1]
    return Episode(obs, acts, eff, rew, term, rec.seed)


def load_clip_episodes(dataset_dir: str | Path, episodes: list[int] | None = None) -> list[Episode]:
    """Read episodes of a recorded dataset folder (the recorder's ``--out``) in the clip convention."""
    return [episode_from_record(rec) for rec in iter_episodes(dataset_dir, episodes)]
