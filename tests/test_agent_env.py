"""Gymnasium envs over Worlds: checkers, vector envs, seeding, rendering, errors, registration."""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.wrappers import TimeLimit

import agent_env
from agent_env import WorldEnv, env_id_for, make_env, register_builtin_envs, register_world
from world import BUILTIN_WORLDS, InvalidActionError, StepResult, UnknownWorldError, World

ROOT = Path(__file__).resolve().parent.parent


def _written(name: str) -> bool:
    return importlib.util.find_spec(BUILTIN_WORLDS[name].split(":")[0]) is not None


GAMES = [pytest.param(n, marks=pytest.mark.skipif(not _written(n), reason=f"world {n!r} not written yet"))
         for n in sorted(BUILTIN_WORLDS)]


class CorridorWorld(World):
    """A tiny test-only world: a lit column walks left/right; reaching the right end wins."""

    name = "corridor"
    action_names = ("NOOP", "LEFT", "RIGHT")
    tick_rate = 30.0

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.width = width

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return (self.width, self.width, 3)

    def _frame(self) -> np.ndarray:
        frame = np.zeros(self.frame_shape, np.uint8)
        frame[:, self.x] = 255
        return frame

    def _reset(self, seed: int | None) -> tuple[np.ndarray, dict[str, Any]]:
        self.x = (seed or 0) % (self.width - 1)
        return self._frame(), {"player_pos": (self.x + 0.5, self.width / 2)}

    def _step(self, action: int) -> StepResult:
        self.x = int(np.clip(self.x + (0, -1, 1)[action], 0, self.width - 1))
        won = self.x == self.width - 1
        return StepResult(self._frame(), float(won), won, False, {"player_pos": (self.x + 0.5, 4.0)})


@pytest.fixture
def registered():
    """Register test ids and remove them again afterwards (the registry is global)."""
    ids: list[str] = []

    def register(env_id: str, world, **kwargs) -> str:
        ids.append(env_id)
        return register_world(env_id, world, **kwargs)

    yield register
    for env_id in ids:
        gym.registry.pop(env_id, None)


def rollout(env: gym.Env, seed: int | None, actions) -> list[np.ndarray]:
    obs, _ = env.reset(seed=seed)
    frames = [obs]
    for a in actions:
        obs, _, terminated, truncated, _ = env.step(int(a))
        frames.append(obs)
        if terminated or truncated:
            break
    return frames


# ---------------------------------------------------------------------- checkers
@pytest.mark.parametrize("game", GAMES)
def test_gymnasium_and_sb3_checkers_pass_without_warnings(game):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(env_id_for(game))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        # "human" needs a display: the render checks run under Xvfb (test_human_render_under_xvfb...)
        check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env)
    unwrapped = env.unwrapped
    assert unwrapped.observation_space == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert unwrapped.action_space == gym.spaces.Discrete(len(unwrapped.world.action_names))
    assert unwrapped.get_action_meanings()[0] == "NOOP"
    assert unwrapped.metadata["render_fps"] == unwrapped.world.tick_rate
    assert env.spec.max_episode_steps == agent_env.DEFAULT_MAX_EPISODE_STEPS
    env.close()


def test_registration_ids_and_idempotence(registered):
    assert env_id_for("adventure") == "dreamstep/Adventure-v0"
    assert env_id_for("maze3d") == "dreamstep/Maze3D-v0"
    assert env_id_for("adventure", "Dream") == "dreamstep/AdventureDream-v0"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # re-registering must not override (gymnasium warns)
        register_builtin_envs()
    assert {env_id_for(n) for n in BUILTIN_WORLDS} <= set(agent_env.registered_env_ids())

    env_id = registered("dreamtest/SmallAdventure-v0", "adventure", resolution=32)
    assert registered(env_id, "adventure", resolution=32) == env_id  # same again: a no-op
    with pytest.raises(ValueError, match="already registered"):
        register_world(env_id, "adventure", resolution=48)
    env = make_env(env_id)
    assert env.reset(seed=0)[0].shape == (32, 32, 3)
    env.close()


# ---------------------------------------------------------------------- vector envs
def _vec_rollout(mode: str, **vector_kwargs) -> tuple[list, list, list]:
    envs = gym.make_vec("dreamstep/Adventure-v0", num_envs=2, vectorization_mode=mode,
                        wrappers=[functools.partial(TimeLimit, max_episode_steps=3)],
                        vector_kwargs=vector_kwargs)
    try:
        obs, info = envs.reset(seed=0)
        frames, truncs, steps = [obs], [], [info["step"].tolist()]
        for t in range(5):
            obs, _, _, trunc, info = envs.step(np.array([t % 5, 4]))
            frames.append(obs)
            truncs.append(trunc.tolist())
            steps.append(info["step"].tolist())
    finally:
        envs.close()
    return frames, truncs, steps


def test_sync_and_async_vector_envs_step_autoreset_and_agree():
    sync = _vec_rollout("sync")
    # default start method (fork on Linux) from a process that has rendered already:
    # world.gl sets LP_NUM_THREADS=0 so llvmpipe has no threads to lose in the fork
    async_ = _vec_rollout("async")
    frames, truncs, steps = sync
    assert frames[0].shape == (2, 64, 64, 3) and frames[0].dtype == np.uint8
    assert truncs == [[False, False], [False, False], [True, True], [False, False], [False, False]]
    # the step after the truncation resets (next-step autoreset), then play continues
    assert steps == [[0, 0], [1, 1], [2, 2], [3, 3], [0, 0], [1, 1]]
    assert not np.array_equal(frames[0][0], frames[0][1]), "sub-envs should get different seeds"
    assert truncs == async_[1] and steps == async_[2]
    assert all(np.array_equal(a, b) for a, b in zip(frames, async_[0]))


def test_async_make_vec_with_default_start_method_from_a_fresh_process():
    """The documented one-liner, in a process that has not rendered before forking."""
    code = (
        "import gymnasium as gym, numpy as np, agent_env\n"
        "envs = gym.make_vec('dreamstep/Adventure-v0', num_envs=2, vectorization_mode='async')\n"
        "obs, _ = envs.reset(seed=0)\n"
        "obs, *_ = envs.step(np.array([1, 2]))\n"
        "envs.close()\n"
        "print(obs.shape)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(2, 64, 64, 3)"


# ---------------------------------------------------------------------- seeding
@pytest.mark.parametrize("game", GAMES)
def test_seeding_is_deterministic(game):
    actions = np.random.default_rng(0).integers(0, 5, 30)
    a, b = make_env(game), make_env(game)
    first = rollout(a, 5, actions)
    assert all(np.array_equal(x, y) for x, y in zip(first, rollout(b, 5, actions)))
    # unseeded resets after a seeded one continue deterministically, with new worlds
    next_a, next_b = a.reset()[1]["world_seed"], b.reset()[1]["world_seed"]
    assert next_a == next_b != a.reset(seed=5)[1]["world_seed"]
    assert not np.array_equal(first[0], rollout(a, 6, [])[0]), "seeds 5 and 6 should differ"
    # an exact world seed, e.g. to replay a recorded episode
    obs, info = a.reset(options={"world_seed": 7})
    assert info["world_seed"] == 7
    assert np.array_equal(obs, a.unwrapped.world.reset(seed=7)[0])
    with pytest.raises(ValueError, match="unknown reset option"):
        a.reset(options={"level": 2})
    a.close()
    b.close()


# ---------------------------------------------------------------------- rendering
def test_rgb_array_render_returns_the_frame_or_a_larger_one():
    env = make_env("adventure", render_mode="rgb_array")
    obs, _ = env.reset(seed=1)
    frame = env.render()
    assert frame.shape == (64, 64, 3) and np.array_equal(frame, obs)
    env.close()
    big = make_env("adventure", render_mode="rgb_array", render_size=160)
    big.reset(seed=1)
    assert big.render().shape == (160, 160, 3)
    big.close()


def _make_and_step_plain_envs() -> None:
    """Each game, made afresh (new GL programs in the process's context), resets and steps."""
    for name in ("adventure", "maze3d"):
        env = make_env(name)
        env.reset(seed=0)
        env.step(1)
        env.close()


@pytest.mark.parametrize("sdl", [{"SDL_VIDEODRIVER": "dummy"}, {"SDL_VIDEODRIVER": None, "DISPLAY": None,
                                                                "WAYLAND_DISPLAY": None}])
def test_human_render_without_a_display_fails_at_make_and_the_process_stays_healthy(monkeypatch, sdl):
    import pygame

    for var, value in sdl.items():
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)
    for env_id in (env_id_for("adventure"), env_id_for("maze3d"), agent_env.DREAM_ENV_ID):
        with pytest.raises(agent_env.NoDisplayError, match=r"no display here .*render_mode='rgb_array'"):
            gym.make(env_id, render_mode="human")
    assert not pygame.display.get_init()
    _make_and_step_plain_envs()


def test_human_render_fails_at_make_where_sdl_falls_back_to_a_driver_without_windows():
    """A DISPLAY that nothing serves: SDL falls back (to its offscreen driver) or fails; either
    way make raises, and the child process still makes and steps plain envs."""
    n = next(n for n in range(400, 600) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    env = {k: v for k, v in os.environ.items() if k not in ("SDL_VIDEODRIVER", "WAYLAND_DISPLAY")}
    env["DISPLAY"] = f":{n}"
    script = ("import gymnasium as gym, agent_env\n"
              "try:\n    gym.make('dreamstep/Adventure-v0', render_mode='human')\n"
              "except agent_env.NoDisplayError as e:\n    print(e)\n"
              "for i in ('dreamstep/Adventure-v0', 'dreamstep/Maze3D-v0'):\n"
              "    e = gym.make(i); e.reset(seed=0); e.step(1); e.close()\n"
              "print('plain ok')\n")
    run = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    error, ok = run.stdout.splitlines()
    assert "no display here (SDL " in error and "render_mode='rgb_array'" in error and ok == "plain ok"


# Run in a child process on a private Xvfb display: an X error there aborts the process.
HUMAN_UNDER_XVFB = """
import sys
import warnings

import gymnasium as gym
import numpy as np
import pygame
from gymnasium.utils.env_checker import check_env

import agent_env

check = sys.argv[1] == "check"
for env_id in sys.argv[2:]:
    if not check:
        env = gym.make(env_id, render_mode="human", render_size=96)
        env.reset(seed=0)
        for a in (1, 2, 0):
            env.step(a)
        assert env.render() is None
        shown = pygame.surfarray.array3d(pygame.display.get_surface()).swapaxes(0, 1)
        assert np.array_equal(shown, env.unwrapped._display_frame(96)), env_id  # the window shows the frame
        env.close()
        assert not pygame.display.get_init()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            env = gym.make(env_id)
            check_env(env.unwrapped)  # makes the env in each declared render mode, "human" too
            env.close()
    print("ok", env_id, flush=True)
for env_id in ("dreamstep/Adventure-v0", "dreamstep/Maze3D-v0"):  # plain envs afterwards
    env = gym.make(env_id)
    env.reset(seed=1)
    env.step(1)
    env.close()
print("plain ok", flush=True)
"""


def _run_under_xvfb(display: str, *args: str) -> str:
    env = {**os.environ, "DISPLAY": display, "SDL_VIDEODRIVER": "x11", "SDL_AUDIODRIVER": "dummy"}
    run = subprocess.run([sys.executable, "-c", HUMAN_UNDER_XVFB, *args], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "X Error" not in run.stderr, run.stderr
    return run.stdout


def test_human_render_under_xvfb_steps_and_closes_each_kind_then_plain_envs_work(xvfb_display):
    ids = [env_id_for("adventure"), env_id_for("maze3d"), agent_env.DREAM_ENV_ID]
    out = _run_under_xvfb(xvfb_display, "human", *ids)
    assert out.splitlines() == [f"ok {i}" for i in ids] + ["plain ok"]


def test_gymnasium_checker_with_render_checks_passes_under_xvfb(xvfb_display):
    ids = [env_id_for("adventure"), env_id_for("maze3d")]
    out = _run_under_xvfb(xvfb_display, "check", *ids)
    assert out.splitlines() == [f"ok {i}" for i in ids] + ["plain ok"]


@pytest.mark.slow
def test_gymnasium_checker_with_render_checks_passes_for_the_dream_under_xvfb(xvfb_display):
    out = _run_under_xvfb(xvfb_display, "check", agent_env.DREAM_ENV_ID)
    assert out.splitlines() == [f"ok {agent_env.DREAM_ENV_ID}", "plain ok"]


# ---------------------------------------------------------------------- errors
def test_invalid_action_error_names_the_value_and_range():
    env = make_env("adventure")
    env.reset(seed=0)
    with pytest.raises(InvalidActionError, match=r"action 5 .*0\.\.4"):
        env.step(5)
    with pytest.raises(InvalidActionError, match=r"action -1 .*0\.\.4"):
        env.step(-1)
    env.close()


def test_unknown_world_error_lists_the_valid_worlds():
    for call in (lambda: make_env("zelda"), lambda: WorldEnv("zelda")):
        with pytest.raises(UnknownWorldError) as err:
            call()
        assert "'zelda'" in str(err.value)
        assert all(name in str(err.value) for name in BUILTIN_WORLDS)
    with pytest.raises(UnknownWorldError, match="gym:CartPole-v1"):
        make_env("CartPole-v1")  # a plain Gymnasium env: the error says how to adapt it


# ---------------------------------------------------------------------- any World
def test_env_over_a_custom_world_factory(registered):
    env_id = registered("dreamtest/Corridor-v0", CorridorWorld, max_episode_steps=50, width=8)
    env = gym.make(env_id, render_mode="rgb_array", render_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(options={"world_seed": 0})  # the column starts at x = 0
    assert env.unwrapped.metadata["render_fps"] == 30.0
    # a world without render(size) is upscaled by pixel repetition
    assert np.array_equal(env.render(), obs.repeat(2, 0).repeat(2, 1))
    rewards = [env.step(2)[1] for _ in range(7)]
    assert rewards[-1] == 1.0 and sum(rewards) == 1.0
    env.close()


# ---------------------------------------------------------------------- SB3
def _corridor_returns(env_id: str, policy, starts) -> list[float]:
    """Returns of ``policy(obs) -> action`` in one episode from each start column (world seed)."""
    env = gym.make(env_id)
    out = []
    for start in starts:
        obs, _ = env.reset(options={"world_seed": start})
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(int(policy(obs)))
            total, done = total + reward, terminated or truncated
        out.append(total)
    env.close()
    return out


def test_sb3_ppo_learns_to_walk_the_corridor_better_than_random(registered):
    """PPO (Stable-Baselines3), through the adapter agent_env.ppo trains with, over a sync vector env
    of a WorldEnv, learns the corridor: its sampled actions reach the end from every start column
    within the time limit, where a uniform random policy and the untrained policy on the same starts
    mostly do not. (Measured over 150 training seeds: this budget and half of it both reach 1.0 on
    every one.)"""
    import torch
    from stable_baselines3 import PPO

    from agent_env.ppo import sb3_vec_env

    width = 8
    env_id = registered("dreamtest/CorridorLearn-v0", CorridorWorld, max_episode_steps=12, width=width)
    venv = gym.make_vec(env_id, num_envs=4, vectorization_mode="sync", vector_kwargs={"autoreset_mode": "SameStep"})
    model = PPO("MlpPolicy", sb3_vec_env(venv), n_steps=32, batch_size=64, n_epochs=10, learning_rate=1e-3,
                gamma=0.9, device="cpu", seed=0)
    starts = list(range(width - 1)) * 4  # every start column (x = world seed: 1 to 7 steps from the end)

    def agent_returns() -> list[float]:
        torch.manual_seed(0)  # the policy's actions are sampled
        return _corridor_returns(env_id, lambda o: model.predict(o, deterministic=False)[0], starts)

    untrained = agent_returns()
    model.learn(total_timesteps=4096)
    model.get_env().close()
    trained = agent_returns()
    rng = np.random.default_rng(0)
    rand = _corridor_returns(env_id, lambda o: rng.integers(3), starts)
    assert np.mean(trained) >= 0.9, trained
    assert np.mean(rand) < 0.6, rand  # random walks rarely make 7 net steps right in 12
    assert np.mean(trained) - np.mean(rand) > 0.4 and np.mean(trained) - np.mean(untrained) > 0.4, (untrained, rand)


def test_the_ppo_difference_interval():
    from agent_env.ppo import difference_ci

    lo, hi = difference_ci([1.0] * 30 + [2.0] * 30, [0.0] * 60)
    assert 1.3 < lo < 1.5 < hi < 1.7  # mean difference 1.5, spread of the first sample only
    lo, hi = difference_ci([0.0, 1.0] * 20, [0.0, 1.0] * 20)
    assert lo < 0 < hi  # the same sample: no difference
