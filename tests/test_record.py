"""The recorder: Minari roundtrip (bit-exact vs. replay), metadata, kill -9 + resume, policies,
mp4 export, and the errors a user can run into."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from world import UnknownWorldError, make_world
from world.dataset import (
    DatasetError,
    DatasetWriter,
    info_columns,
    load_episodes,
    open_dataset,
    sample_observations,
)
from world.policies import PolicyError, make_policy
from world.record import main, record

ROOT = Path(__file__).resolve().parent.parent
# a small map keeps world creation and the explorer's look-ahead cheap
SETTINGS = {"rooms_x": 2, "rooms_y": 2}
SETTING_ARGS = [arg for k, v in SETTINGS.items() for arg in ("--setting", f"{k}={v}")]


def record_args(out: Path, episodes: int, steps: int, seed: int = 5) -> list[str]:
    return ["--world", "adventure", "--policy", "explorer", "--episodes", str(episodes),
            "--steps", str(steps), "--seed", str(seed), "--out", str(out), *SETTING_ARGS]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("datasets") / "tiny-explorer-v0"
    record("adventure", "explorer", episodes=3, steps=40, out=out, seed=11, settings=SETTINGS,
           progress=False)
    return out


def test_roundtrip_through_minari_is_bit_exact(dataset, monkeypatch):
    import minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(dataset.parent))
    ds = minari.load_dataset(dataset.name)
    assert ds.total_episodes == 3
    assert ds.observation_space.shape == (64, 64, 3) and ds.action_space.n == 5
    world = make_world("adventure", **SETTINGS)
    for i, ep in enumerate(ds.iterate_episodes()):
        T = len(ep.actions)
        assert ep.observations.shape == (T + 1, 64, 64, 3) and ep.observations.dtype == np.uint8
        assert len(ep.rewards) == len(ep.terminations) == len(ep.truncations) == T
        assert len(ep.infos["effective_action"]) == T + 1
        assert ep.infos["player_pos"].shape == (T + 1, 2)
        frame, info = world.reset(seed=11 + i)
        assert np.array_equal(ep.observations[0], frame)
        for t, a in enumerate(ep.actions):
            res = world.step(int(a))
            assert np.array_equal(ep.observations[t + 1], res.frame), f"episode {i} frame {t + 1}"
            assert ep.rewards[t] == res.reward and ep.terminations[t] == res.terminated
            assert ep.infos["effective_action"][t + 1] == res.info["effective_action"]
            assert tuple(ep.infos["player_pos"][t + 1]) == res.info["player_pos"]
        assert ep.terminations[-1] or ep.truncations[-1]  # the step limit reads as truncation
    world.close()
    # the env-free readers agree with minari
    mine = load_episodes(dataset)
    assert [e.seed for e in mine] == [11, 12, 13]
    assert np.array_equal(mine[2].observations, ds[2].observations)
    assert open_dataset(dataset).total_steps == ds.total_steps


def test_metadata_and_stats(dataset):
    meta = json.loads((dataset / "data" / "metadata.json").read_text())
    assert meta["dataset_id"] == "tiny-explorer-v0"
    assert meta["data_format"] == "arrow" and meta["jpeg_encoding"] is False
    assert meta["world"] == "adventure"
    desc = meta["world_description"]
    assert desc["action_names"] == ["NOOP", "UP", "DOWN", "LEFT", "RIGHT"]
    assert desc["settings"]["rooms_x"] == 2 and desc["tick_rate"] > 0
    assert meta["episode_seeds"] == [11, 12, 13]
    assert meta["policy"]["name"] == "explorer" and "mean_hold" in meta["policy"]["params"]
    assert meta["git_commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}", meta["git_commit"])
    assert meta["dreamstep_version"] and "actions[t]" in meta["action_convention"]
    ep_meta = json.loads((dataset / "data" / "1" / "metadata.json").read_text())
    assert ep_meta["seed"] == 12 and ep_meta["stats"]["steps"] == 40
    stats = json.loads((dataset / "stats.json").read_text())
    assert stats["episodes"] == 3 and stats["steps"] == 120 and stats["bytes"] > 0
    assert sum(a["pressed"] for a in stats["actions"].values()) == 120
    assert sum(a["effective"] for a in stats["actions"].values()) == 120
    assert 0 < stats["coverage"]["per_episode_mean"] <= 1


def _total_episodes(out: Path) -> int:
    try:
        return json.loads((out / "data" / "metadata.json").read_text())["total_episodes"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _start_and_kill(out: Path, episodes: int, after: int, delay: float, resume: bool) -> int:
    """Run the recorder in a subprocess, SIGKILL it ``delay`` s after episode ``after`` is
    counted (mid-way through the next write, at some moment); return the episodes counted."""
    args = [sys.executable, "-m", "world.record", *record_args(out, episodes, steps=12), "--quiet"]
    proc = subprocess.Popen(args + ["--resume"] * resume, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while _total_episodes(out) < after and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(delay)
    assert proc.poll() is None, f"recorder ended before the kill: {proc.stderr.read().decode()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return _total_episodes(out)


def test_kill9_leaves_complete_episodes_and_resume_equals_uninterrupted(tmp_path):
    out = tmp_path / "killed-v0"
    done = 0
    for round_, delay in enumerate((0.0, 0.013, 0.029)):  # kill at different moments of a write
        done = _start_and_kill(out, 40, after=done + 2, delay=delay, resume=round_ > 0)
        assert 2 <= done < 40
        killed = load_episodes(out)  # every counted episode reads back whole
        assert len(killed) == done and all(len(e.observations) == len(e) + 1 for e in killed)
    # leftovers of a kill between the steps of a write: a staging folder, an uncounted episode
    (out / ".staging" / str(done)).mkdir(parents=True, exist_ok=True)
    (out / "data" / str(done)).mkdir(exist_ok=True)
    (out / "data" / str(done) / "part-0.arrow").write_bytes(b"half")
    assert main(record_args(out, episodes=40, steps=12) + ["--quiet"]) == 2  # needs --resume
    assert main(record_args(out, episodes=40, steps=12) + ["--quiet", "--resume"]) == 0
    assert not (out / ".staging").exists()
    ref = tmp_path / "straight-v0"
    assert main(record_args(ref, episodes=40, steps=12) + ["--quiet"]) == 0
    resumed, straight = load_episodes(out), load_episodes(ref)
    assert len(resumed) == len(straight) == 40
    for a, b in zip(resumed, straight):
        assert a.seed == b.seed
        assert np.array_equal(a.observations, b.observations)
        assert np.array_equal(a.actions, b.actions)
        assert np.array_equal(a.infos["effective_action"], b.infos["effective_action"])
    # a resume with other arguments would mix two recordings: refused, naming the difference
    with pytest.raises(DatasetError, match="steps"):
        record("adventure", "explorer", 41, 13, out, seed=5, settings=SETTINGS, progress=False,
               resume=True)


def _play(policy_name: str, world, episodes: int, steps: int) -> tuple[np.ndarray, float]:
    policy = make_policy(policy_name, world, 0)
    pressed = np.zeros(world.num_actions)
    cells = []
    for ep in range(episodes):
        frame, info = world.reset(seed=100 + ep)
        policy.reset(100 + ep)
        seen = {info["cell"]}
        for _ in range(steps):
            a = policy.act(frame, info)
            pressed[a] += 1
            frame, _, terminated, truncated, info = world.step(a)
            seen.add(info["cell"])
            if terminated or truncated:
                break
        cells.append(len(seen))
    return pressed / pressed.sum(), float(np.mean(cells))


def test_explorer_is_balanced_and_covers_more_than_random():
    world = make_world("adventure", **SETTINGS)
    shares, explorer_cells = _play("explorer", world, episodes=4, steps=200)
    _, random_cells = _play("random", world, episodes=4, steps=200)
    world.close()
    assert shares.min() >= 0.10, f"explorer action shares {np.round(shares, 3)}"
    assert explorer_cells > 1.5 * random_cells, (explorer_cells, random_cells)


def test_agent_policy_wraps_a_callable():
    world = make_world("adventure", **SETTINGS)
    policy = make_policy("agent", world, 0, agent=lambda frame, info: 3)
    frame, info = world.reset(seed=0)
    assert policy.act(frame, info) == 3 and policy.describe()["name"] == "agent"
    with pytest.raises(PolicyError, match="--agent"):
        make_policy("agent", world, 0)
    world.close()


def test_export_mp4(dataset, tmp_path):
    import imageio_ffmpeg

    out = tmp_path / "ep1.mp4"
    assert main(["export", "--dataset", str(dataset), "--episode", "1", "--out", str(out),
                 "--scale", "2"]) == 0
    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    assert meta["size"] == (128, 128)
    assert sum(1 for _ in reader) == 41
    assert main(["export", "--dataset", str(dataset), "--episode", "9", "--out", str(out)]) == 2


def test_info_columns_types():
    infos = [{"a": 0, "p": (1.0, 2.0), "s": "x", "nested": {"k": 1}},
             {"a": 1, "p": (1.5, 2.0), "s": "y", "e": "hit", "nested": {"k": 2}},
             {"a": 2, "p": (2.0, 2.0), "s": "z", "e": "", "nested": {"k": 3}}]
    columns, skipped = info_columns(infos)
    assert columns["a"] == [0, 1, 2] and columns["e"] == ["", "hit", ""]
    assert columns["p"].shape == (3, 2) and columns["p"].dtype == np.float64
    assert skipped == ["nested"]


def test_clear_errors(tmp_path, capsys):
    with pytest.raises(DatasetError, match="no dataset at"):
        load_episodes(tmp_path / "missing-v0")
    assert main(["--episodes", "1", "--steps", "2", "--out", str(tmp_path / "no_version")]) == 2
    assert "name-vN" in capsys.readouterr().err
    assert main(["--policy", "wizard", "--episodes", "1", "--steps", "2",
                 "--out", str(tmp_path / "x-v0"), *SETTING_ARGS]) == 2
    assert "valid policies" in capsys.readouterr().err
    assert main(["--world", "nowhere", "--episodes", "1", "--steps", "2",
                 "--out", str(tmp_path / "y-v0")]) == 2
    assert "unknown world 'nowhere'" in capsys.readouterr().err
    with pytest.raises(UnknownWorldError):
        record("nowhere", "random", 1, 2, tmp_path / "z-v0")
    world = make_world("adventure", **SETTINGS)
    with pytest.raises(PolicyError, match="play.py"):
        make_policy("human", world, 0)
    world.close()
    (tmp_path / "busy-v0").mkdir()
    (tmp_path / "busy-v0" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="--resume"):
        DatasetWriter(tmp_path / "busy-v0", None, None, recording={})


def test_relative_out_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record("adventure", "explorer", episodes=1, steps=8, out=Path("data/rel-v0"), seed=1,
           settings=SETTINGS, progress=False)
    assert _total_episodes(tmp_path / "data" / "rel-v0") == 1
    assert not (tmp_path / "data" / "rel-v0" / ".staging").exists()


def test_the_retracing_explorer_returns_to_places_it_left():
    """explorer retrace=p: some segments walk the latest moves back, so the recording holds returns
    (a cell seen again after at least 8 steps elsewhere) far more often than without."""
    from world import make_world
    from world.policies import PolicyError, make_policy

    def returns(retrace: float) -> int:
        w = make_world("adventure")
        n = 0
        for seed in range(2):
            pol = make_policy("explorer", w, seed=seed, retrace=retrace, retrace_len=12)
            pol.reset(seed)
            f, info = w.reset(seed=seed)
            last_seen: dict = {}
            for t in range(160):
                cell = info["cell"]
                if cell in last_seen and t - last_seen[cell] >= 8:
                    n += 1
                last_seen[cell] = t
                f, _r, term, trunc, info = w.step(pol.act(f, info))
                if term or trunc:
                    break
        w.close()
        return n

    base, more = returns(0.0), returns(0.5)
    assert more > 1.5 * max(base, 1), (base, more)
    w = make_world("adventure")
    assert "retrace" not in make_policy("explorer", w, seed=0).describe()["params"]  # old recordings resume
    with pytest.raises(PolicyError, match="retrace must be in"):
        make_policy("explorer", w, seed=0, retrace=2.0)


def test_the_still_seeking_explorer_moves_the_sprite_on_still_views_more_often():
    """explorer still_weight=w: the look-ahead favours moves that move the player's sprite on the screen,
    which the following camera shows only where the view stops (the map's edges)."""
    from world import make_world
    from world.policies import PolicyError, make_policy

    w = make_world("adventure")

    def on_screen_moves(still_weight: float) -> int:
        n = 0
        for seed in range(2):
            pol = make_policy("explorer", w, seed=seed, still_weight=still_weight)
            pol.reset(seed)
            f, info = w.reset(seed=seed)
            for _ in range(160):
                before = tuple(info["player_pos"])
                f, _r, term, trunc, info = w.step(pol.act(f, info))
                n += info["effective_action"] != 0 and tuple(info["player_pos"]) != before
                if term or trunc:
                    break
        return n

    base, more = on_screen_moves(0.0), on_screen_moves(8.0)
    assert more > 1.5 * max(base, 1), (base, more)
    assert "still_weight" not in make_policy("explorer", w, seed=0).describe()["params"]  # old recordings resume
    with pytest.raises(PolicyError, match="still_weight must be"):
        make_policy("explorer", w, seed=0, still_weight=-1.0)
    with pytest.raises(PolicyError, match="needs the look-ahead"):
        make_policy("explorer", w, seed=0, still_weight=1.0, lookahead=False)
    w.close()


def test_sampled_observations_are_distinct_frames_of_the_dataset_and_follow_the_seed(dataset):
    every = np.concatenate([ep.observations for ep in load_episodes(dataset)])  # 3 episodes of 41 frames
    some = sample_observations(dataset, 20, seed=3)
    assert some.shape == (20, 64, 64, 3) and some.dtype == np.uint8
    rows = {every[i].tobytes(): i for i in range(len(every))}
    assert all(f.tobytes() in rows for f in some)  # each one a recorded frame
    assert np.array_equal(some, sample_observations(dataset, 20, seed=3))
    assert not np.array_equal(some, sample_observations(dataset, 20, seed=4))
    assert len(sample_observations(dataset, 10_000)) == len(every)  # all of them when it holds fewer
    with pytest.raises(DatasetError, match="limit >= 1, got 0"):
        sample_observations(dataset, 0)
