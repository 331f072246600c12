"""The play window: play a World with keyboard or gamepad (``python play.py``).

By default it plays the dream (the shipped world model of the default game) with the real
game beside it on F8; ``--world adventure`` plays the real game.

A Pygame window whose OpenGL context (ModernGL) is also the worlds' context
(:func:`world.gl.set_context` runs before the world is made), so a world renders and the
window presents in one context. Each frame is uploaded as a texture and drawn with nearest
filtering at the largest integer scale that fits, letterboxed (crisp pixels, any window size).
Game time runs at the world's ``tick_rate`` steps per second, independent of the display.

Pieces, each small and replaceable (one module each: :mod:`window.input`, :mod:`window.session`,
:mod:`window.presenter`, :mod:`window.hud`; this module is the command line, the window and the
headless run):

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
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from window.hud import HUD_FIELDS, TextPanels, hud_lines
from window.input import (
    ActionInput,
    Bindings,
    PlayError,
    WindowError,
    axis_action,
    chord_combiner,
    hat_actions,
    key_code,
    parse_script,
    resolve_keymap,
    script_timeline,
)
from window.presenter import Presenter, Rect, layout_row
from window.session import RateMeter, Session, TickClock, TraceWriter, dataset_name, scripted_policy
from world.core import World, WorldError
from world.dataset import DatasetError
from world.gl import GLUnavailableError, clear_context, no_display_reason, set_context
from world.io import parse_key_values
from world.paths import ensure_writable
from world.video import VideoError, upscale_nearest, write_mp4

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

DEFAULT_WORLD = "dream"  # the shipped world model of the default game (see world.dream)
DEFAULT_WINDOW_SCALE = 10
DEFAULT_VIDEO_SCALE = 4
DEFAULT_HEADLESS_FRAMES = 300
DEFAULT_HEADLESS_OUT = Path("out/play_headless.mp4")
DEFAULT_SHOTS_DIR = Path("screenshots")
DEFAULT_RECORD_DIR = Path("data/datasets")
#: the play window's views of a dream (the real game runs beside it from the same start)
DREAM_VIEWS = ("dream", "side by side", "real")
DREAM_STEP_CHOICES = (1, 2, 4)
FPS_CAP = 60
USER_ERRORS = (WorldError, DatasetError, VideoError)


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
