"""The default world: determinism, exact state, rules, the content map and the player finder."""

from __future__ import annotations

import numpy as np
import pytest

from world import InvalidActionError, InvalidSettingError, UnknownWorldError, make_world
from world import adventure_art as art
from world.adventure import NOOP, RIGHT, UP, find_player


def rollout(world, seed: int, actions) -> list[np.ndarray]:
    frame, _ = world.reset(seed=seed)
    frames = [frame]
    for a in actions:
        r = world.step(int(a))
        frames.append(r.frame)
        if r.terminated or r.truncated:
            break
    return frames


@pytest.fixture(scope="module")
def world():
    w = make_world("adventure")
    yield w
    w.close()


def test_frames_shape_and_determinism(world):
    actions = np.random.default_rng(0).integers(0, 5, 60)
    a = rollout(world, 7, actions)
    other = make_world("adventure")
    b = rollout(other, 7, actions)
    other.close()
    assert a[0].shape == (64, 64, 3) and a[0].dtype == np.uint8
    assert len(a) == len(b)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = rollout(world, 8, actions)
    assert not np.array_equal(a[0], c[0]), "different seeds should give different worlds"


def test_state_roundtrip_is_exact(world):
    rng = np.random.default_rng(1)
    world.reset(seed=3)
    for a in rng.integers(0, 5, 20):
        world.step(int(a))
    state = world.get_state()
    actions = rng.integers(0, 5, 40)
    first = [world.step(int(a)) for a in actions]
    world.set_state(state)
    second = [world.step(int(a)) for a in actions]
    for r1, r2 in zip(first, second):
        assert np.array_equal(r1.frame, r2.frame)
        assert r1.reward == r2.reward and r1.info == r2.info


def test_state_restores_across_seeds(world):
    world.reset(seed=11)
    world.step(RIGHT)
    state = world.get_state()
    expected = world.step(UP).frame
    world.reset(seed=12)  # a different map
    world.set_state(state)
    assert np.array_equal(world.step(UP).frame, expected)


def test_walking_into_a_wall_is_no_move(world):
    world.reset(seed=0)
    infos = [world.step(UP).info for _ in range(120)]
    # the room is at most 10 tiles high: the player must have hit something
    assert infos[-1]["effective_action"] == NOOP
    assert infos[-1]["player_world"] == infos[-2]["player_world"]
    assert infos[0]["effective_action"] in (UP, NOOP)
    assert infos[-1]["facing"] == "up"


def test_moving_shifts_the_follow_camera(world):
    world.reset(seed=0)
    for _ in range(50):  # find a step where RIGHT really moves
        before = world.content_map()
        r = world.step(RIGHT)
        if r.info["effective_action"] == RIGHT:
            after = world.content_map()
            speed = world.settings.speed
            # content shown at column c+speed before is shown at column c now (unless clamped)
            if np.array_equal(before[:, speed:], after[:, :-speed]):
                return
        world.step(UP)
    pytest.fail("RIGHT never shifted the view")


def test_coins_give_reward_and_stay_gone():
    w = make_world("adventure")
    w.reset(seed=5)
    state = w.get_state()
    coin_x, coin_y = (int(v) * art.T for v in w._coin_tiles[0])
    state = {**state, "px": coin_x, "py": coin_y}
    w.set_state(state)
    r = w.step(NOOP)
    assert r.reward == pytest.approx(1.0)
    assert r.info["coins_left"] == len(w._coin_tiles) - 1
    assert w.step(NOOP).reward == 0.0
    # leave and come back: the coin is still gone
    back = {**w.get_state(), "px": coin_x, "py": coin_y}
    w.set_state(back)
    assert w.step(NOOP).reward == 0.0
    w.close()


def test_lava_ends_the_episode():
    w = make_world("adventure", lava_rooms=1.0)
    w.reset(seed=2)
    ys, xs = np.nonzero(w.map_tiles == art.LAVA)
    assert len(xs), "lava_rooms=1.0 must place lava"
    w.set_state({**w.get_state(), "px": int(xs[0]) * art.T, "py": int(ys[0]) * art.T})
    r = w.step(NOOP)
    assert r.terminated and r.reward == pytest.approx(-1.0)
    with pytest.raises(Exception, match="reset"):
        w.step(NOOP)
    w.close()


def test_map_has_the_promised_content(world):
    world.reset(seed=4)
    kinds = set(np.unique(world.map_tiles).tolist())
    assert {art.GRASS, art.WALL, art.DOOR_FLOOR}.issubset(kinds)
    assert len(kinds) >= 5
    assert world.num_cells > 300
    assert len(world._creature_tiles) > 0 and world.info["coins_left"] > 0


def test_player_finder_on_real_frames(world):
    rng = np.random.default_rng(2)
    world.reset(seed=9)
    errors = []
    for a in rng.integers(0, 5, 80):
        r = world.step(int(a))
        pos = find_player(r.frame)
        assert pos is not None
        errors.append(np.hypot(pos[0] - r.info["player_pos"][0], pos[1] - r.info["player_pos"][1]))
    assert max(errors) <= 1.0


@pytest.mark.parametrize("settings", [{"camera": "room"}, {"scale": 2.0}, {"speed": 4}])
def test_design_settings(settings):
    w = make_world("adventure", **settings)
    frame, info = w.reset(seed=1)
    assert frame.shape == (64, 64, 3)
    pos = find_player(frame)
    assert pos is not None and abs(pos[0] - info["player_pos"][0]) <= 1.0
    if "scale" in settings:  # objects are 8*scale pixels
        mask = (np.abs(frame.astype(int) - art.PALETTE["tunic"]).sum(-1) < 30)
        assert mask.any(1).sum() == 6  # the tunic's 3 rows, doubled
    w.close()


def test_render_at_display_size(world):
    frame, _ = world.reset(seed=1)
    big = world.render(256)
    assert big.shape == (256, 256, 3)
    # the same view, 4x larger: downsampling by 4 gives the frame back
    assert np.array_equal(big[::4, ::4], frame)


def test_clear_errors(world):
    world.reset(seed=0)
    with pytest.raises(InvalidActionError, match="7"):
        world.step(7)
    with pytest.raises(InvalidActionError, match="JUMP"):
        world.step("JUMP")
    with pytest.raises(InvalidSettingError, match="camerra"):
        make_world("adventure", camerra="follow")
    with pytest.raises(InvalidSettingError, match="'orbit'"):
        make_world("adventure", camera="orbit")
    with pytest.raises(UnknownWorldError, match="adventure"):
        make_world("advnture")
