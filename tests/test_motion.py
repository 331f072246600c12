"""Sprite motion (trainer.motion): the change of a frame once the view's scroll is taken out, and the
teacher loss's motion weight on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.motion import sprite_motion
from trainer.stages.teacher import token_change_weights


def episode() -> np.ndarray:
    """5 frames of 32x32 from a textured 48x48 world: the view scrolls 2 px down twice, then stands
    still while a 4x4 sprite walks right in cell (1, 2) of a 4x4 grid (8 px cells)."""
    world = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    views = [world[y:y + 32, 8:40].copy() for y in (4, 6, 8, 8, 8)]
    for t, x in ((3, 16), (4, 18)):
        views[t][10:14, x:x + 4] = 255
    return np.stack(views)


def test_the_motion_is_where_sprites_moved_not_where_the_view_scrolled():
    m = sprite_motion(episode(), grid=4)
    assert m.shape == (5, 4, 4) and m.dtype == np.float32
    plain = np.abs(np.diff(episode().astype(np.float32) / 255, axis=0)).mean(-1)
    assert plain[0].mean() > 0.2  # a scroll changes the whole frame...
    assert m[1].max() == 0.0 and m[2].max() == 0.0  # ...and no cell once the scroll is taken out
    assert np.array_equal(m[0], m[1])  # frame 0 takes frame 1's
    for t in (3, 4):  # the sprite appears, then moves: only its cell changed
        assert m[t][1, 2] > 0.05 and np.delete(m[t].ravel(), 1 * 4 + 2).max() == 0.0


def test_grid_must_divide_the_frames():
    from trainer.data import DataError

    with pytest.raises(DataError, match="do not divide"):
        sprite_motion(episode(), grid=5)


def test_the_motion_weight_raises_the_moving_cells_and_keeps_the_mean():
    x0 = torch.randn(2, 3, 4, 4, 4)
    motion = torch.zeros(2, 3, 4, 4)
    motion[:, :, 1, 2] = 1.0
    plain = token_change_weights(x0, 4.0)
    assert torch.equal(plain, token_change_weights(x0, 4.0, motion, 0.0))
    w = token_change_weights(x0, 4.0, motion, 2.0)
    assert w.shape == (2, 3, 1, 4, 4) and float(w.mean()) == pytest.approx(1.0)
    # the moving cell gains weight against every other cell
    ratio = w / plain
    assert bool((ratio[:, :, 0, 1, 2] > ratio[:, :, 0, 0, 0]).all())


def test_clip_windows_read_their_own_frames_motion():
    from trainer.latents import LatentCache
    from trainer.stages.teacher import ClipData

    offsets = np.array([0, 5, 12])  # episodes of 5 and 7 frames
    n = int(offsets[-1])
    cache = LatentCache(np.zeros((n, 1, 2, 2), np.float16), np.zeros(n, np.int64), np.zeros(n, np.int64),
                        np.zeros(n), np.zeros(n, bool), offsets)
    data = object.__new__(ClipData)
    data.cache, data.frames = cache, 3
    motion = np.arange(n, dtype=np.float16)[:, None, None] * np.ones((1, 2, 2), np.float16)
    rows = np.array([[0, 2], [1, 4]])  # episode 0 from frame 2, episode 1 from frame 4
    got = data.motion(rows, motion, torch.device("cpu"))
    assert got.shape == (2, 3, 2, 2)
    assert got[:, :, 0, 0].tolist() == [[2, 3, 4], [9, 10, 11]]


def test_weight_shares_counts_the_still_views(tmp_path):
    from tests.trainer_helpers import record_tiny_dataset
    from trainer.motion import frame_weight_shares, main

    # the synthetic episode: two scrolls (no sprite motion), then two still views with a sprite moving
    r = frame_weight_shares([episode()], grid=4, change_weight=4.0, motion_weight=2.0)
    assert r["transitions"] == 4 and r["still_share"] == 0.5 and r["motion_share_still"] == 1.0
    assert r["weight_share_still_change"] < 0.5  # a scroll changes every cell, a sprite one
    assert r["weight_share_still_change_and_motion"] > r["weight_share_still_change"]
    # the command line, on a recorded dataset
    ds = record_tiny_dataset(tmp_path / "tiny-v0", episodes=1, steps=12)
    assert main(["--dataset", str(ds)]) == 0


def test_the_teacher_loss_weighs_its_error_by_the_clips_motion():
    from trainer.stages.teacher import TeacherLossConfig, teacher_forcing_loss

    x0 = torch.randn(2, 3, 4, 4, 4)
    acts = torch.ones(2, 3, dtype=torch.long)
    motion = torch.zeros(2, 3, 4, 4)
    motion[:, :, 1, 2] = 1.0

    def still(clean, x_t, sigma, a, clean_sigma, pose_actions=None):
        return torch.zeros_like(x_t)  # the error is then the target's square

    def loss(mw: float, m: torch.Tensor | None) -> float:
        cfg = TeacherLossConfig(action_dropout=0.0, change_weight=4.0, motion_weight=mw)
        return float(teacher_forcing_loss(still, x0, acts, cfg, 5, torch.Generator().manual_seed(3), motion=m)[0])

    gen = torch.Generator().manual_seed(3)  # the loss's own draws: sigma, then the noise
    torch.rand(2, 3, generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    err = (eps - x0).pow(2)  # the flow-matching velocity target is eps - x0
    want = float((err * token_change_weights(x0, 4.0, motion, 2.0)).mean())
    assert loss(2.0, motion) == pytest.approx(want, rel=1e-5)
    assert loss(2.0, motion) != pytest.approx(loss(2.0, None))
    assert loss(0.0, motion) == pytest.approx(loss(2.0, None))


def test_several_datasets_make_one_cache_whose_extra_episodes_all_train():
    """data.extra_datasets: the caches join episode after episode (that the extra episodes all train
    and the held-out ones stay the first dataset's is checked by tests/test_trainer.py's teacher run,
    through the taken prior it counts over the training episodes)."""
    from trainer.latents import LatentCache
    from trainer.stages.autoencoder import DataConfig

    def cache(lengths: list[int], first: float) -> LatentCache:
        n = sum(lengths)
        lat = (first + np.arange(n, dtype=np.float16))[:, None, None, None] * np.ones((1, 1, 2, 2), np.float16)
        return LatentCache(lat, np.arange(n) % 5, np.zeros(n, np.int64), np.zeros(n), np.zeros(n, bool),
                           np.cumsum([0] + lengths))

    a, b = cache([5, 7], 0), cache([4], 100)
    both = LatentCache.concat([a, b])
    assert both.num_episodes == 3 and both.offsets.tolist() == [0, 5, 12, 16]
    z, _ = both.windows(np.array([[2, 1]]), 3)  # the second dataset's episode, from its frame 1
    assert z[0, :, 0, 0, 0].tolist() == [101, 102, 103]
    assert LatentCache.concat([a]) is a
    with pytest.raises(ValueError, match="differ in shape"):
        LatentCache.concat([a, LatentCache(np.zeros((3, 2, 2, 2), np.float16), *[np.zeros(3)] * 4,
                                           np.array([0, 3]))])
    cfg = DataConfig(dataset="d/a-v0", extra_datasets=["d/b-v0"])
    assert cfg.datasets == ["d/a-v0", "d/b-v0"]
    with pytest.raises(ValueError, match="extra_datasets"):
        cfg.only_one("autoencoder")


def test_joined_datasets_must_share_the_world_and_its_actions(tmp_path):
    import json

    from trainer.data import DataError
    from trainer.latents import LatentCache
    from trainer.stages.teacher import check_joined

    def dataset(name: str, world: str) -> str:
        (tmp_path / name / "data").mkdir(parents=True)
        (tmp_path / name / "data" / "metadata.json").write_text(json.dumps({"recording": {"world": world}}))
        return str(tmp_path / name)

    def cache(top: int) -> LatentCache:
        return LatentCache(np.zeros((3, 1, 2, 2), np.float16), np.array([0, 1, top]), np.zeros(3, np.int64),
                           np.zeros(3), np.zeros(3, bool), np.array([0, 3]))

    a, b, doom = dataset("a-v0", "adventure"), dataset("b-v0", "adventure"), dataset("d-v0", "gym:Doom")
    check_joined([a, b], [cache(4), cache(4)], 5)
    with pytest.raises(DataError, match="world 'adventure'"):
        check_joined([a, doom], [cache(4), cache(4)], 5)
    with pytest.raises(DataError, match="holds action 7, but model.num_actions is 5"):
        check_joined([a, b], [cache(4), cache(7)], 5)
