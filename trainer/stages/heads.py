"""The reward/termination heads stage: latent transitions of recorded data -> reward, episode end.

Trained on the latents of the world model's autoencoder (the dream feeds them generated
latents). Rewards and episode ends are rare, so the data may join several datasets (e.g. one
recorded with a policy that finds lava more often) and the losses are class-balanced.

Evaluation on held-out episodes of every dataset: reward accuracy over all transitions,
recall and precision of the reward events (nonzero reward, value right) and of the episode
ends, and false events per 1,000 steps.

The dream's own latents (``dream:``, optional). The dream feeds the heads latents its world model
generated, and these are not the autoencoder's: heads trained on encoded frames alone miss about
half of the pickups the dream draws two steps on. With ``dream.checkpoint`` set, the stage first
rolls that world model out from real frames of the training episodes with their recorded actions,
and labels every dreamed transition by what its frames show: ``dream.label_heads`` (heads trained
on encoded frames) read the dreamed frames decoded to pixels and encoded again. A ``dream.share``
of every batch then comes from these transitions, so the heads read raw dreamed latents the way
they read pixels, at no cost at play time. The held-out episodes give a held-out pool, and the
``dream_*`` metrics compare the heads on raw dreamed latents with those labels.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from model.heads import HeadsConfig, RewardHeads, heads_loss
from trainer.data import DataError, EpochSampler, split_episodes
from trainer.distributed import DistInfo
from trainer.latents import LatentCache, load_autoencoder
from trainer.loop import TrainConfig
from world.log import get_logger


@dataclass
class DreamLatents:
    checkpoint: str = ""       # the world model whose generated latents the heads will read; "" = off
    label_heads: str = ""      # heads (trained on encoded frames) that label the dreamed frames, re-encoded
    rollouts: int = 2048       # dreamed rollouts from training episodes (held out: rollouts // 16, >= 32)
    horizon: int = 16          # dreamed steps per rollout, from one real frame, with the recorded actions
    event_starts: float = 0.5  # share of rollouts started 1..horizon steps before a recorded reward or end
    share: float = 0.5         # share of every batch drawn from the dreamed transitions
    steps: int = 0             # sampling steps per dreamed frame (0: the checkpoint's own)
    batch: int = 64            # rollouts dreamed at once
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.checkpoint:
            return
        if not self.label_heads:
            raise ValueError("dream.label_heads must name heads trained on encoded frames (e.g. "
                             "assets/checkpoints/adventure_heads.safetensors) when dream.checkpoint is set")
        if self.rollouts < 1 or self.horizon < 1 or self.batch < 1 or self.steps < 0:
            raise ValueError(f"dream needs rollouts, horizon, batch >= 1 and steps >= 0; got {self.rollouts}, "
                             f"{self.horizon}, {self.batch}, {self.steps}")
        if not 0.0 < self.share < 1.0 or not 0.0 <= self.event_starts <= 1.0:
            raise ValueError(f"dream.share must be in (0, 1) and dream.event_starts in [0, 1]; got {self.share}, "
                             f"{self.event_starts}")


@dataclass
class DreamPool:
    """Dreamed rollouts: latents (R, H + 1, C, h, w) fp16, actions (R, H), reward classes (R, H),
    terminated (R, H) and valid (R, H): a step after a labelled episode end is not a transition."""
    latents: np.ndarray
    actions: np.ndarray
    reward_class: np.ndarray
    terminated: np.ndarray
    valid: np.ndarray

    def rows(self) -> np.ndarray:
        return np.flatnonzero(self.valid.reshape(-1))

    def transitions(self, flat: np.ndarray) -> tuple[np.ndarray, ...]:
        r, j = np.divmod(flat, self.actions.shape[1])
        return (self.latents[r, j].astype(np.float32), self.latents[r, j + 1].astype(np.float32),
                self.actions[r, j], self.reward_class[r, j], self.terminated[r, j])


def _episode_spans(caches: list[LatentCache], ids: list[list[int]], offsets: list[int]) -> list[tuple[int, int]]:
    """(first global latent row, frames) of the given episodes of each cache."""
    return [(base + int(c.offsets[e]), c.length(e)) for c, base, eps in zip(caches, offsets, ids) for e in eps]


def rollout_starts(spans: list[tuple[int, int]], events: np.ndarray, n: int, horizon: int, event_share: float,
            rng: np.random.Generator) -> np.ndarray:
    """``n`` start rows whose next ``horizon`` frames lie in one episode; ``event_share`` of them
    1..horizon steps before one of ``events`` (global rows of frames a reward or an end arrived at)."""
    first = np.array([o for o, n_ in spans if n_ > horizon], np.int64)
    count = np.array([n_ - horizon for o, n_ in spans if n_ > horizon], np.int64)
    if not len(first):
        raise DataError(f"heads: no episode is longer than dream.horizon={horizon} frames; lower dream.horizon")
    ok = np.zeros(int(first.max() + count.max()) + 1, bool)
    for o, c in zip(first, count):
        ok[o:o + c] = True  # start rows with a whole rollout inside the episode
    n_ev = int(round(n * event_share)) if len(events) else 0
    ev = events[rng.integers(len(events), size=n_ev)] - rng.integers(1, horizon + 1, size=n_ev) if n_ev else \
        np.zeros(0, np.int64)
    ev = ev[(ev >= 0) & (ev < len(ok))]
    ev = ev[ok[ev]]
    pick = rng.choice(len(first), size=n - len(ev), p=count / count.sum())
    rand = first[pick] + (rng.random(n - len(ev)) * count[pick]).astype(np.int64)
    return np.concatenate([ev, rand])


@torch.no_grad()
def dream_pool(d: DreamLatents, latents: np.ndarray, actions: np.ndarray, starts: np.ndarray,
               values: np.ndarray, seed: int) -> DreamPool:
    """Roll ``d.checkpoint`` out ``d.horizon`` steps from each start row with the recorded actions
    (``actions[row + 1 + j]``) and label each dreamed transition with ``d.label_heads`` reading its
    frames decoded and encoded again."""
    from model.dreamer import Dreamer

    dreamer = Dreamer.load(d.checkpoint, sampler="consistency", steps=d.steps, heads=d.label_heads)
    label = dreamer.heads
    assert label is not None
    H = d.horizon
    R = len(starts)
    lat_out = np.zeros((R, H + 1, *latents.shape[1:]), np.float16)
    act_out = actions[starts[:, None] + 1 + np.arange(H)[None]].astype(np.int64)
    rew_out = np.zeros((R, H), np.int64)
    term_out = np.zeros((R, H), bool)
    gen = torch.Generator().manual_seed(seed)
    log = get_logger()
    for b0 in range(0, R, d.batch):
        sl = slice(b0, min(R, b0 + d.batch))
        B = sl.stop - sl.start
        z = torch.from_numpy(latents[starts[sl]].astype(np.float32)).to(dreamer.device)
        a = torch.from_numpy(act_out[sl])
        sess = dreamer.session(B, gen)
        sess.prime(z[:, None], torch.zeros(B, 1, dtype=torch.long))
        zs = [z]
        for j in range(H):
            zs.append(sess.generate(a[:, j:j + 1], dreamer.sampler, fuse=True)[:, 0].float())
        seq = torch.stack(zs, 1)  # (B, H + 1, C, h, w)
        lat_out[sl] = seq.cpu().numpy().astype(np.float16)
        # what the frames show: the label heads read them as pixels, encoded again
        flat = seq.flatten(0, 1)
        re = dreamer.encode(dreamer.decode(flat)).view_as(seq)
        r, t = label.predict(re[:, :-1].flatten(0, 1), re[:, 1:].flatten(0, 1), a.flatten())
        rv = r.cpu().numpy().reshape(B, H)
        rew_out[sl] = np.abs(rv[..., None] - values[None, None]).argmin(-1)
        term_out[sl] = t.cpu().numpy().reshape(B, H)
        if (b0 // d.batch) % 8 == 0:
            log.info(f"[heads] dreamed {sl.stop}/{R} rollouts of {H} steps")
    ended = np.cumsum(term_out, 1)
    valid = (ended - term_out) == 0  # up to and including the first labelled end
    return DreamPool(lat_out, act_out, rew_out, term_out, valid)


def _pool_key(d: DreamLatents, datasets: list[str], values: np.ndarray, n_starts: int) -> str:
    from model.io import file_hash, resolve_checkpoint
    from trainer.data import dataset_fingerprint

    parts = {"dream": {k: v for k, v in d.__dict__.items() if k not in ("share", "batch")},
             "world_model": file_hash(resolve_checkpoint(d.checkpoint)[0]),
             "label_heads": file_hash(resolve_checkpoint(d.label_heads)[0]),
             "data": [dataset_fingerprint(x) for x in datasets], "values": values.tolist(), "starts": n_starts}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def load_or_make_pool(path: Path, key: str, make) -> DreamPool:
    """The pool saved at ``path`` if it was made from the same settings (``key``), else made now and
    saved atomically (a resumed run reads the same transitions)."""
    if path.is_file():
        try:
            with np.load(path) as z:
                if str(z["key"]) == key:
                    return DreamPool(z["latents"], z["actions"], z["reward_class"], z["terminated"], z["valid"])
        except (OSError, ValueError, KeyError):
            pass  # damaged or foreign: made again
    pool = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.npz")
    np.savez(tmp, key=np.array(key), latents=pool.latents, actions=pool.actions, reward_class=pool.reward_class,
             terminated=pool.terminated, valid=pool.valid)
    tmp.replace(path)
    return pool


@dataclass
class HeadsExperiment:
    stage: str = "heads"
    run_dir: str = "runs/adventure_heads"
    world: str = "adventure"
    autoencoder: str = "assets/checkpoints/adventure_ae.safetensors"
    latent_cache_dir: str = "data/latents"
    datasets: list[str] = field(default_factory=lambda: ["data/datasets/adventure-explorer-v0"])
    holdout_episodes: int = 8  # per dataset
    model: HeadsConfig = field(default_factory=HeadsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dream: DreamLatents = field(default_factory=DreamLatents)


@dataclass
class Transitions:
    prev: np.ndarray       # (N,) rows into latents
    cur: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray


def _transitions(caches: list[LatentCache], holdout: int, offsets: list[int]) -> tuple[Transitions, Transitions]:
    parts: dict[bool, list[tuple]] = {False: [], True: []}
    for cache, base in zip(caches, offsets):
        train_ids, hold_ids = split_episodes(cache.num_episodes, holdout)
        for held, ids in ((False, train_ids), (True, hold_ids)):
            for e in ids:
                o, n = int(cache.offsets[e]), cache.length(e)
                cur = np.arange(o + 1, o + n)
                parts[held].append((base + cur - 1, base + cur, cache.actions[cur], cache.rewards[cur],
                                    cache.terminated[cur]))
    out = []
    for held in (False, True):
        cols = list(zip(*parts[held])) if parts[held] else [[np.zeros(0, np.int64)]] * 5
        out.append(Transitions(*(np.concatenate(c) for c in cols)))
    return out[0], out[1]


def event_metrics(pred_r: np.ndarray, true_r: np.ndarray, pred_t: np.ndarray, true_t: np.ndarray
                  ) -> dict[str, float]:
    """Reward accuracy, recall/precision of reward events and episode ends, false events per 1k steps."""
    ev, pev = true_r != 0, pred_r != 0
    hit = ev & (pred_r == true_r)
    n = max(len(true_r), 1)
    return {
        "reward_accuracy": float((pred_r == true_r).mean()) if len(true_r) else float("nan"),
        "reward_event_recall": float(hit.sum() / max(ev.sum(), 1)),
        "reward_event_precision": float(hit.sum() / max(pev.sum(), 1)),
        "reward_false_per_1k": float(1000 * (pev & ~ev).sum() / n),
        "reward_events": int(ev.sum()),
        "termination_recall": float((pred_t & true_t).sum() / max(true_t.sum(), 1)),
        "termination_precision": float((pred_t & true_t).sum() / max(pred_t.sum(), 1)),
        "termination_false_per_1k": float(1000 * (pred_t & ~true_t).sum() / n),
        "terminations": int(true_t.sum()),
    }


class HeadsStage:
    name = "heads"

    def __init__(self, cfg: HeadsExperiment) -> None:
        self.cfg = cfg
        if not cfg.datasets:
            raise DataError("heads: 'datasets' is empty; list at least one recorded dataset")
        ae, ae_id = load_autoencoder(cfg.autoencoder)
        if ae.cfg.latent_channels != cfg.model.latent_channels or ae.cfg.latent_size != cfg.model.latent_size:
            raise ValueError(f"model.latent_channels/latent_size ({cfg.model.latent_channels}, "
                             f"{cfg.model.latent_size}) must match the autoencoder's "
                             f"({ae.cfg.latent_channels}, {ae.cfg.latent_size})")
        caches = [LatentCache.build(d, ae, ae_id, cfg.latent_cache_dir) for d in cfg.datasets]
        bases = list(np.cumsum([0] + [len(c.latents) for c in caches])[:-1])
        self.latents = np.concatenate([c.latents for c in caches])
        self.train_set, self.hold_set = _transitions(caches, cfg.holdout_episodes, bases)
        top = max(int(self.train_set.action.max(initial=0)), int(self.hold_set.action.max(initial=0)))
        if top >= cfg.model.num_actions:
            raise DataError(f"heads: the datasets hold action {top}, but model.num_actions is {cfg.model.num_actions}; "
                            f"set model.num_actions to the game's action count (at least {top + 1})")
        values = sorted(set(np.unique(self.train_set.reward).tolist()) | {0.0})
        cfg.model.reward_values = [float(v) for v in values]  # recorded in the checkpoint's config
        self.values = np.asarray(values, np.float32)
        cls = np.searchsorted(self.values, self.train_set.reward)
        self.train_class = cls
        counts = np.bincount(cls, minlength=len(values)).astype(np.float64)
        # square-root balancing: rare events count, without a flood of false alarms
        w = np.where(counts > 0, np.sqrt(counts.sum() / np.maximum(counts, 1) / len(values)), 0.0)
        self.class_weights = torch.tensor(w / w[cls].mean(), dtype=torch.float32)
        pos = float(self.train_set.terminated.sum())
        self.term_pos_weight = float(np.sqrt((len(cls) - pos) / pos)) if pos else 1.0
        self.sampler = EpochSampler(len(cls), cfg.train.seed)
        self.net = RewardHeads(cfg.model)
        get_logger().info(f"[heads] {len(cls)} training transitions; reward values {values} with counts "
              f"{counts.astype(int).tolist()}; {int(pos)} episode ends; {len(self.hold_set.cur)} held out")
        self.pool: DreamPool | None = None
        self.hold_pool: DreamPool | None = None
        if cfg.dream.checkpoint:
            self._make_pools(caches, bases)

    def _make_pools(self, caches: list[LatentCache], bases: list[int]) -> None:
        d, cfg = self.cfg.dream, self.cfg
        splits = [split_episodes(c.num_episodes, cfg.holdout_episodes) for c in caches]
        acts = np.concatenate([c.actions for c in caches])
        log = get_logger()
        for held in (False, True):
            tr = self.hold_set if held else self.train_set
            spans = _episode_spans(caches, [s[1] if held else s[0] for s in splits], bases)
            events = tr.cur[(tr.reward != 0) | tr.terminated]
            n = max(32, d.rollouts // 16) if held else d.rollouts
            starts = rollout_starts(spans, events, n, d.horizon, d.event_starts,
                             np.random.default_rng(d.seed + (1 if held else 0)))
            key = _pool_key(d, cfg.datasets, self.values, n)
            path = Path(cfg.run_dir) / f"dream_pool_{'held' if held else 'train'}.npz"
            pool = load_or_make_pool(path, key, partial(dream_pool, d, self.latents, acts, starts, self.values,
                                                        d.seed + (1 if held else 0)))
            ev = int(((pool.reward_class != self._zero_class) & pool.valid).sum())
            log.info(f"[heads] dream pool ({'held out' if held else 'training'}): {len(starts)} rollouts x "
                     f"{d.horizon} steps, {int(pool.valid.sum())} transitions, {ev} reward events and "
                     f"{int((pool.terminated & pool.valid).sum())} ends by the label heads ({path})")
            if held:
                self.hold_pool = pool
            else:
                self.pool = pool
        assert self.pool is not None
        self.pool_rows = self.pool.rows()
        self.pool_sampler = EpochSampler(len(self.pool_rows), cfg.train.seed + 1)

    @property
    def _zero_class(self) -> int:
        return int(np.searchsorted(self.values, 0.0))

    def model(self) -> nn.Module:
        return self.net

    def extra_modules(self) -> dict[str, nn.Module]:
        return {}

    def tokens_per_sample(self) -> int:
        return 1

    def _z(self, rows: np.ndarray, dev: torch.device) -> torch.Tensor:
        return torch.from_numpy(self.latents[rows].astype(np.float32)).to(dev)

    def next_batch(self, batch_size: int, info: DistInfo):
        n_dream = int(round(batch_size * self.cfg.dream.share)) if self.pool is not None else 0
        n_real = batch_size - n_dream
        sel = self.sampler.take(n_real * info.world_size)[info.rank * n_real:(info.rank + 1) * n_real]
        t, dev = self.train_set, info.device
        zp, zc = self.latents[t.prev[sel]].astype(np.float32), self.latents[t.cur[sel]].astype(np.float32)
        a, r, term = t.action[sel], self.train_class[sel], t.terminated[sel]
        if n_dream:
            assert self.pool is not None
            rows = self.pool_rows[self.pool_sampler.take(n_dream * info.world_size)
                                  [info.rank * n_dream:(info.rank + 1) * n_dream]]
            dzp, dzc, da, dr, dt = self.pool.transitions(rows)
            zp, zc = np.concatenate([zp, dzp]), np.concatenate([zc, dzc])
            a, r, term = np.concatenate([a, da]), np.concatenate([r, dr]), np.concatenate([term, dt])
        return (torch.from_numpy(zp).to(dev), torch.from_numpy(zc).to(dev), torch.from_numpy(a).to(dev),
                torch.from_numpy(r).to(dev), torch.from_numpy(term).to(dev))

    def loss(self, model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        zp, zc, a, r, term = batch
        return heads_loss(model, zp, zc, a, r, term, self.class_weights.to(zp.device), self.term_pos_weight)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        h = self.hold_set
        if not len(h.cur):
            return {}
        was = model.training
        model.eval()
        dev = next(model.parameters()).device
        pr, pt = [], []
        for i in range(0, len(h.cur), 1024):
            r, t = model.predict(self._z(h.prev[i:i + 1024], dev), self._z(h.cur[i:i + 1024], dev),
                                 torch.from_numpy(h.action[i:i + 1024]).to(dev))
            pr.append(r.cpu().numpy())
            pt.append(t.cpu().numpy())
        out = event_metrics(np.concatenate(pr), h.reward.astype(np.float32), np.concatenate(pt),
                            h.terminated.astype(bool))
        if self.hold_pool is not None:  # raw dreamed latents against what their frames show
            rows = self.hold_pool.rows()
            pr, pt, tr, tt = [], [], [], []
            for i in range(0, len(rows), 1024):
                zp, zc, a, rc, term = self.hold_pool.transitions(rows[i:i + 1024])
                r, t = model.predict(torch.from_numpy(zp).to(dev), torch.from_numpy(zc).to(dev),
                                     torch.from_numpy(a).to(dev))
                pr.append(r.cpu().numpy())
                pt.append(t.cpu().numpy())
                tr.append(self.values[rc])
                tt.append(term)
            dm = event_metrics(np.concatenate(pr), np.concatenate(tr), np.concatenate(pt), np.concatenate(tt))
            out.update({f"dream_{k}": v for k, v in dm.items()})
        model.train(was)
        return out

    def data_state(self) -> dict[str, Any]:
        out = {"sampler": self.sampler.state()}
        if self.pool is not None:
            out["pool_sampler"] = self.pool_sampler.state()
        return out

    def load_data_state(self, state: dict[str, Any]) -> None:
        self.sampler.load_state(state["sampler"])
        if self.pool is not None and "pool_sampler" in state:
            self.pool_sampler.load_state(state["pool_sampler"])
