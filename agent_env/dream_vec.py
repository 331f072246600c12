"""A batched vector env over the dream: N dreams stepped in one batched forward.

``DreamVectorEnv`` is a :class:`gymnasium.vector.VectorEnv`: one world model, one KV cache
with a batch row per env, one batched sampler call, one batched decode and one batched
reward/termination read per ``step``. Episodes start from the real game's first frame (the
real game is reset with the env's seed, as the single dream does) or from a start-state buffer
of real frames (:meth:`DreamVectorEnv.set_start_frames`), and autoreset follows
Gymnasium's default (next-step) mode: the step after an episode ends returns the first frame
of the next episode with reward 0; the row's cached history is rebuilt from that frame while
the other rows stream on (``Session.reset_rows``).

>>> from agent_env import make_dream_vector_env
>>> envs = make_dream_vector_env(num_envs=8)                # the shipped checkpoint
>>> obs, info = envs.reset(seed=0)
>>> obs, rew, term, trunc, info = envs.step(envs.action_space.sample())
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from world.core import settings_from_kwargs
from world.dream import DreamSettings, load_dreamer


class DreamVectorEnv(VectorEnv):
    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int, max_episode_steps: int = 1000, render_mode: str | None = None,
                 world: str = "dream", autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
                 **dream_settings: Any) -> None:
        if world != "dream":  # gym.make_vec passes the registered kwargs, world included
            raise ValueError(f"DreamVectorEnv steps dreams only, got world={world!r}")
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        try:
            self.autoreset_mode = AutoresetMode(autoreset_mode)
        except ValueError as e:
            raise ValueError(f"autoreset_mode must be 'NextStep' or 'SameStep', got {autoreset_mode!r}") from e
        if self.autoreset_mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ValueError(f"autoreset_mode must be 'NextStep' or 'SameStep', got {autoreset_mode!r}")
        if dream_settings.get("context", 1) != 1:
            raise ValueError("the vector dream starts every episode from one real frame (context=1)")
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.max_episode_steps = max_episode_steps
        # one Dreamer holds the model, autoencoder, sampler and heads; the real games give the first frames
        self.settings = settings_from_kwargs(DreamSettings, {**dream_settings, "max_steps": max_episode_steps},
                                             "dream")
        self.dreamer, self.real_world_name, self.real_settings = load_dreamer(self.settings)
        if self.settings.warmup:  # the kernels of this batch size's shapes
            self.dreamer.warm_up(num_envs)
        from world import make_world

        self._reals = [make_world(self.real_world_name, **self.real_settings) for _ in range(num_envs)]
        self.single_observation_space = spaces.Box(0, 255, self.dreamer.frame_shape, np.uint8)
        self.single_action_space = spaces.Discrete(len(self._reals[0].action_names))
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metadata = {**type(self).metadata, "render_fps": self._reals[0].tick_rate,
                         "autoreset_mode": self.autoreset_mode}
        self._session = None
        self._z: torch.Tensor | None = None
        self._zh: torch.Tensor | None = None  # what the heads read of the last frames
        self._obs = np.zeros((num_envs, *self.dreamer.frame_shape), np.uint8)
        self._steps = np.zeros(num_envs, np.int64)
        self._needs_reset = np.zeros(num_envs, bool)
        self._seeds = np.zeros(num_envs, np.int64)
        self._start_index = np.full(num_envs, -1, np.int64)
        self._start_frames: np.ndarray | None = None
        self._rng = np.random.default_rng()

    def set_start_frames(self, frames: np.ndarray | None) -> None:
        """Start every later episode from a real frame drawn from ``frames`` (N, H, W, 3) uint8 (a
        start-state buffer, e.g. frames an agent met in the real game, spread over the map) instead
        of the real game's first frame; None goes back to the first frames. The draws follow the
        env's seed (``reset(seed=...)``), and ``info["start_index"]`` says which frame (-1: a reset)."""
        if frames is None:
            self._start_frames = None
            return
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[1:] != self.dreamer.frame_shape or frames.dtype != np.uint8 \
                or not len(frames):
            raise ValueError(f"start frames must be a non-empty uint8 array (N, {', '.join(map(str, self.dreamer.frame_shape))}), "
                             f"got {frames.dtype} {frames.shape}")
        self._start_frames = frames

    # ----------------------------------------------------------------- helpers
    def _start(self, rows: np.ndarray) -> torch.Tensor:
        """Reset the real games of ``rows`` with fresh seeds; their first frames' latents."""
        frames = []
        for i in rows:
            if self._start_frames is not None:
                self._seeds[i] = -1
                self._start_index[i] = int(self._rng.integers(len(self._start_frames)))
                frame = self._start_frames[self._start_index[i]]
            else:
                self._seeds[i] = int(self._rng.integers(2**31))
                self._start_index[i] = -1
                frame, _ = self._reals[i].reset(seed=int(self._seeds[i]))
            frames.append(frame)
            self._obs[i] = frame
        return self.dreamer.encode(np.stack(frames))

    def _infos(self, extra: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        info: dict[str, Any] = {"world_seed": self._seeds.copy(), "_world_seed": np.ones(self.num_envs, bool),
                                "start_index": self._start_index.copy(), "_start_index": np.ones(self.num_envs, bool)}
        for k, v in (extra or {}).items():
            info[k], info[f"_{k}"] = v, np.ones(self.num_envs, bool)
        return info

    # ----------------------------------------------------------------- gym API
    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        if options:
            raise ValueError(f"unknown reset option(s) {sorted(options)}; DreamVectorEnv takes none")
        if isinstance(seed, list):
            seed = seed[0]
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        noise_seed = int(self._rng.integers(2**31))
        self._session = self.dreamer.session(self.num_envs, torch.Generator().manual_seed(noise_seed))
        rows = np.arange(self.num_envs)
        z = self._start(rows)
        with torch.no_grad(), self.dreamer.autocast():
            self._session.prime(z[:, None], torch.zeros(self.num_envs, 1, dtype=torch.long))
        self._z = self._zh = z
        self._steps[:] = 0
        self._needs_reset[:] = False
        return self._obs.copy(), self._infos()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._session is None or self._z is None:
            raise RuntimeError("call reset() before step()")
        acts = np.asarray(actions).reshape(-1)
        if acts.shape != (self.num_envs,) or not np.isin(acts, np.arange(self.single_action_space.n)).all():
            raise ValueError(f"actions must be {self.num_envs} ints in 0..{self.single_action_space.n - 1}, "
                             f"got {actions!r}")
        resets = np.flatnonzero(self._needs_reset)
        acts = np.where(self._needs_reset, 0, acts)
        dev = self.dreamer.device
        a = torch.from_numpy(acts.astype(np.int64))[:, None].to(dev)
        with torch.no_grad():
            with self.dreamer.autocast():
                z = self._session.generate(a, self.dreamer.sampler, write=False)[:, 0].float()
            rz = torch.from_numpy(resets).to(dev)
            if len(resets):
                z[rz] = self._start(resets)
            with self.dreamer.autocast():
                # fused into the next step's first forward (at the sampler's context noise level)
                self._session.write_generated(z[:, None], a, self.dreamer.sampler, defer=True,
                                              taken=self._session.taken)  # a pose_taken model's reading
                if len(resets):
                    self._session.reset_rows(rz, z[rz])
            live = ~self._needs_reset
            if live.any():
                idx = torch.from_numpy(np.flatnonzero(live)).to(dev)
                self._obs[live] = self.dreamer.decode(z[idx])
            # the heads read the generated latents, or the frames encoded again (heads_input="frames");
            # a restarted row's frame is a real one, its latents its encoding either way
            zh = self.dreamer.heads_view(z, self._obs)
            rewards, terminated = self.dreamer.outcomes(self._zh, zh, a[:, 0])
        self._z, self._zh = z, zh
        rewards[resets] = 0.0
        terminated[resets] = False
        self._steps = np.where(self._needs_reset, 0, self._steps + 1)
        truncated = ~terminated & (self._steps >= self.max_episode_steps)
        truncated[resets] = False
        done = terminated | truncated
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self._needs_reset = done
            return self._obs.copy(), rewards, terminated, truncated, self._infos()
        # same-step autoreset: the ended rows start their next episode now; their last frames
        # go out in info["final_obs"] (Gymnasium's convention)
        final = np.empty(self.num_envs, dtype=object)
        rows = np.flatnonzero(done)
        for i in rows:
            final[i] = self._obs[i].copy()
        if len(rows):
            with torch.no_grad(), self.dreamer.autocast():
                start = self._start(rows)
                rt = torch.from_numpy(rows).to(dev)
                self._session.reset_rows(rt, start)
                self._z[rt] = start
                if self._zh is not self._z:
                    self._zh[rt] = start
            self._steps[rows] = 0
        info = self._infos()
        if len(rows):
            info["final_obs"], info["_final_obs"] = final, done.copy()
        return self._obs.copy(), rewards, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        return self._obs.copy() if self.render_mode == "rgb_array" else None

    def close_extras(self, **kwargs: Any) -> None:
        for w in self._reals:
            w.close()


def make_dream_vector_env(num_envs: int = 8, checkpoint: str | None = None, **kwargs: Any) -> DreamVectorEnv:
    """N dreams of ``checkpoint`` (default: the shipped default) in one batched vector env."""
    if checkpoint is not None:
        kwargs["checkpoint"] = checkpoint
    return DreamVectorEnv(num_envs, **kwargs)
