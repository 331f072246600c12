"""The world being played: episodes and seeds, the controller, timing, recording and the trace."""

from __future__ import annotations

import concurrent.futures
import json
import math
import re
import shutil
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import numpy as np

from world.core import StepResult, World
from world.dataset import ACTION_CONVENTION, DatasetWriter, atomic_write_json
from world.policies import Policy, PolicyError, make_policy
from world.record import (
    STATS,
    PlayedEpisode,
    dreamstep_version,
    episode_stats,
    git_commit,
    num_cells_of,
    summarize,
)

TICK_RATE_LIMITS = (0.5, 480.0)


# ---------------------------------------------------------------------- timing
class TickClock:
    """Turns display time into game ticks at ``rate`` per second (fixed step, bounded catch-up)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._acc = 0.0

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        self._rate = float(min(max(value, TICK_RATE_LIMITS[0]), TICK_RATE_LIMITS[1]))

    def advance(self, seconds: float) -> int:
        """Ticks due after ``seconds`` more; a long stall drops ticks instead of fast-forwarding."""
        self._acc += seconds * self._rate
        n = int(self._acc)
        self._acc -= n
        return min(n, max(4, math.ceil(self._rate / 20)))


class RateMeter:
    """Events per second over the last ``window`` seconds."""

    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        self._times: deque[float] = deque()

    def tick(self, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        self._times.append(now)
        while self._times and now - self._times[0] > self.window:
            self._times.popleft()

    def rate(self) -> float:
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0


# ---------------------------------------------------------------------- recording and tracing
def jsonable(value: Any) -> Any:
    """Plain JSON values from info dicts (numpy scalars and arrays, tuples)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


class TraceWriter:
    """One JSON line per game step: episode, action, reward, end flags and the info."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w")

    def write(self, episode: int, action: int, res: StepResult, controller: str) -> None:
        row = {"episode": episode, "action": action, "controller": controller,
               "reward": float(res.reward), "terminated": bool(res.terminated),
               "truncated": bool(res.truncated), "info": jsonable(res.info)}
        self._file.write(json.dumps(row) + "\n")

    def close(self) -> None:
        self._file.close()


def dataset_name(world_name: str) -> str:
    """A Minari dataset id for a human recording: ``<world>-human-<date>-<time>-v0``."""
    slug = re.sub(r"[^-_A-Za-z0-9]+", "-", world_name).strip("-")
    return f"{slug}-human-{time.strftime('%Y%m%d-%H%M%S')}-v0"


class EpisodeRecorder:
    """Collects played episodes and writes each one, when it ends, into a Minari dataset.

    Writing (compression, fsync) runs on one background thread so the window does not stall;
    :meth:`close` waits for it, writes ``stats.json`` and returns the summary. Episodes
    follow :mod:`world.dataset` (T+1 frames and infos); one stopped by the player is marked
    truncated at its last step. Episode metadata counts the steps each controller played.
    """

    def __init__(self, root: Path, world: World, world_name: str,
                 policy_info: dict[str, Any]) -> None:
        import gymnasium as gym

        self.root, self.world = root, world
        self.writer = DatasetWriter(
            root, gym.spaces.Box(0, 255, world.frame_shape, np.uint8),
            gym.spaces.Discrete(world.num_actions),
            recording={"world": world_name, "settings": world.settings_dict(),
                       "policy": policy_info, "source": "play.py"},
            extra={"world": world_name, "world_description": world.describe(),
                   "policy": policy_info, "algorithm_name": "dreamstep/human",
                   "git_commit": git_commit(), "dreamstep_version": dreamstep_version(),
                   "action_convention": ACTION_CONVENTION,
                   "description": f"{world_name} played in the play window (play.py); each "
                                  f"episode's metadata counts the steps each controller played"})
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="record")
        self._writes: list[concurrent.futures.Future[int]] = []
        self._episode: PlayedEpisode | None = None
        self._controllers: Counter[str] = Counter()
        self.episodes_saved = 0

    def begin(self, frame: np.ndarray, info: dict[str, Any], seed: int) -> None:
        self._episode = PlayedEpisode(seed, [frame.copy()], [info])
        self._controllers = Counter()

    def add(self, action: int, res: StepResult, controller: str) -> None:
        ep = self._episode
        assert ep is not None, "begin() an episode before add()"
        ep.observations.append(res.frame.copy())
        ep.infos.append(res.info)
        ep.actions.append(int(action))
        ep.rewards.append(float(res.reward))
        ep.terminations.append(bool(res.terminated))
        ep.truncations.append(bool(res.truncated))
        self._controllers[controller] += 1

    def end_episode(self) -> None:
        """Queue the current episode for writing (an episode without steps is dropped)."""
        ep, self._episode = self._episode, None
        if ep is None or not ep.actions:
            return
        if not ep.terminations[-1]:
            ep.truncations[-1] = True
        self._check_writes()
        self._writes.append(self._pool.submit(self._write, ep, dict(self._controllers)))
        self.episodes_saved += 1

    def _write(self, ep: PlayedEpisode, controllers: dict[str, int]) -> int:
        stats = episode_stats(ep, self.world.num_actions, num_cells_of(self.world))
        return self.writer.write_episode(
            np.stack(ep.observations), ep.actions, ep.rewards, ep.terminations, ep.truncations,
            ep.infos, seed=ep.seed, metadata={"stats": stats, "controllers": controllers})

    def _check_writes(self) -> None:
        for f in [f for f in self._writes if f.done()]:
            self._writes.remove(f)
            f.result()  # re-raises a failed write here, in the window's thread

    def close(self) -> dict[str, Any] | None:
        """Write what is left; the summary stats, or None (folder removed) if nothing was saved."""
        self.end_episode()
        self._pool.shutdown(wait=True)
        self._check_writes()
        if self.writer.next_episode == 0:
            shutil.rmtree(self.root, ignore_errors=True)
            return None
        stats = summarize(self.root)
        atomic_write_json(self.root / STATS, stats)
        return stats


# ---------------------------------------------------------------------- the session
def scripted_policy(name: str, world: World, seed: int) -> Policy:
    """The named scripted policy; the explorer falls back to random where it cannot run (and
    looks no steps ahead in a dream, where each look-ahead step would be a model forward)."""
    try:
        if name == "explorer" and world.is_dream:
            return make_policy(name, world, seed, lookahead=False)
        return make_policy(name, world, seed)
    except PolicyError:
        if name != "explorer":
            raise
        return make_policy("random", world, seed)


class Session:
    """A world being played: episodes (episode i from ``seed + i``), who plays, score,
    recording and trace. Knows nothing about windows, so the headless run and tests share it.

    An episode's last frame stays on screen for one tick; the tick after it starts the next
    episode.
    """

    def __init__(self, world: World, world_name: str, seed: int, scripted: Policy,
                 use_scripted: bool, trace: TraceWriter | None = None, twin: World | None = None) -> None:
        self.world, self.world_name, self.base_seed = world, world_name, seed
        self.scripted, self.use_scripted, self.trace = scripted, use_scripted, trace
        self.twin = twin  # a dream's real game, driven by the same actions from the same start
        self.twin_frame: np.ndarray | None = None
        self.recorder: EpisodeRecorder | None = None
        self.episode = -1
        self.frame_ms: float | None = None
        self.saved: dict[str, Any] | None = None
        self.new_episode()

    @property
    def controller(self) -> str:
        return str(self.scripted.describe()["name"]) if self.use_scripted else "human"

    @property
    def score(self) -> float:
        return float(self.info.get("score", self.episode_return))

    def new_episode(self) -> None:
        if self.recorder is not None:
            self.recorder.end_episode()
        self.episode += 1
        self.seed = self.base_seed + self.episode
        self.frame, self.info = self.world.reset(seed=self.seed)
        if self.twin is not None:
            self.twin_frame, _ = self.twin.reset(seed=self.seed)
            for _ in range(self.world.context_frames - 1):  # a dream's context
                self.twin_frame = self.twin.step(0).frame
            self.twin_done = False
        self.scripted.reset(self.seed)
        self.episode_return, self.last_action, self.done = 0.0, 0, False
        if self.recorder is not None:
            self.recorder.begin(self.frame, self.info, self.seed)

    def step(self, human_action: int) -> StepResult | None:
        """One game tick: a step with the controller's action, or the next episode's reset."""
        if self.done:
            self.new_episode()
            return None
        action = self.scripted.act(self.frame, self.info) if self.use_scripted else human_action
        t0 = time.perf_counter()
        res = self.world.step(action)
        self.frame_ms = 1000 * (time.perf_counter() - t0)
        if self.twin is not None and not self.twin_done:
            r = self.twin.step(action)
            self.twin_frame, self.twin_done = r.frame, r.terminated or r.truncated
        self.frame, self.info, self.last_action = res.frame, res.info, int(action)
        self.episode_return += float(res.reward)
        if self.recorder is not None:
            self.recorder.add(action, res, self.controller)
        if self.trace is not None:
            self.trace.write(self.episode, int(action), res, self.controller)
        if res.terminated or res.truncated:
            self.done = True
            if self.recorder is not None:
                self.recorder.end_episode()
        return res

    @property
    def psnr(self) -> float | None:
        """PSNR (dB) between the real game and the dream on the current tick (a dream only)."""
        if self.twin_frame is None:
            return None
        from evaluation.metrics import psnr

        return min(psnr(self.frame, self.twin_frame), 99.0)  # identical frames show 99 (the metric caps at 100)

    def save_state(self) -> bool:
        """Snapshot the world (and a dream's real twin) in memory; False if it has no state."""
        if not self.world.supports_state:
            return False
        self.saved = {"world": self.world.get_state(), "frame": self.frame.copy(), "info": dict(self.info),
                      "return": self.episode_return, "done": self.done, "episode": self.episode,
                      "twin": None if self.twin is None else (self.twin.get_state(), self.twin_frame.copy(),
                                                             self.twin_done)}
        return True

    def load_state(self) -> bool:
        """Go back to the saved snapshot; False if there is none."""
        if self.saved is None:
            return False
        sv = self.saved
        self.world.set_state(sv["world"])
        self.frame, self.info = sv["frame"].copy(), dict(sv["info"])
        self.episode_return, self.done, self.episode = sv["return"], sv["done"], sv["episode"]
        self.seed = self.base_seed + self.episode
        if sv["twin"] is not None and self.twin is not None:
            self.twin.set_state(sv["twin"][0])
            self.twin_frame, self.twin_done = sv["twin"][1].copy(), sv["twin"][2]
        return True

    def toggle_scripted(self) -> str:
        self.use_scripted = not self.use_scripted
        if self.use_scripted:
            self.scripted.reset(self.seed)
        return self.controller

    def start_recording(self, root: Path) -> None:
        """Record from a fresh episode on (so every recorded episode starts at its reset)."""
        policy_info = {"name": "human", "scripted_toggle": self.scripted.describe()}
        self.recorder = EpisodeRecorder(root, self.world, self.world_name, policy_info)
        self.new_episode()

    def stop_recording(self) -> tuple[Path, dict[str, Any] | None]:
        assert self.recorder is not None
        recorder, self.recorder = self.recorder, None
        return recorder.root, recorder.close()

    def close(self) -> tuple[Path, dict[str, Any] | None] | None:
        """Finish the recording (if any) and the trace; the recording's folder and summary."""
        result = self.stop_recording() if self.recorder is not None else None
        if self.trace is not None:
            self.trace.close()
        if self.twin is not None:
            self.twin.close()
        return result
