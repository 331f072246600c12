"""Heads trained on the dream's own latents: the dreamed pool's rollouts, labels, starts and reuse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_dream import _write_heads, checkpoint  # noqa: F401 - the tiny shipped-like world model
from trainer.stages.heads import DreamLatents, dream_pool, load_or_make_pool, rollout_starts


def _data(n_frames: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    return g.normal(size=(n_frames, 4, 8, 8)).astype(np.float16), g.integers(0, 5, n_frames).astype(np.int64)


def test_the_pool_dreams_with_the_recorded_actions_and_labels_what_the_frames_show(checkpoint, tmp_path):  # noqa: F811
    from model.dreamer import Dreamer

    ae = str(Path(checkpoint).parent / "ae.safetensors")
    values = np.array([-1.0, 0.0, 1.0], np.float32)
    lat, acts = _data()
    starts = np.array([0, 5, 20])
    # label heads that see "reward 1, no end" everywhere: every transition is a reward event, none ends
    d = DreamLatents(checkpoint=checkpoint, label_heads=_write_heads(tmp_path, ae, 4, term_bias=-9.0), horizon=4,
                     batch=2, steps=1)
    pool = dream_pool(d, lat, acts, starts, values, seed=0)
    assert pool.latents.shape == (3, 5, 4, 8, 8) and pool.actions.shape == (3, 4)
    assert np.array_equal(pool.actions, acts[starts[:, None] + 1 + np.arange(4)])  # the recorded actions
    assert np.array_equal(pool.latents[:, 0], lat[starts])  # each rollout starts from its real frame
    assert (pool.reward_class == 2).all() and not pool.terminated.any() and pool.valid.all()
    # the same rollouts are the dream's own: a Dreamer session with the same seed draws them again
    dreamer = Dreamer.load(checkpoint, sampler="consistency", steps=1, heads="")
    sess = dreamer.session(2, torch.Generator().manual_seed(0))
    z = torch.from_numpy(lat[starts[:2]].astype(np.float32))
    sess.prime(z[:, None], torch.zeros(2, 1, dtype=torch.long))
    z1 = sess.generate(torch.from_numpy(pool.actions[:2, :1]), dreamer.sampler, fuse=True)[:, 0]
    assert np.allclose(z1.numpy().astype(np.float16), pool.latents[:2, 1], atol=1e-3)
    # label heads that say "episode over" at once: only the first step of each rollout is a transition
    d.label_heads = _write_heads(tmp_path, ae, 4, term_bias=9.0)
    ended = dream_pool(d, lat, acts, starts, values, seed=0)
    assert ended.terminated[:, 0].all() and ended.valid[:, 0].all() and not ended.valid[:, 1:].any()
    assert len(ended.rows()) == 3
    zp, zc, a, rc, t = ended.transitions(ended.rows())
    assert zp.dtype == np.float32 and np.array_equal(a, acts[starts + 1]) and t.all()


def test_starts_keep_each_rollout_inside_its_episode_and_near_events():
    spans = [(0, 10), (10, 30), (40, 3)]  # the last episode is too short for a rollout
    events = np.array([25])
    s = rollout_starts(spans, events, 400, horizon=5, event_share=0.5, rng=np.random.default_rng(0))
    assert len(s) == 400
    inside = [(o <= x) and (x + 5 < o + n) for x in s for (o, n) in [next(sp for sp in spans if sp[0] <= x < sp[0] + sp[1])]]
    assert all(inside)
    near = ((25 - s >= 1) & (25 - s <= 5)).sum()
    assert near >= 200  # the event-started half, plus random ones that fall near it
    with pytest.raises(Exception, match="horizon"):
        rollout_starts([(0, 4)], events, 4, horizon=5, event_share=0.5, rng=np.random.default_rng(0))


def test_a_saved_pool_is_reused_only_for_the_same_settings(tmp_path):
    from trainer.stages.heads import DreamPool

    made = []

    def make():
        made.append(1)
        return DreamPool(np.zeros((1, 2, 4, 8, 8), np.float16), np.zeros((1, 1), np.int64), np.ones((1, 1), np.int64),
                         np.zeros((1, 1), bool), np.ones((1, 1), bool))

    path = tmp_path / "pool.npz"
    a = load_or_make_pool(path, "k1", make)
    b = load_or_make_pool(path, "k1", make)
    assert len(made) == 1 and np.array_equal(a.reward_class, b.reward_class)
    load_or_make_pool(path, "k2", make)
    assert len(made) == 2
    path.write_bytes(b"damaged")
    load_or_make_pool(path, "k2", make)
    assert len(made) == 3


def test_dream_settings_are_checked():
    with pytest.raises(ValueError, match="label_heads"):
        DreamLatents(checkpoint="x.safetensors")
    with pytest.raises(ValueError, match="share"):
        DreamLatents(checkpoint="x.safetensors", label_heads="h.safetensors", share=1.0)
    DreamLatents()  # off: nothing to check


def test_pickups_by_horizon_counts_the_events_each_horizon_can_reach(checkpoint, tmp_path):  # noqa: F811
    from benchmarks.transfer import Trajectory, pickups_by_horizon
    from model.dreamer import Dreamer

    ae = str(Path(checkpoint).parent / "ae.safetensors")
    g = np.random.default_rng(0)
    frames = g.integers(0, 255, (11, 64, 64, 3), dtype=np.uint8)
    rewards = np.zeros(10)
    rewards[[1, 6]] = 1.0  # pickups at transitions 1 and 6
    tr = Trajectory(0, frames, g.integers(0, 5, 10), rewards, np.zeros(10, bool))
    always = Dreamer.load(checkpoint, sampler="consistency", steps=1, heads=_write_heads(tmp_path, ae, 4, -9.0),
                          precision="fp32")
    rows = pickups_by_horizon(always, [tr], [1, 2, 4, 9])
    # horizon k needs k - 1 steps before the pickup and `tolerance` (1) after it inside the episode
    assert [r["events"] for r in rows] == [2, 2, 1, 0]
    assert rows[0]["raw_recall"] == 1.0 and rows[0]["frames_recall"] == 1.0 and np.isfinite(rows[0]["psnr_at_pickup"])
    assert rows[3]["raw_recall"] is None


def test_each_batch_mixes_real_and_dreamed_transitions_at_the_configured_share():
    from types import SimpleNamespace

    from trainer.data import EpochSampler
    from trainer.distributed import DistInfo
    from trainer.stages.heads import DreamPool, HeadsStage, Transitions

    # real latents are 0..19 (a row's value is its index), dreamed ones -1 - (rollout * 10 + step)
    real = np.broadcast_to(np.arange(20, dtype=np.float16)[:, None, None, None], (20, 4, 8, 8)).copy()
    lat = -1.0 - (np.arange(6)[:, None] * 10 + np.arange(5)[None])
    valid = np.ones((6, 4), bool)
    valid[5, 2:] = False  # after a labelled end: no transitions
    pool = DreamPool(np.broadcast_to(lat[:, :, None, None, None], (6, 5, 4, 8, 8)).astype(np.float16),
                     np.full((6, 4), 3), np.full((6, 4), 2), np.zeros((6, 4), bool), valid)
    st = object.__new__(HeadsStage)
    st.cfg = SimpleNamespace(dream=SimpleNamespace(share=0.25))
    st.latents = real
    st.train_set = Transitions(np.arange(19), np.arange(1, 20), np.zeros(19, np.int64), np.zeros(19), np.zeros(19, bool))
    st.train_class = np.ones(19, np.int64)
    st.sampler = EpochSampler(19, 0)
    st.pool, st.pool_rows = pool, pool.rows()
    st.pool_sampler = EpochSampler(len(st.pool_rows), 1)
    seen = []
    for _ in range(3):
        zp, zc, a, r, term = st.next_batch(8, DistInfo())
        assert zp.shape == (8, 4, 8, 8) and zp.dtype == torch.float32
        cur = zc[:, 0, 0, 0].numpy()
        assert (cur[:6] > 0).all() and (cur[6:] < 0).all()  # 6 real transitions, then 2 dreamed
        assert np.array_equal(zp[:6, 0, 0, 0].numpy(), cur[:6] - 1)  # real: frame t-1 -> t
        assert np.array_equal(zp[6:, 0, 0, 0].numpy(), cur[6:] + 1)  # dreamed: step j -> j + 1 of one rollout
        assert a[6:].tolist() == [3, 3] and r[6:].tolist() == [2, 2] and a[:6].tolist() == [0] * 6
        assert r[:6].tolist() == [1] * 6 and not term.any()
        seen += (-1 - cur[6:]).astype(int).tolist()
    assert not {53, 54} & set(seen)  # never a step after the end (rollout 5, steps 2 and 3)
    # two ranks share the samplers' draws without overlap
    st.sampler, st.pool_sampler = EpochSampler(19, 0), EpochSampler(len(st.pool_rows), 1)
    r0 = st.next_batch(4, DistInfo(rank=0, world_size=2))
    st.sampler, st.pool_sampler = EpochSampler(19, 0), EpochSampler(len(st.pool_rows), 1)
    r1 = st.next_batch(4, DistInfo(rank=1, world_size=2))
    assert not set(r0[1][:, 0, 0, 0].tolist()) & set(r1[1][:, 0, 0, 0].tolist())
