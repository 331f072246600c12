"""GymWorld: any Gymnasium game with image observations as a World (world/gym_adapter.py)."""

from __future__ import annotations

import pickle
import sys
from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium.envs.registration import EnvSpec

from world import make_world
from world.core import InvalidActionError, InvalidSettingError, StateNotSupportedError
from world.gym_adapter import (
    GymWorld,
    MissingExtraError,
    UnsupportedEnvError,
    action_parts,
    resize_area,
)

BREAKOUT = "gym:ALE/Breakout-v5"


class TinyGrayEnv(gymnasium.Env):
    """A grayscale game whose frames show the action received and the env step count."""

    metadata = {"render_fps": 30}

    def __init__(self, channels: int | None = None) -> None:
        shape = (12, 16) if channels is None else (12, 16, channels)
        self.observation_space = gymnasium.spaces.Box(0, 255, shape, np.uint8)
        self.action_space = gymnasium.spaces.Discrete(3)
        self.t = 0

    def _obs(self, action: int) -> np.ndarray:
        return np.full(self.observation_space.shape, 100 * action + self.t, np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple:
        super().reset(seed=seed)
        self.t = 0
        return self._obs(0), {"t": 0}

    def step(self, action: Any) -> tuple:
        self.t += 1
        info = {"received": int(action), "t": np.int64(self.t), "vec": np.zeros(2), "name": "x"}
        return self._obs(int(action)), 1.0, self.t >= 20, False, info


def tiny(**settings: Any) -> GymWorld:
    return GymWorld(EnvSpec("TinyGray-v0", entry_point=TinyGrayEnv), **settings)


# ---------------------------------------------------------------------- without extras
def test_grayscale_env_is_replicated_to_rgb_and_named_generically() -> None:
    for env_kwargs in ({}, {"channels": 1}):
        with tiny(resolution=8, env_kwargs=env_kwargs) as w:
            frame, info = w.reset(seed=0)
            assert frame.shape == (8, 8, 3) and frame.dtype == np.uint8
            assert info["t"] == 0 and info["score"] == 0.0
            res = w.step(2)
            assert (res.frame == 201).all()  # action 2 at env step 1, in all three channels
            assert res.info["received"] == 2 and res.info["t"] == 1 and res.info["name"] == "x"
            assert "vec" not in res.info  # only JSON-able scalars pass through
            assert w.render(24).shape == (24, 24, 3)
            assert w.action_names == ("ACTION_0", "ACTION_1", "ACTION_2")
            assert "not known to be a no-op" in w.describe()["action0_note"]
            assert w.tick_rate == 30.0
            with pytest.raises(StateNotSupportedError):
                w.get_state()


def test_frame_skip_max_steps_and_score() -> None:
    with tiny(frame_skip=3, max_steps=4) as w:
        w.reset(seed=0)
        results = [w.step(1) for _ in range(4)]
        assert [r.reward for r in results] == [3.0] * 4
        assert [r.info["t"] for r in results] == [3, 6, 9, 12]  # the last frame of each repeat
        assert results[-1].info["score"] == 12.0
        assert [r.truncated for r in results] == [False, False, False, True]
        assert w.tick_rate == 10.0


def test_sticky_actions_are_seeded_and_repeat_the_previous_action() -> None:
    def received(seed: int) -> list[int]:
        with tiny(sticky_actions=0.5) as w:
            w.reset(seed=seed)
            return [w.step(a).info["received"] for a in [1, 2] * 8]

    a = received(5)
    assert a == received(5)
    pressed = [1, 2] * 8
    assert any(r != p for r, p in zip(a, pressed)) and any(r == p for r, p in zip(a, pressed))
    assert all(r == p or r == prev for r, p, prev in zip(a, pressed, [0] + a))


def test_resize_is_area_averaging() -> None:
    img = np.zeros((4, 4, 3), np.uint8)
    img[:2, :2] = 200
    assert resize_area(img, 2)[:, :, 0].tolist() == [[200, 0], [0, 0]]
    assert resize_area(img, 1)[0, 0, 0] == 50


def test_non_image_env_is_a_clear_error() -> None:
    with pytest.raises(UnsupportedEnvError, match=r"CartPole-v1.*Box.*\(4,\).*not an image"):
        GymWorld("CartPole-v1")


def test_bad_settings_and_unknown_env() -> None:
    with pytest.raises(InvalidSettingError, match="frame_skip"):
        tiny(frame_skip=0)
    with pytest.raises(InvalidSettingError, match="unknown setting"):
        tiny(fps=3)
    with pytest.raises(InvalidSettingError, match="obs_key"):
        tiny(obs_key="screen")
    with pytest.raises(KeyError, match="NoSuchGame-v0"):
        make_world("gym:NoSuchGame-v0")


def test_action_parts() -> None:
    assert action_parts("UPRIGHTFIRE") == {"UP", "RIGHT", "FIRE"}
    assert action_parts("MOVE_LEFT+ATTACK") == {"MOVE_LEFT", "ATTACK"}
    assert action_parts("NOOP") == set() and action_parts("USE") == {"USE"}


# ---------------------------------------------------------------------- ALE
@pytest.mark.games
def test_breakout_shapes_names_and_invalid_action() -> None:
    pytest.importorskip("ale_py")
    with make_world(BREAKOUT) as w:
        frame, info = w.reset(seed=0)
        assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
        assert w.action_names[0] == "NOOP" and "FIRE" in w.action_names
        res = w.step("FIRE")
        assert res.frame.shape == (64, 64, 3) and res.frame.dtype == np.uint8
        assert res.info["lives"] == 5 and res.info["effective_action"] == w.action_index("FIRE")
        assert w.render(210).shape == (210, 210, 3)
        with pytest.raises(InvalidActionError, match="out of range"):
            w.step(len(w.action_names))
        with pytest.raises(InvalidActionError, match="JUMP"):
            w.step("JUMP")
        ale = w.describe()["env"]["ale"]  # v5's defaults, applied by the adapter
        assert ale["frameskip"] == 4 and ale["repeat_action_probability"] == 0.25
        assert w.tick_rate == 15.0
        keymap = w.keymap()
        assert keymap.keys["space"] == "FIRE" and keymap.keys["left"] == "LEFT"
        assert "up" not in keymap.keys  # Breakout has no UP
        assert w.action_for_pressed({"RIGHT", "UP"}) == w.action_index("RIGHT")


@pytest.mark.games
def test_breakout_frames_match_the_stock_env() -> None:
    """The adapter's frame-by-frame ALE stepping gives the env's own frames and rewards."""
    pytest.importorskip("ale_py")
    actions = [int(a) for a in np.random.default_rng(2).integers(0, 4, 40)]
    stock = gymnasium.make("ALE/Breakout-v5", repeat_action_probability=0.0)
    with make_world(BREAKOUT, env_kwargs={"repeat_action_probability": 0.0}) as w:
        obs, _ = stock.reset(seed=4)
        assert np.array_equal(w.reset(seed=4)[0], resize_area(obs, 64))
        for a in [1] + actions:
            obs, reward, *_ = stock.step(a)
            res = w.step(a)
            assert np.array_equal(res.frame, resize_area(obs, 64)) and res.reward == reward
    stock.close()


@pytest.mark.games
def test_breakout_is_deterministic_under_a_seed() -> None:
    pytest.importorskip("ale_py")
    actions = np.random.default_rng(0).integers(0, 4, 60)

    def play() -> list[np.ndarray]:
        with make_world(BREAKOUT, sticky_actions=0.2) as w:
            frames = [w.reset(seed=7)[0]]
            frames += [w.step(int(a)).frame for a in actions]
            return frames

    a, b = play(), play()
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(a[0], x) for x in a)  # the game moved


@pytest.mark.games
def test_breakout_state_roundtrip_is_exact() -> None:
    """Both kinds of sticky actions are part of the state: ALE's (made likely here, so that
    the action a sticky frame repeats matters) and the adapter's own."""
    pytest.importorskip("ale_py")
    settings = dict(sticky_actions=0.3, max_steps=500,
                    env_kwargs={"repeat_action_probability": 0.75})
    rng = np.random.default_rng(1)
    actions = [0] * 6 + [int(a) for a in rng.integers(0, 4, 50)] + [2] * 10  # ends pushing RIGHT
    with make_world(BREAKOUT, **settings) as w:
        w.reset(seed=3)
        for a in [1] * 5 + [3] * 3:  # the state is taken while the paddle moves LEFT
            w.step(a)
        state = pickle.loads(pickle.dumps(w.get_state()))
        first = [w.step(a) for a in actions]
        w.set_state(state)
        again = [w.step(a) for a in actions]
        with make_world(BREAKOUT, **settings) as other:
            other.set_state(state)  # a fresh world, never reset
            assert np.array_equal(other.render(), state["frame"])
            third = [other.step(a) for a in actions]
    for x, y, z in zip(first, again, third, strict=True):
        assert np.array_equal(x.frame, y.frame) and np.array_equal(x.frame, z.frame)
        assert x.reward == y.reward == z.reward and x.info == y.info == z.info
        assert x.terminated == y.terminated == z.terminated


@pytest.mark.games
def test_grayscale_ale_and_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ale_py")
    with make_world(BREAKOUT, env_kwargs={"obs_type": "grayscale"}) as w:
        frame, _ = w.reset(seed=0)
        assert frame.shape == (64, 64, 3)
        assert (frame[..., 0] == frame[..., 1]).all() and (frame[..., 1] == frame[..., 2]).all()
    monkeypatch.setitem(sys.modules, "ale_py", None)  # as if ale-py were not installed
    with pytest.raises(MissingExtraError, match=r"dreamstep\[games\]"):
        make_world(BREAKOUT)


# ---------------------------------------------------------------------- ViZDoom
@pytest.mark.games
def test_vizdoom_basic() -> None:
    pytest.importorskip("vizdoom")
    with make_world("gym:VizdoomBasic-v1") as w:
        frame, _ = w.reset(seed=0)
        assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8 and frame.std() > 0
        assert w.action_names == ("NOOP", "ATTACK", "MOVE_RIGHT", "MOVE_LEFT")
        res = w.step("ATTACK")
        assert res.frame.shape == (64, 64, 3) and res.reward < 0  # a miss costs ammo/time
        assert res.info["score"] == res.reward
        assert w.describe()["env"]["obs_key"] == "screen" and not w.supports_state
        assert w.keymap().keys["space"] == "ATTACK"
        with pytest.raises(StateNotSupportedError):
            w.get_state()
    with pytest.raises(UnsupportedEnvError, match="Discrete"):
        make_world("gym:VizdoomBasic-MultiBinary-v1")
