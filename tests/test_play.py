"""play.py: headless video, input mapping, recording, and a real window under Xvfb."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

import play
from window.input import (
    ActionInput,
    Bindings,
    PlayError,
    auto_keymap,
    axis_action,
    hat_actions,
    parse_script,
    resolve_keymap,
    script_timeline,
)
from window.presenter import Rect, fit_scale, layout_row
from window.session import Session, TickClock, scripted_policy
from world import make_world
from world.dataset import load_episodes
from world.keymap import Keymap
from world.paths import ROOT
from world.video import upscale_nearest

NOOP, UP, DOWN, LEFT, RIGHT = range(5)


def count_frames(path: Path) -> tuple[int, tuple[int, int]]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    return sum(1 for _ in reader), tuple(meta["size"])


# ---------------------------------------------------------------------- headless
def test_headless_run_writes_an_mp4_with_n_frames(tmp_path: Path, capsys) -> None:
    out = tmp_path / "v.mp4"
    assert play.main(["--headless", "--frames", "12", "--out", str(out), "--seed", "3"]) == 0
    assert out.stat().st_size > 0
    assert count_frames(out) == (12, (256, 256))  # 64x64 frames upscaled 4x
    printed = capsys.readouterr().out
    assert "played headless" in printed and str(out.resolve()) in printed
    assert "no display" not in printed  # asked for, not a fallback


def test_without_a_display_it_plays_headless_and_says_where(tmp_path: Path, monkeypatch,
                                                            capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    assert play.main(["--world", "maze3d", "--frames", "5", "--scale", "2"]) == 0
    out = tmp_path / "out" / "play_headless.mp4"
    assert count_frames(out) == (5, (128, 128))
    printed = capsys.readouterr().out
    assert "no display (SDL_VIDEODRIVER=dummy" in printed and "explorer policy" in printed
    assert str(out) in printed


@pytest.mark.parametrize("args, names", [
    (["--world", "nope"], ["'nope'", "adventure", "maze3d", "gym:"]),
    (["--world", "adventure", "--setting", "colour=red"], ["'colour'", "camera", "speed"]),
    (["--setting", "stepz=2"], ["'stepz'", "checkpoint", "sampler"]),  # the default: the dream
    (["--keymap", "nope"], ["'nope'", "adventure", "maze3d"]),
])
def test_unknown_world_setting_or_keymap_names_the_valid_ones(args, names, tmp_path: Path,
                                                              capsys) -> None:
    out = tmp_path / "never.mp4"
    assert play.main(["--headless", "--frames", "2", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("play.py: error: ")
    for name in names:
        assert name in err
    assert not out.exists()


def test_keymap_with_an_unknown_key_name_is_an_error(tmp_path: Path, capsys) -> None:
    km = tmp_path / "mine.yaml"
    km.write_text("keys:\n  uparrow: UP\n")
    assert play.main(["--headless", "--frames", "2", "--out", str(tmp_path / "v.mp4"),
                      "--keymap", str(km)]) == 2
    err = capsys.readouterr().err
    assert "'uparrow'" in err and "pygame.key.name()" in err


def test_malformed_setting_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        play.main(["--setting", "camera"])
    assert e.value.code == 2
    assert "key=value" in capsys.readouterr().err


# ---------------------------------------------------------------------- input
def test_most_recent_held_input_wins_and_release_falls_back() -> None:
    inp = ActionInput()
    assert inp.current() == NOOP
    inp.press("key:right", RIGHT)
    inp.press("pad0:hat0:up", UP)
    assert inp.current() == UP
    inp.release("pad0:hat0:up")
    assert inp.current() == RIGHT
    inp.press("key:right", RIGHT)  # pressing again makes it the most recent
    inp.release("key:right")
    inp.end_tick()
    assert inp.current() == NOOP


def test_a_tap_between_ticks_counts_once() -> None:
    inp = ActionInput()
    inp.press("key:left", LEFT)
    inp.release("key:left")
    assert inp.current() == LEFT
    inp.end_tick()
    assert inp.current() == NOOP


def test_level_inputs_press_only_on_change() -> None:
    inp = ActionInput()
    inp.set("pad0:axis0", RIGHT)
    inp.press("key:up", UP)
    inp.set("pad0:axis0", RIGHT)  # the same stick position again: no new press
    assert inp.current() == UP
    inp.set("pad0:axis0", LEFT)  # a new direction is a new press
    assert inp.current() == LEFT
    inp.release_prefix("pad0:")
    assert inp.current() == UP


def test_chord_combiner_input() -> None:
    inp = ActionInput(combine=lambda held: 7 if sorted(held) == [1, 2] else held[-1])
    inp.press("key:a", 1)
    inp.press("key:b", 2)
    assert inp.current() == 7
    inp.release("key:a")
    assert inp.current() == 2


def test_gamepad_dead_zone_and_hat() -> None:
    pair = (LEFT, RIGHT)
    assert axis_action(0.2, pair) is None and axis_action(-0.2, pair) is None
    assert axis_action(-0.9, pair) == LEFT and axis_action(0.9, pair) == RIGHT
    hat = {"up": UP, "down": DOWN, "left": LEFT, "right": RIGHT}
    assert hat_actions((1, 1), hat) == {"left": None, "right": RIGHT, "up": UP, "down": None}
    assert hat_actions((0, 0), {"up": UP}) == {"up": None}


def test_bindings_from_the_shipped_keymap_and_conflicts() -> None:
    world = make_world("adventure")
    b = Bindings.from_keymap(resolve_keymap(world, None), world.action_names)
    assert b.keys["right"] == RIGHT and b.keys["w"] == UP
    assert b.axes[0] == (LEFT, RIGHT) and b.hat["down"] == DOWN
    assert b.controls["escape"] == "quit" and b.controls["f2"] == "hud"
    help_text = [" ".join(cells) for cells, _ in b.help()]
    assert "RIGHT right, d" in help_text and "f12 screenshot (PNG)" in help_text
    with pytest.raises(PlayError, match="'r' is bound to action 'UP' and to control 'reset'"):
        Bindings.from_keymap(Keymap("bad", {"r": "UP"}), world.action_names)


def test_auto_keymap_for_worlds_without_one() -> None:
    km = auto_keymap(("NOOP", "FIRE", "RIGHT", "LEFT"))
    assert km.keys == {"space": "FIRE", "right": "RIGHT", "left": "LEFT",
                       "1": "FIRE", "2": "RIGHT", "3": "LEFT"}


def test_script_keys_parse_and_timeline() -> None:
    steps = parse_script("right*3, wait*2 ,F12")
    assert steps == [("right", 3), (None, 2), ("f12", 1)]
    assert script_timeline(steps) == {0: [(True, "right")], 3: [(False, "right")],
                                      5: [(True, "f12")], 6: [(False, "f12")]}
    with pytest.raises(PlayError, match="'rihgt'"):
        parse_script("rihgt*3")
    with pytest.raises(PlayError, match="positive count"):
        parse_script("right*0")


# ---------------------------------------------------------------------- timing and layout
def test_tick_clock_runs_at_the_tick_rate_independent_of_frame_rate() -> None:
    for fps in (30, 60, 144):
        clock = TickClock(15.0)
        assert sum(clock.advance(1 / fps) for _ in range(fps * 4)) in (59, 60)
    clock = TickClock(15.0)
    assert clock.advance(10.0) == 4  # a stall drops ticks instead of racing to catch up
    clock.rate = 1e9
    assert clock.rate == 480.0


def test_letterboxed_integer_scaling() -> None:
    assert layout_row((640, 640), [(64, 64)]) == [Rect(0, 0, 640, 640)]
    assert layout_row((700, 500), [(64, 64)]) == [Rect(126, 26, 448, 448)]  # 7x, centred
    assert fit_scale((32, 50), (64, 64)) == 0.5  # smaller than the frame: exact fit
    left, right = layout_row((1000, 400), [(64, 64), (64, 64)], gap=8)
    assert left.w == right.w == 384 and right.x == left.x + 384 + 8  # one shared 6x scale


# ---------------------------------------------------------------------- session and recording
def test_session_records_played_episodes_into_a_dataset(tmp_path: Path) -> None:
    world = make_world("adventure")
    try:
        session = Session(world, "adventure", 5, scripted_policy("random", world, 5),
                          use_scripted=False)
        session.step(RIGHT)  # not recorded: recording starts a fresh episode
        root = tmp_path / "adventure-human-test-v0"
        session.start_recording(root)
        assert session.episode == 1 and session.seed == 6
        for _ in range(4):
            session.step(RIGHT)
        assert session.toggle_scripted() == "random"
        session.step(NOOP)
        path, stats = session.stop_recording()
    finally:
        world.close()
    assert path == root and stats["episodes"] == 1 and stats["steps"] == 5
    (ep,) = load_episodes(root)
    assert list(ep.actions[:4]) == [RIGHT] * 4
    assert len(ep.observations) == 6 and ep.truncations[-1]
    meta = json.loads((root / "data" / "0" / "metadata.json").read_text())
    assert meta["seed"] == 6 and meta["controllers"] == {"human": 4, "random": 1}
    assert (root / "stats.json").is_file()


def test_session_saves_and_loads_state_and_compares_a_twin() -> None:
    world, twin = make_world("adventure"), make_world("adventure")
    try:
        session = Session(world, "adventure", 3, scripted_policy("random", world, 3), use_scripted=False)
        assert session.psnr is None  # no twin: nothing to compare
        for a in (RIGHT, RIGHT, 2):
            session.step(a)
        assert session.save_state()
        after = [session.step(a).frame for a in (RIGHT, 1, 1)]
        assert session.load_state()
        again = [session.step(a).frame for a in (RIGHT, 1, 1)]
        assert all(np.array_equal(a, b) for a, b in zip(after, again))
        # a twin driven by the same actions from the same start (here: the same game) matches exactly
        with_twin = Session(world, "adventure", 3, scripted_policy("random", world, 3), use_scripted=False,
                            twin=twin)
        for a in (RIGHT, 1, 4):
            with_twin.step(a)
        assert with_twin.psnr == 99.0 and with_twin.frame_ms is not None
    finally:
        world.close()


def test_stopping_an_empty_recording_leaves_nothing(tmp_path: Path) -> None:
    world = make_world("adventure")
    try:
        session = Session(world, "adventure", 0, scripted_policy("explorer", world, 0), False)
        session.start_recording(tmp_path / "empty-human-v0")
        assert session.stop_recording() == (tmp_path / "empty-human-v0", None)
    finally:
        world.close()
    assert not (tmp_path / "empty-human-v0").exists()


# ---------------------------------------------------------------------- the real window
def play_in_window(display: str, tmp_path: Path, *args: str) -> tuple[np.ndarray, list[dict]]:
    """Run play.py in a window on ``display``; the (single) screenshot and the trace rows."""
    env = {**os.environ, "DISPLAY": display, "SDL_VIDEODRIVER": "x11", "SDL_AUDIODRIVER": "dummy"}
    shots, trace = tmp_path / "shots", tmp_path / "trace.jsonl"
    run = subprocess.run([sys.executable, str(ROOT / "play.py"), "--shots-dir", str(shots),
                          "--trace", str(trace), *args], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "played headless" not in run.stdout  # a real window opened
    (shot,) = shots.glob("*.png")
    rows = [json.loads(line) for line in trace.read_text().splitlines()]
    return np.asarray(Image.open(shot).convert("RGB")), rows


def test_window_plays_adventure_with_keys_and_shows_the_frame_crisply(xvfb_display: str,
                                                                      tmp_path: Path) -> None:
    shot, rows = play_in_window(xvfb_display, tmp_path, "--world", "adventure", "--seed", "0",
                                "--scale", "6", "--script-keys", "wait*2,right*8,f12,escape")
    assert shot.shape == (384, 384, 3)
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 40  # not blank: world and HUD text
    actions = [r["action"] for r in rows]
    assert actions[:10] == [NOOP, NOOP] + [RIGHT] * 8
    xs = [r["info"]["player_world"][0] for r in rows]
    assert xs[9] > xs[1], "holding RIGHT moved the player right"
    # the window shows exactly the world's frame at 6x (below the HUD): replay it headless
    world = make_world("adventure")
    try:
        frame, _ = world.reset(seed=0)
        for a in actions:
            frame = world.step(a).frame
    finally:
        world.close()
    expected = upscale_nearest(frame, 6)
    assert np.abs(shot[192:].astype(int) - expected[192:]).max() <= 2


def test_window_plays_maze3d_turning(xvfb_display: str, tmp_path: Path) -> None:
    shot, rows = play_in_window(xvfb_display, tmp_path, "--world", "maze3d", "--scale", "5",
                                "--script-keys", "d*4,f2,f12,escape")
    assert shot.shape == (320, 320, 3)
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 10
    angles = [r["info"]["angle"] for r in rows]
    assert [r["action"] for r in rows[:4]] == [4] * 4  # d is TURN_RIGHT in maze3d's keymap
    assert len(set(angles[:4])) == 4, "each TURN_RIGHT step changed the heading"


def test_window_plays_the_dream_with_keys_side_by_side(xvfb_display: str, tmp_path: Path) -> None:
    """The dream in the window: keys drive it (the IDM reads RIGHT in the recorded dream frames),
    F8 shows the real game beside it, F9 records the dream into a dataset."""
    from model.idm import predict_actions
    from trainer.data import load_episodes
    from trainer.models import default_idm, load_idm

    shot, rows = play_in_window(xvfb_display, tmp_path, "--world", "dream", "--scale", "4",
                                "--record-dir", str(tmp_path / "rec"),
                                "--script-keys", "f9,wait*2,right*10,f8,f12,f9,escape")
    # side by side: two frames in a row, letterboxed in the window: the outer columns are blank
    assert shot.shape == (256, 256, 3)
    assert len(np.unique(shot[100:200, :40].reshape(-1, 3), axis=0)) == 1
    assert len(np.unique(shot[100:200, 80:120].reshape(-1, 3), axis=0)) > 3
    assert [r["action"] for r in rows].count(RIGHT) == 10
    (ds,) = (tmp_path / "rec").iterdir()
    (ep,) = load_episodes(str(ds))
    right = np.flatnonzero(ep.actions == RIGHT)  # clip convention: actions[i] led to frame i
    assert len(right) == 10
    idm, _ = load_idm(default_idm("adventure"))
    pred = predict_actions(idm, ep.frames[right - 1], ep.frames[right])
    assert (pred == RIGHT).mean() >= 0.6, pred


def test_hud_shows_timing_and_the_dream_comparison_only_when_there() -> None:
    from window.hud import HUD_FIELDS, hud_lines

    base = {"world": "dream", "episode": 0, "seed": 1, "fps": 30.0, "steps_per_s": 15.0, "tick_rate": 15,
            "step": 3, "score": 1.0, "action": "RIGHT", "effective_action": "RIGHT", "controller": "human",
            "paused": False, "recording": None, "recorded_episodes": 0, "message": ""}
    texts = [line[0][0] for line in hud_lines(base, HUD_FIELDS)]
    assert not any("frame" in t or "view" in t for t in texts)  # a real world before its first step
    dream = {**base, "frame_ms": 22.4, "latency_ms": 31.0, "view": "side by side",
             "sampler": "consistency 2 steps", "psnr": 24.5}
    texts = [line[0][0] for line in hud_lines(dream, HUD_FIELDS)]
    assert "frame 22.4 ms   action-to-display 31 ms" in texts
    assert "view side by side   consistency 2 steps   real vs dream 24.5 dB" in texts
