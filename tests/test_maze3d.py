"""The first-person maze: determinism, exact state, rules, the content map and rendering."""

from __future__ import annotations

import numpy as np
import pytest

from world import InvalidActionError, InvalidSettingError, make_world
from world.maze3d import (
    BACKWARD,
    FORWARD,
    FP,
    ID_CEILING,
    ID_FLOOR,
    ID_PICKUP,
    ID_WALL,
    NOOP,
    TURN_LEFT,
    TURN_RIGHT,
)

# (dx, dy) of a unit step and the heading in degrees that faces it (y grows southwards)
HEADINGS = {(1, 0): 0.0, (0, 1): 90.0, (-1, 0): 180.0, (0, -1): 270.0}


def rollout(world, seed: int, actions) -> list:
    frame, _ = world.reset(seed=seed)
    results = [frame]
    for a in actions:
        r = world.step(int(a))
        results.append(r)
        if r.terminated or r.truncated:
            break
    return results


def place(world, x: float, y: float, degrees: float) -> None:
    """Put the player at map position (x, y) facing ``degrees`` (a multiple of the turn)."""
    state = world.get_state()
    turns = ((degrees - world.degrees) % 360) / world.settings.turn_degrees
    assert turns == round(turns), "place() needs a heading reachable by turning"
    state.update(x=round(x * FP), y=round(y * FP), heading=state["heading"] + round(turns))
    world.set_state(state)


@pytest.fixture(scope="module")
def world():
    w = make_world("maze3d")
    yield w
    w.close()


def test_frames_are_deterministic_and_seeds_differ(world):
    actions = np.random.default_rng(0).integers(0, 5, 80)
    a = rollout(world, 7, actions)
    other = make_world("maze3d")
    b = rollout(other, 7, actions)
    other.close()
    assert a[0].shape == (64, 64, 3) and a[0].dtype == np.uint8
    assert np.array_equal(a[0], b[0]) and len(a) == len(b)
    for r1, r2 in zip(a[1:], b[1:]):
        assert np.array_equal(r1.frame, r2.frame) and r1.info == r2.info
    maze7 = world.map_kinds
    world.reset(seed=8)
    assert not np.array_equal(maze7, world.map_kinds), "different seeds should give different mazes"


def test_state_roundtrip_is_exact(world):
    rng = np.random.default_rng(1)
    world.reset(seed=3)
    for a in rng.integers(0, 5, 30):
        world.step(int(a))
    state = world.get_state()
    actions = rng.integers(0, 5, 40)
    first = [world.step(int(a)) for a in actions]
    world.reset(seed=4)  # another maze in between: set_state must bring seed 3's maze back
    world.set_state(state)
    second = [world.step(int(a)) for a in actions]
    for r1, r2 in zip(first, second):
        assert np.array_equal(r1.frame, r2.frame)
        assert r1.reward == r2.reward and r1.info == r2.info


def test_bad_input_gives_clear_errors(world):
    world.reset(seed=0)
    with pytest.raises(InvalidActionError, match="7"):
        world.step(7)
    with pytest.raises(InvalidActionError, match="JUMP"):
        world.step("JUMP")
    with pytest.raises(InvalidSettingError, match="wall_height"):
        make_world("maze3d", wall_height=2)
    with pytest.raises(InvalidSettingError, match="maze_size.*1"):
        make_world("maze3d", maze_size=1)


def test_info_and_cells(world):
    _, info = world.reset(seed=2)
    kinds = world.map_kinds
    assert world.num_cells == int((kinds == 0).sum())
    cx, cy = info["cell"]
    assert kinds[cy, cx] == 0
    x, y = info["player_pos"]
    assert (int(x), int(y)) == (cx, cy)
    assert info["score"] == 0.0 and info["step"] == 0 and 0 <= info["angle"] < 360
    r = world.step(TURN_RIGHT)
    assert r.info["angle"] == pytest.approx((info["angle"] + 15.0) % 360)
    assert r.info["effective_action"] == TURN_RIGHT


def test_walking_into_a_wall_is_an_effective_noop(world):
    world.reset(seed=5)
    kinds = world.map_kinds
    cx, cy = world.info["cell"]
    degrees = next(deg for (dx, dy), deg in HEADINGS.items() if kinds[cy + dy, cx + dx])
    place(world, cx + 0.5, cy + 0.5, degrees)
    for _ in range(4):  # walk up to the wall
        world.step(FORWARD)
    before = world.render()
    r = world.step(FORWARD)
    assert r.info["effective_action"] == NOOP and r.reward == 0.0
    assert np.array_equal(r.frame, before)
    assert world.step(BACKWARD).info["effective_action"] == BACKWARD


def test_player_never_overlaps_a_wall(world):
    world.reset(seed=6)
    kinds = world.map_kinds
    r = world.settings.player_radius
    rng = np.random.default_rng(6)
    for a in rng.choice(5, size=400, p=[0.05, 0.55, 0.1, 0.15, 0.15]):
        x, y = world.step(int(a)).info["player_pos"]
        x0, x1 = int(np.floor(x - r)), int(np.ceil(x + r))
        y0, y1 = int(np.floor(y - r)), int(np.ceil(y + r))
        assert not kinds[y0:y1, x0:x1].any(), f"player box at {(x, y)} overlaps a wall"


def test_pickup_gives_reward_once_and_disappears(world):
    world.reset(seed=9)
    kinds = world.map_kinds
    px, py = (int(v) for v in world.pickup_squares[0])
    (dx, dy), _ = next((d, deg) for d, deg in HEADINGS.items() if not kinds[py + d[1], px + d[0]])
    place(world, px + 0.5 + dx, py + 0.5 + dy, HEADINGS[(-dx, -dy)])
    in_view = world.content_map()
    assert ((in_view >> 28) == ID_PICKUP).any(), "the pickup ahead should be visible"
    rewards = [world.step(FORWARD).reward for _ in range(4)]
    assert sum(rewards) == 1.0 and world.info["score"] == 1.0
    assert world.info["pickups_left"] == len(world.pickup_squares) - 1
    for a in [BACKWARD] * 4 + [FORWARD] * 4:
        assert world.step(a).reward == 0.0
    place(world, px + 0.5 + dx, py + 0.5 + dy, HEADINGS[(-dx, -dy)])
    assert not ((world.content_map() >> 28) == ID_PICKUP).any(), "a collected pickup stays gone"


def test_collecting_every_pickup_terminates():
    with make_world("maze3d", maze_size=4, pickups=1, resolution=16) as w:
        w.reset(seed=0)
        kinds = w.map_kinds
        px, py = (int(v) for v in w.pickup_squares[0])
        (dx, dy), _ = next((d, deg) for d, deg in HEADINGS.items() if not kinds[py + d[1], px + d[0]])
        place(w, px + 0.5 + dx, py + 0.5 + dy, HEADINGS[(-dx, -dy)])
        results = [w.step(FORWARD) for _ in range(3)]
        assert results[-1].reward == 1.0 and results[-1].terminated and not results[-1].truncated


def test_truncation_at_max_steps():
    with make_world("maze3d", max_steps=5, resolution=16) as w:
        w.reset(seed=0)
        flags = [w.step(NOOP).truncated for _ in range(5)]
        assert flags == [False] * 4 + [True]


def test_content_map_is_stable_when_turning_back(world):
    world.reset(seed=4)
    ids = world.content_map()
    frame = world.render()
    assert ids.shape == (64, 64) and ids.dtype == np.int64
    assert {ID_WALL, ID_FLOOR, ID_CEILING} <= set(np.unique(ids >> 28).tolist())
    for a in [TURN_RIGHT] * 5 + [TURN_LEFT] * 5:
        world.step(a)
    assert np.array_equal(world.content_map(), ids)
    assert np.array_equal(world.render(), frame)
    turned = [world.step(TURN_LEFT) for _ in range(2)][-1]
    assert not np.array_equal(world.content_map(), ids)
    # the same wall texel seen from two headings keeps its id: the views overlap
    assert np.isin(world.content_map(), ids).mean() > 0.2, turned.info


def test_render_at_another_size_rerenders(world):
    world.reset(seed=1)
    frame = world.render()
    big = world.render(256)
    assert big.shape == (256, 256, 3) and big.dtype == np.uint8
    # more detail than the 64 px frame, not a 4x upscale of it
    assert not np.array_equal(big, np.kron(frame, np.ones((4, 4, 1), np.uint8)))
    assert np.abs(big[2::4, 2::4].astype(int) - frame).mean() < 12
    # the current frame and its content map are untouched
    assert np.array_equal(world.render(), frame) and world.content_map().shape == (64, 64)
