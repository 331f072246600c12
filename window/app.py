"""The play window: play a World with keyboard or gamepad (``python play.py``).

By default it plays the dream (the shipped world model of the default game) with the real
game beside it on F8; ``--world adventure`` plays the real game.

A Pygame window whose OpenGL context (ModernGL) is also the worlds' context
(:func:`world.gl.set_context` runs before the world is made), so a world renders and the
window presents in one context. Each frame is uploaded as a texture and drawn with nearest
filtering at the largest integer scale that fits, letterboxed (crisp pixels, any window size).
Game time runs at the world's ``tick_rate`` steps per second, independent of the display.

Pieces, each small and replaceable:

- :class:`Bindings` / :class:`ActionInput`: keymap -> action; the most recently pressed held
  input (key, d-pad, stick, button) wins, a tap shorter than a tick still counts once,
  nothing held is NOOP.
- :class:`Session`: the world being played: episodes and their seeds (episode i from
  ``seed + i``), the controller (human or a scripted policy, toggled), recording, trace.
- :class:`EpisodeRecorder`: writes played episodes into a Minari dataset (:mod:`world.dataset`).
- :class:`Presenter` and :func:`layout_row`: textures drawn into window rectangles. More
  views (real and dreamed side by side) are more panes in the row; more HUD lines are more
  :data:`window.hud.HUD_FIELDS`; more keys are more entries in ``PlayWindow._controls``.
- :func:`run_headless`: no display (or ``--headless``): a scripted policy plays and an mp4
  is written, using the world's own EGL context and no window.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import re
import shutil
import sys
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from window.hud import HUD_FIELDS, Line, TextPanels, help_lines, hud_lines
from world.core import StepResult, World, WorldError
from world.dataset import ACTION_CONVENTION, DatasetError, DatasetWriter, atomic_write_json
from world.gl import GLUnavailableError, clear_context, no_display_reason, set_context
from world.io import parse_key_values
from world.keymap import Keymap, load_keymap
from world.paths import KEYMAPS, ensure_writable, shader_source
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
from world.video import VideoError, upscale_nearest, write_mp4

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

DEFAULT_WORLD = "dream"  # the shipped world model of the default game (see world.dream)
DEFAULT_WINDOW_SCALE = 10
DEFAULT_VIDEO_SCALE = 4
DEFAULT_HEADLESS_FRAMES = 300
DEFAULT_HEADLESS_OUT = Path("out/play_headless.mp4")
DEFAULT_SHOTS_DIR = Path("screenshots")
DEFAULT_RECORD_DIR = Path("data/datasets")
#: window controls used when the keymap does not set them ("hud" is not a keymap control yet)
DEFAULT_CONTROLS: dict[str, str] = {
    "reset": "r", "pause": "p", "step": ".", "help": "f1", "hud": "f2", "screenshot": "f12",
    "record": "f9", "quit": "escape", "faster": "]", "slower": "[", "policy": "tab",
    "view": "f8", "steps": "f5", "save": "f6", "load": "f7",
}
#: the play window's views of a dream (the real game runs beside it from the same start)
DREAM_VIEWS = ("dream", "side by side", "real")
DREAM_STEP_CHOICES = (1, 2, 4)
#: stick deflection below this is no input
DEAD_ZONE = 0.35
#: keys of the automatic keymap for worlds that ship none (e.g. many gym:<id> games)
AUTO_KEYS = {"UP": "up", "DOWN": "down", "LEFT": "left", "RIGHT": "right", "FIRE": "space"}
AUTO_NUMBER_KEYS = "1234567890"
TICK_RATE_LIMITS = (0.5, 480.0)
FPS_CAP = 60
USER_ERRORS = (WorldError, DatasetError, VideoError)


class PlayError(WorldError, ValueError):
    """Bad command-line input or keymap for the play window."""


class WindowError(RuntimeError):
    """SDL or OpenGL could not open the play window."""


# ---------------------------------------------------------------------- command line
@dataclass
class PlayConfig:
    world: str = DEFAULT_WORLD
    settings: dict[str, Any] = field(default_factory=dict)
    policy: str = "human"
    seed: int = 0
    scale: int | None = None
    keymap: str | None = None
    headless: bool = False
    frames: int = DEFAULT_HEADLESS_FRAMES
    out: Path = DEFAULT_HEADLESS_OUT
    shots_dir: Path = DEFAULT_SHOTS_DIR
    record_dir: Path = DEFAULT_RECORD_DIR
    script_keys: str | None = None
    trace: Path | None = None


def parse_setting(text: str) -> tuple[str, Any]:
    """``key=value`` -> (key, value), the value read as YAML (``2`` int, ``0.5`` float, ``room`` str)."""
    ((key, value),) = parse_key_values([text], "--setting", "--setting camera=room",
                                       error=argparse.ArgumentTypeError).items()
    return key, value


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return n


def _seed(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="play.py", description="Play a dreamstep world with keyboard or gamepad. Without a "
        "display it plays headless with a scripted policy and writes a video.",
        epilog="In the window press F1 for the keys.")
    p.add_argument("--world", default=DEFAULT_WORLD,
                   help="dream (default: the shipped world model of adventure), a built-in world "
                        "(adventure, maze3d) or gym:<gymnasium id>")
    p.add_argument("--setting", action="append", type=parse_setting, default=[],
                   metavar="KEY=VALUE", help="world setting, repeatable (e.g. camera=room)")
    p.add_argument("--policy", choices=("human", "random", "explorer"), default="human",
                   help="who plays; a non-human policy plays itself (tab toggles in the window)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the first episode (then +1 each)")
    p.add_argument("--scale", type=_positive_int, default=None,
                   help=f"window size as a multiple of the frame (default {DEFAULT_WINDOW_SCALE}, "
                        f"fitted to the screen); headless: video upscale (default {DEFAULT_VIDEO_SCALE})")
    p.add_argument("--checkpoint", default=None, help="play the dream of this world model (a checkpoint, "
                   "a .safetensors with its card, or a trainer.pipeline run folder); implies --world dream")
    p.add_argument("--keymap", default=None, help="keymap name in assets/keymaps or a YAML file")
    p.add_argument("--shots-dir", type=Path, default=DEFAULT_SHOTS_DIR, help="screenshot folder")
    p.add_argument("--record-dir", type=Path, default=DEFAULT_RECORD_DIR,
                   help="folder that receives the datasets the record key writes")
    g = p.add_argument_group("headless")
    g.add_argument("--headless", action="store_true", help="no window: play with a scripted policy "
                   "(--policy, explorer if human) and write a video")
    g.add_argument("--frames", type=_positive_int, default=DEFAULT_HEADLESS_FRAMES,
                   help="frames in the headless video")
    g.add_argument("--out", type=Path, default=DEFAULT_HEADLESS_OUT, help="headless video (.mp4)")
    t = p.add_argument_group("automation")
    t.add_argument("--script-keys", default=None, metavar="SCRIPT",
                   help="press keys tick by tick, e.g. 'right*10,wait*3,f12,escape' (key held "
                        "for N game ticks; 'wait' presses nothing)")
    t.add_argument("--trace", type=Path, default=None,
                   help="write one JSON line per game step (action, reward, info) to this file")
    return p


def parse_args(argv: Sequence[str] | None = None) -> PlayConfig:
    a = build_parser().parse_args(argv)
    settings = dict(a.setting)
    if a.checkpoint is not None:
        if a.world not in (DEFAULT_WORLD, "dream"):
            raise PlayError(f"--checkpoint plays a dream; it does not go with --world {a.world!r}")
        a.world, settings["checkpoint"] = "dream", a.checkpoint
    if a.script_keys is not None:
        parse_script(a.script_keys)  # every key name checked now, in the window and headless alike
    if a.trace:
        ensure_writable(a.trace, "the --trace file")
    return PlayConfig(world=a.world, settings=settings, policy=a.policy, seed=a.seed,
                      scale=a.scale, keymap=a.keymap, headless=a.headless, frames=a.frames,
                      out=a.out, shots_dir=a.shots_dir, record_dir=a.record_dir,
                      script_keys=a.script_keys, trace=a.trace)


def create_world(cfg: PlayConfig) -> World:
    """``make_world`` with a clear error when the world needs a package that is missing."""
    from world import make_world

    try:
        return make_world(cfg.world, **cfg.settings)
    except ModuleNotFoundError as e:
        raise PlayError(f"world {cfg.world!r} needs the Python module {e.name!r}, which is not "
                        f"installed (for gym:<id> games: pip install -e '.[games]')") from e


# ---------------------------------------------------------------------- keymap and input
def key_code(name: str, where: str) -> int:
    """The pygame key code of a key name, or an error naming the bad name."""
    import pygame

    with warnings.catch_warnings():  # key names resolve without pygame.init(); silence its warning
        warnings.simplefilter("ignore")
        try:
            return pygame.key.key_code(name)
        except ValueError:
            raise PlayError(
                f"{where}: unknown key name {name!r}; use names as pygame.key.name() prints them, "
                f"e.g. 'up', 'w', 'space', 'return', 'tab', 'escape', 'f1', '.', '['") from None


def auto_keymap(action_names: Sequence[str]) -> Keymap:
    """A keymap for a world that ships none: arrows/space by action name, and number keys
    1, 2, ... for actions 1, 2, ... (the first ten)."""
    keys = {AUTO_KEYS[a]: a for a in action_names if a in AUTO_KEYS}
    keys.update({k: a for k, a in zip(AUTO_NUMBER_KEYS, action_names[1:])})
    return Keymap("auto", keys)


def resolve_keymap(world: World, override: str | None) -> Keymap:
    """``--keymap`` if given, else the world's own ``keymap()`` (the gym adapter resolves its
    generic keymap per game), else its shipped keymap file, else :func:`auto_keymap`."""
    if override is not None:
        return load_keymap(override, world.action_names)
    own = getattr(world, "keymap", None)
    if callable(own):
        return own()
    if (KEYMAPS / f"{world.keymap_name}.yaml").is_file():
        return load_keymap(world.keymap_name, world.action_names)
    return auto_keymap(world.action_names)


@dataclass
class Bindings:
    """A keymap resolved to action indices, plus the window controls by key name."""

    keys: dict[str, int]
    hat: dict[str, int]
    axes: dict[int, tuple[int, int]]
    buttons: dict[int, int]
    controls: dict[str, str]  # key name -> control name
    keymap: Keymap

    @classmethod
    def from_keymap(cls, keymap: Keymap, action_names: Sequence[str]) -> Bindings:
        index = {a: i for i, a in enumerate(action_names)}
        where = f"keymap {keymap.name!r}"
        for name in keymap.keys:
            key_code(name, where)
        controls = {**DEFAULT_CONTROLS, **keymap.controls}
        by_key: dict[str, str] = {}
        for control, key in controls.items():
            key_code(key, f"{where} control {control!r}")
            if key in by_key:
                raise PlayError(f"{where}: key {key!r} is bound to both controls "
                                f"{by_key[key]!r} and {control!r}; give each its own key")
            if key in keymap.keys:
                raise PlayError(f"{where}: key {key!r} is bound to action {keymap.keys[key]!r} "
                                f"and to control {control!r}; give each its own key")
            by_key[key] = control
        return cls(keys={k: index[a] for k, a in keymap.keys.items()},
                   hat={d: index[a] for d, a in keymap.hat.items()},
                   axes={i: (index[n], index[p]) for i, (n, p) in keymap.axes.items()},
                   buttons={b: index[a] for b, a in keymap.buttons.items()},
                   controls=by_key, keymap=keymap)

    def control_keys(self) -> dict[str, str]:
        """control name -> key name."""
        return {c: k for k, c in self.controls.items()}

    def help(self) -> list[Line]:
        """The help overlay's lines for these bindings."""
        km = self.keymap
        action_keys: dict[str, list[str]] = {}
        for key, action in km.keys.items():
            action_keys.setdefault(action, []).append(key)
        pad = []
        if km.hat:
            pad.append("d-pad: " + ", ".join(f"{d} {a}" for d, a in km.hat.items()))
        pad += [f"stick axis {i}: {n} / {p}" for i, (n, p) in km.axes.items()]
        pad += [f"button {b}: {a}" for b, a in km.buttons.items()]
        return help_lines(action_keys, pad, self.control_keys())


def chord_combiner(world: World) -> Callable[[list[int]], int] | None:
    """For worlds that combine held inputs into one action (the gym adapter's
    ``action_for_pressed``: UP + RIGHT + FIRE -> UPRIGHTFIRE), a function from the held
    actions (in press order) to that action, falling back to the most recent one."""
    combine = getattr(world, "action_for_pressed", None)
    if not callable(combine):
        return None
    names = world.action_names

    def chord(held: list[int]) -> int:
        return int(combine([names[i] for i in held])) or held[-1]

    return chord


class ActionInput:
    """The action asked for by held inputs: the most recently pressed one wins (or, with
    ``combine``, the action the world makes of all of them); a press released before the
    next tick still counts for that tick; nothing held = NOOP (0).

    Inputs are named sources ("key:right", "pad0:hat:up", "pad0:axis1", ...), so keys and
    gamepads share one press order.
    """

    def __init__(self, combine: Callable[[list[int]], int] | None = None) -> None:
        self._held: dict[str, int] = {}  # source -> action, in press order
        self._tap: int | None = None
        self._combine = combine

    def press(self, source: str, action: int) -> None:
        self._held.pop(source, None)
        self._held[source] = action
        self._tap = action

    def release(self, source: str) -> None:
        self._held.pop(source, None)

    def set(self, source: str, action: int | None) -> None:
        """Level-style inputs (d-pad, stick): press on a change of action, release on None."""
        if action is None:
            self.release(source)
        elif self._held.get(source) != action:
            self.press(source, action)

    def release_prefix(self, prefix: str) -> None:
        for source in [s for s in self._held if s.startswith(prefix)]:
            self.release(source)

    def clear(self) -> None:
        self._held.clear()
        self._tap = None

    def current(self) -> int:
        if self._held:
            held = list(self._held.values())
            return self._combine(held) if self._combine else held[-1]
        return self._tap or 0

    def end_tick(self) -> None:
        self._tap = None


def axis_action(value: float, pair: tuple[int, int], dead_zone: float = DEAD_ZONE) -> int | None:
    """The action of a stick axis position: [negative, positive] outside the dead zone."""
    if value <= -dead_zone:
        return pair[0]
    if value >= dead_zone:
        return pair[1]
    return None


def hat_actions(value: tuple[int, int], hat: dict[str, int]) -> dict[str, int | None]:
    """d-pad direction -> its action when pushed, else None (pygame's hat y is +1 for up)."""
    x, y = value
    pushed = {"left": x < 0, "right": x > 0, "up": y > 0, "down": y < 0}
    return {d: (hat[d] if on else None) for d, on in pushed.items() if d in hat}


# ---------------------------------------------------------------------- scripted keys
def parse_script(text: str) -> list[tuple[str | None, int]]:
    """'right*10,wait*2,f12' -> [("right", 10), (None, 2), ("f12", 1)]; names are checked."""
    steps: list[tuple[str | None, int]] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        name, _, count = token.partition("*")
        name = name.strip().lower()
        if count and (not count.strip().isdigit() or int(count) < 1):
            raise PlayError(f"--script-keys: {token!r} needs a positive count after '*', e.g. right*10")
        n = int(count) if count else 1
        if name != "wait":
            key_code(name, "--script-keys")
        steps.append((None if name == "wait" else name, n))
    if not steps:
        raise PlayError(f"--script-keys is empty ({text!r}); e.g. 'right*10,f12,escape'")
    return steps


def script_timeline(steps: Sequence[tuple[str | None, int]]) -> dict[int, list[tuple[bool, str]]]:
    """tick -> [(pressed?, key)]: each key goes down at its tick and up ``count`` ticks later."""
    events: dict[int, list[tuple[bool, str]]] = {}
    t = 0
    for key, count in steps:
        if key is not None:
            events.setdefault(t, []).append((True, key))
            events.setdefault(t + count, []).append((False, key))
        t += count
    return events


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


# ---------------------------------------------------------------------- drawing
class Rect(NamedTuple):
    """A window rectangle in pixels, origin at the top left."""

    x: int
    y: int
    w: int
    h: int


def fit_scale(area: tuple[float, float], image: tuple[int, int]) -> float:
    """The largest integer scale of ``image`` (w, h) that fits ``area``, or the exact fit
    when even 1x does not fit."""
    s = min(area[0] / image[0], area[1] / image[1])
    return float(math.floor(s)) if s >= 1 else s


def layout_row(window: tuple[int, int], images: Sequence[tuple[int, int]], gap: int = 8) -> list[Rect]:
    """Rectangles for images (w, h) side by side, one common scale, centred (letterboxed)."""
    ww, wh = window
    n = len(images)
    cell_w = (ww - gap * (n - 1)) / n
    s = min(fit_scale((cell_w, wh), im) for im in images)
    sizes = [(max(1, int(w * s)), max(1, int(h * s))) for w, h in images]
    x = (ww - sum(w for w, _ in sizes) - gap * (n - 1)) // 2
    rects = []
    for w, h in sizes:
        rects.append(Rect(x, (wh - h) // 2, w, h))
        x += w + gap
    return rects


class Presenter:
    """Draws named textures into window rectangles (nearest filtering, alpha blended)."""

    def __init__(self, ctx: Any) -> None:
        import moderngl

        self.ctx, self._mgl = ctx, moderngl
        self.prog = ctx.program(vertex_shader=shader_source("present.vert"),
                                fragment_shader=shader_source("present.frag"))
        self.vbo = ctx.buffer(np.array([0, 0, 1, 0, 0, 1, 1, 1], "f4").tobytes())
        self.vao = ctx.vertex_array(self.prog, [(self.vbo, "2f", "in_corner")])
        self.textures: dict[str, Any] = {}

    def upload(self, name: str, image: np.ndarray) -> None:
        """Set texture ``name`` to an (H, W, 3|4) uint8 image (row 0 at the top)."""
        h, w, c = image.shape
        tex = self.textures.get(name)
        if tex is None or tex.size != (w, h) or tex.components != c:
            if tex is not None:
                tex.release()
            tex = self.ctx.texture((w, h), c, alignment=1)
            tex.filter = (self._mgl.NEAREST, self._mgl.NEAREST)
            tex.repeat_x = tex.repeat_y = False
            self.textures[name] = tex
        tex.write(np.ascontiguousarray(image), alignment=1)

    def draw(self, window: tuple[int, int], layers: Sequence[tuple[str, Rect]],
             background: tuple[float, float, float] = (0.06, 0.06, 0.07)) -> None:
        """Clear the window and draw each (texture name, rect) in order."""
        ctx, (ww, wh) = self.ctx, window
        ctx.screen.use()
        ctx.viewport = (0, 0, ww, wh)
        ctx.scissor = None
        ctx.disable(self._mgl.DEPTH_TEST | self._mgl.CULL_FACE)
        ctx.enable(self._mgl.BLEND)
        ctx.blend_func = self._mgl.SRC_ALPHA, self._mgl.ONE_MINUS_SRC_ALPHA
        ctx.clear(*background)
        for name, r in layers:
            self.prog["u_rect"].value = (2 * r.x / ww - 1, 1 - 2 * (r.y + r.h) / wh,
                                         2 * (r.x + r.w) / ww - 1, 1 - 2 * r.y / wh)
            self.textures[name].use(0)
            self.vao.render(self._mgl.TRIANGLE_STRIP)

    def read_window(self, window: tuple[int, int]) -> np.ndarray:
        """(H, W, 3) uint8 of what was drawn (the back buffer, before the flip), top row first."""
        ww, wh = window
        raw = self.ctx.screen.read(viewport=(0, 0, ww, wh), components=3, alignment=1)
        return np.frombuffer(raw, np.uint8).reshape(wh, ww, 3)[::-1].copy()

    def release(self) -> None:
        for tex in self.textures.values():
            tex.release()
        for obj in (self.vao, self.vbo, self.prog):
            obj.release()


# ---------------------------------------------------------------------- the window
def _window_flags() -> int:
    import pygame

    return pygame.OPENGL | pygame.DOUBLEBUF | pygame.RESIZABLE


def open_window() -> Any:
    """Open a hidden OpenGL 3.3 core window and return its ModernGL context."""
    import moderngl
    import pygame

    try:
        pygame.display.init()
        for attr, value in ((pygame.GL_CONTEXT_MAJOR_VERSION, 3),
                            (pygame.GL_CONTEXT_MINOR_VERSION, 3),
                            (pygame.GL_CONTEXT_PROFILE_MASK, pygame.GL_CONTEXT_PROFILE_CORE)):
            pygame.display.gl_set_attribute(attr, value)
        if sys.platform == "darwin":
            pygame.display.gl_set_attribute(pygame.GL_CONTEXT_FORWARD_COMPATIBLE_FLAG, True)
        pygame.display.set_mode((320, 240), _window_flags() | pygame.HIDDEN)
        return moderngl.create_context(require=330)
    except Exception as e:  # noqa: BLE001 - pygame.error, moderngl.Error: report and go headless
        pygame.display.quit()
        raise WindowError(f"SDL/OpenGL could not open a window: {e}") from e


def initial_window_size(frame_shape: tuple[int, ...], scale: int | None) -> tuple[int, int]:
    """Frame size times ``scale`` (default :data:`DEFAULT_WINDOW_SCALE`), fitted to the screen."""
    import pygame

    h, w = frame_shape[0], frame_shape[1]
    desktop = pygame.display.get_desktop_sizes()[0]
    fit = max(1, int(min(0.9 * desktop[0] / w, 0.9 * desktop[1] / h)))
    s = scale if scale is not None else min(DEFAULT_WINDOW_SCALE, fit)
    return w * s, h * s


class PlayWindow:
    """The interactive loop: events -> input and controls, game ticks, drawing, screenshots."""

    def __init__(self, cfg: PlayConfig, ctx: Any, session: Session, bindings: Bindings,
                 script: list[tuple[str | None, int]] | None) -> None:
        import pygame

        self.pg, self.cfg, self.session, self.bindings = pygame, cfg, session, bindings
        self.names = session.world.action_names
        self.presenter = Presenter(ctx)
        self.panels = TextPanels()
        self.input = ActionInput(chord_combiner(session.world))
        self.ticks = TickClock(session.world.tick_rate)
        self.fps, self.steps = RateMeter(), RateMeter()
        self.clock = pygame.time.Clock()
        self.timeline = script_timeline(script) if script else {}
        self.tick_index = 0
        self.paused, self.show_hud, self.show_help, self.running = False, True, False, True
        self.screenshot_due = False
        self.message, self.message_until = "", 0.0
        self.joysticks: dict[int, Any] = {}
        self._controls = {
            "reset": self._reset, "pause": self._pause, "step": self._single_step,
            "help": self._help, "hud": self._hud, "screenshot": self._screenshot,
            "record": self._record, "quit": self._quit, "faster": self._faster,
            "slower": self._slower, "policy": self._policy, "view": self._view, "steps": self._sampling_steps,
            "save": self._save, "load": self._load,
        }
        self.view = DREAM_VIEWS[0] if session.twin is not None else None
        self.latency_ms: float | None = None
        self._shown_since: float | None = None  # when the newest frame's tick began
        pygame.joystick.init()
        size = initial_window_size(session.world.frame_shape, cfg.scale)
        pygame.display.set_mode(size, _window_flags() | pygame.SHOWN)
        pygame.display.set_caption(f"dreamstep - {cfg.world}")
        keys = self.bindings.control_keys()
        self.notify(f"{cfg.world}: {keys['help']} help, {keys['quit']} quits")

    # ------------------------------------------------------------ loop
    def run(self) -> None:
        while self.running:
            n = self.ticks.advance(self.clock.tick(FPS_CAP) / 1000)
            if n == 0:
                self.handle_events()
            for _ in range(n):
                self._post_script_events()
                self.handle_events()
                if not self.running:
                    break
                if not self.paused:
                    self.game_step()
            if self.running:
                self.draw()
        if self.screenshot_due:  # asked for in the same tick as quit (a slow world runs several ticks a frame)
            self.draw()

    def game_step(self) -> None:
        t0 = time.perf_counter()
        if self.session.step(self.input.current()) is not None:
            self.steps.tick()
            self._shown_since = t0
        self.input.end_tick()

    def _post_script_events(self) -> None:
        pg = self.pg
        for down, key in self.timeline.pop(self.tick_index, []):
            code = key_code(key, "--script-keys")
            pg.event.post(pg.event.Event(pg.KEYDOWN if down else pg.KEYUP, key=code, mod=0,
                                         unicode="", scancode=0))
        self.tick_index += 1

    # ------------------------------------------------------------ events
    def handle_events(self) -> None:
        pg = self.pg
        for e in pg.event.get():
            if e.type == pg.QUIT:
                self.running = False
            elif e.type == pg.KEYDOWN:
                self._key_down(pg.key.name(e.key))
            elif e.type == pg.KEYUP:
                self.input.release(f"key:{pg.key.name(e.key)}")
            elif e.type == pg.WINDOWFOCUSLOST:
                self.input.clear()
            elif e.type == pg.JOYDEVICEADDED:
                joy = pg.joystick.Joystick(e.device_index)
                self.joysticks[joy.get_instance_id()] = joy
                self.notify(f"gamepad connected: {joy.get_name()}")
            elif e.type == pg.JOYDEVICEREMOVED:
                self.joysticks.pop(e.instance_id, None)
                self.input.release_prefix(f"pad{e.instance_id}:")
            elif e.type == pg.JOYHATMOTION:
                for d, action in hat_actions(e.value, self.bindings.hat).items():
                    self.input.set(f"pad{e.instance_id}:hat{e.hat}:{d}", action)
            elif e.type == pg.JOYAXISMOTION and e.axis in self.bindings.axes:
                self.input.set(f"pad{e.instance_id}:axis{e.axis}",
                               axis_action(e.value, self.bindings.axes[e.axis]))
            elif e.type in (pg.JOYBUTTONDOWN, pg.JOYBUTTONUP) and e.button in self.bindings.buttons:
                source = f"pad{e.instance_id}:button{e.button}"
                if e.type == pg.JOYBUTTONDOWN:
                    self.input.press(source, self.bindings.buttons[e.button])
                else:
                    self.input.release(source)

    def _key_down(self, name: str) -> None:
        control = self.bindings.controls.get(name)
        if control is not None:
            self._controls[control]()
        elif name in self.bindings.keys:
            self.input.press(f"key:{name}", self.bindings.keys[name])

    def notify(self, text: str, hud_text: str | None = None, seconds: float = 3.0) -> None:
        """Print ``text`` and show it (or the shorter ``hud_text``) in the HUD for a while."""
        self.message, self.message_until = hud_text or text, time.perf_counter() + seconds
        print(f"play.py: {text}", flush=True)

    # ------------------------------------------------------------ controls
    def _reset(self) -> None:
        self.session.new_episode()

    def _pause(self) -> None:
        self.paused = not self.paused

    def _single_step(self) -> None:
        if self.paused:
            self.game_step()

    def _help(self) -> None:
        self.show_help = not self.show_help

    def _hud(self) -> None:
        self.show_hud = not self.show_hud

    def _screenshot(self) -> None:
        self.screenshot_due = True

    def _quit(self) -> None:
        self.running = False

    def _faster(self) -> None:
        self.ticks.rate *= math.sqrt(2)
        self.notify(f"tick rate {self.ticks.rate:.3g} steps/s")

    def _slower(self) -> None:
        self.ticks.rate /= math.sqrt(2)
        self.notify(f"tick rate {self.ticks.rate:.3g} steps/s")

    def _policy(self) -> None:
        self.notify(f"playing: {self.session.toggle_scripted()}")

    def _record(self) -> None:
        if self.session.recorder is None:
            root = self.cfg.record_dir / dataset_name(self.cfg.world)
            self.session.start_recording(root)
            self.notify(f"recording to {root} (new episode started)", "recording started")
        else:
            root, stats = self.session.stop_recording()
            self.notify(self._recording_summary(root, stats), "recording saved" if stats
                        else "recording stopped: nothing saved")

    def _view(self) -> None:
        if self.view is None:
            self.notify("views: only a dream has a real game beside it (play.py --world dream)")
            return
        self.view = DREAM_VIEWS[(DREAM_VIEWS.index(self.view) + 1) % len(DREAM_VIEWS)]
        self.notify(f"view: {self.view}")

    def _sampling_steps(self) -> None:
        world = self.session.world
        now = world.sampling_steps
        if now is None:
            self.notify("sampling steps: only a dream samples (play.py --world dream)")
            return
        nxt = next((k for k in DREAM_STEP_CHOICES if k > now), DREAM_STEP_CHOICES[0])
        world.sampling_steps = nxt
        self.notify(f"sampling steps: {world.sampler_summary}")

    def _save(self) -> None:
        self.notify("state saved" if self.session.save_state() else "this world cannot save its state")

    def _load(self) -> None:
        self.notify("state loaded" if self.session.load_state() else "no saved state yet (save first)")

    @staticmethod
    def _recording_summary(root: Path, stats: dict[str, Any] | None) -> str:
        if stats is None:
            return "recording stopped: no steps played, nothing saved"
        return f"recorded {stats['episodes']} episodes ({stats['steps']} steps) into {root}"

    # ------------------------------------------------------------ drawing
    def status(self) -> dict[str, Any]:
        """What the HUD shows (see :data:`window.hud.HUD_FIELDS`)."""
        s, rec = self.session, self.session.recorder
        return {
            "world": self.cfg.world, "episode": s.episode, "seed": s.seed,
            "fps": self.fps.rate(), "steps_per_s": self.steps.rate(), "tick_rate": self.ticks.rate,
            "step": s.info.get("step", 0), "score": s.score,
            "action": self.names[s.last_action],
            "effective_action": self.names[int(s.info.get("effective_action", s.last_action))],
            "controller": s.controller, "paused": self.paused,
            "recording": rec.root.name if rec is not None else None,
            "recorded_episodes": rec.episodes_saved if rec is not None else 0,
            "message": self.message if time.perf_counter() < self.message_until else "",
            "frame_ms": s.frame_ms, "latency_ms": self.latency_ms, "view": self.view,
            "sampler": s.world.sampler_summary,
            "psnr": s.psnr,
        }

    def draw(self) -> None:
        self.fps.tick()
        window = self.pg.display.get_window_size()
        s = self.session
        shown = {"dream": [s.frame], "real": [s.twin_frame], "side by side": [s.twin_frame, s.frame]
                 }.get(self.view or "", [s.frame])
        layers = []
        rects = layout_row(window, [(f.shape[1], f.shape[0]) for f in shown])
        for i, (f, r) in enumerate(zip(shown, rects)):
            self.presenter.upload(f"frame{i}", f)
            layers.append((f"frame{i}", r))
        font_px = max(13, min(26, window[1] // 34))
        margin = max(4, font_px // 2)
        if self.show_hud:
            hud = self.panels.render(hud_lines(self.status(), HUD_FIELDS), font_px)
            self.presenter.upload("hud", hud)
            layers.append(("hud", Rect(margin, margin, hud.shape[1], hud.shape[0])))
        if self.show_help:
            panel = self.panels.render(self.bindings.help(), font_px)
            self.presenter.upload("help", panel)
            h, w = panel.shape[:2]
            layers.append(("help", Rect((window[0] - w) // 2, (window[1] - h) // 2, w, h)))
        self.presenter.draw(window, layers)
        if self.screenshot_due:
            self.screenshot_due = False
            self._save_screenshot(self.presenter.read_window(window))
        self.pg.display.flip()
        if self._shown_since is not None:  # the newest frame is on screen now
            self.latency_ms, self._shown_since = 1000 * (time.perf_counter() - self._shown_since), None

    def _save_screenshot(self, image: np.ndarray) -> None:
        from PIL import Image

        s = self.session
        name = re.sub(r"[^-_A-Za-z0-9]+", "-", self.cfg.world)
        path = self.cfg.shots_dir / (f"{name}-seed{s.seed}-step{s.info.get('step', 0):05d}-"
                                     f"{time.strftime('%Y%m%d-%H%M%S')}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        self.notify(f"screenshot saved: {path}", f"screenshot: {path.name}")

    def close(self) -> None:
        result = self.session.close()
        if result is not None:
            self.notify(self._recording_summary(*result))
        self.presenter.release()


def run_window(cfg: PlayConfig, ctx: Any) -> int:
    """Play in the window whose context is ``ctx`` (the world is made inside that context)."""
    import pygame

    set_context(ctx)
    try:
        with create_world(cfg) as world:  # closed (its GL objects freed) before the window
            bindings = Bindings.from_keymap(resolve_keymap(world, cfg.keymap), world.action_names)
            script = parse_script(cfg.script_keys) if cfg.script_keys else None
            session = Session(world, cfg.world, cfg.seed,
                              scripted_policy(_scripted_name(cfg.policy), world, cfg.seed),
                              use_scripted=cfg.policy != "human",
                              trace=TraceWriter(cfg.trace) if cfg.trace else None, twin=dream_twin(world))
            app = PlayWindow(cfg, ctx, session, bindings, script)
            try:
                app.run()
            finally:
                app.close()
    finally:
        clear_context()  # the window's context dies with it: later worlds get a context of their own
        pygame.display.quit()
    return 0


def dream_twin(world: World) -> World | None:
    """For a dream: its real game with the settings it learned (to play side by side)."""
    return world.real_twin()


# ---------------------------------------------------------------------- headless
def _scripted_name(policy: str) -> str:
    """The scripted policy for ``--policy`` (the human's stand-in is the explorer)."""
    return "explorer" if policy == "human" else policy


def run_headless(cfg: PlayConfig, reason: str | None) -> int:
    """Play ``cfg.frames`` frames with a scripted policy and write them to ``cfg.out`` (mp4)."""
    ensure_writable(cfg.out, "the headless video (--out)")  # before the world is made and played
    world = create_world(cfg)
    with world:
        Bindings.from_keymap(resolve_keymap(world, cfg.keymap), world.action_names)  # validate
        policy = scripted_policy(_scripted_name(cfg.policy), world, cfg.seed)
        session = Session(world, cfg.world, cfg.seed, policy, use_scripted=True,
                          trace=TraceWriter(cfg.trace) if cfg.trace else None)

        def frames() -> Iterator[np.ndarray]:
            yield session.frame
            for _ in range(cfg.frames - 1):
                session.step(0)
                yield session.frame

        scale = cfg.scale or DEFAULT_VIDEO_SCALE
        try:
            n = write_mp4(cfg.out, frames(), fps=world.tick_rate, scale=scale)
        finally:
            session.close()
        h, w = upscale_nearest(session.frame, scale).shape[:2]
        controller = session.controller
    why = f"no display ({reason}), so " if reason else ""
    print(f"play.py: {why}played headless: {n} frames of {cfg.world} (seed {cfg.seed}, "
          f"{session.episode + 1} episode(s)) by the {controller} policy.\n"
          f"play.py: video written to {cfg.out.resolve()} ({w}x{h}, {world.tick_rate:g} fps)",
          flush=True)
    return 0


# ---------------------------------------------------------------------- entry
def main(argv: Sequence[str] | None = None) -> int:
    """``play.py``: a window if a display is there, else headless (see the module docstring)."""
    try:
        cfg = parse_args(argv)
        if cfg.headless:
            return run_headless(cfg, None)
        reason = no_display_reason()
        if reason is None:
            try:
                ctx = open_window()
            except WindowError as e:
                reason = str(e)
            else:
                return run_window(cfg, ctx)
        return run_headless(cfg, reason)
    except USER_ERRORS as e:
        print(f"play.py: error: {e}", file=sys.stderr)
        return 2
    except GLUnavailableError as e:
        print(f"play.py: error: {e}", file=sys.stderr)
        return 1
