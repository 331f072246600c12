"""benchmarks.rl: the protocol end to end at toy sizes, and its statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import rl


def test_the_rl_protocol_runs_end_to_end_and_reports_by_fields(tmp_path):
    out = tmp_path / "rl.json"
    assert rl.main(["--quick", "--out", str(out), "--threads", "1", "--agents", str(tmp_path / "agents")]) == 0
    rep = json.loads(out.read_text())
    for name in ("random", "real", "dream"):
        s = rep["settings"][name]
        assert len(s["returns"] if name == "random" else s["runs"][0]["returns"]) == 4  # eval.episodes
        assert s["ci95"][0] <= s["mean"] <= s["ci95"][1]
    for name in ("real", "dream"):
        run = rep["settings"][name]["runs"][0]
        assert run["train_wall_s"] > 0 and [p["timesteps"] for p in run["curve"]] == [128, 256]
    assert "ratio" in rep["transfer"] and rep["quick"] is True
    # the field names at the top level
    assert rep["seeds"] == [0] and set(rep["wall_s"]) == {"real", "dream"}
    for name in ("random", "real", "dream"):
        assert rep[name] == {"mean": rep["settings"][name]["mean"], "ci95": rep["settings"][name]["ci95"]}
    assert rep["transfer_ratio"] == rep["transfer"]["ratio"] and rep["transfer_ratio_ci95"] == rep["transfer"]["ci95"]
    # every agent is saved and diagnosed on its own real episodes (2 in quick mode, 8 dream steps)
    for name in ("real", "dream"):
        run = rep["settings"][name]["runs"][0]
        assert (tmp_path / "agents" / f"{name}_seed0.zip").is_file() and run["agent"].endswith(f"{name}_seed0.zip")
        d = run["diagnose"]
        assert d["heads_on_real"]["transitions"] > 0 and len(d["dream_follow"]["psnr_at"]) in (0, 8)
        assert all(np.isfinite(d["dream_follow"]["psnr_at"]))
        if d["dream_follow"]["psnr_at"]:  # the raw read against the frames' read, step by step
            ag = d["dream_follow"]["dream_pickups_agreement"]
            assert set(ag) == {"both", "frames_only", "raw_only"} and min(ag.values()) >= 0
        assert d["coverage"]["agent"]["steps"] == d["heads_on_real"]["transitions"]
    assert "heads_pickup_recall" in rep and "Where transfer is lost" in out.with_suffix(".md").read_text()
    assert rep["complete"] is True and "partial_runs" not in rep
    # --resume keeps every finished agent: nothing is trained again, the numbers are the same
    assert rl.main(["--quick", "--out", str(out), "--threads", "1", "--agents", str(tmp_path / "agents"),
                    "--resume"]) == 0
    again = json.loads(out.read_text())
    assert again["settings"]["dream"]["runs"] == rep["settings"]["dream"]["runs"]
    assert again["transfer_ratio"] == rep["transfer_ratio"]
    # a report of another config is not resumed into
    other = tmp_path / "other.yaml"
    other.write_text(rl.CONFIG.read_text().replace("  steps: 2 ", "  steps: 1 "))
    assert rl.main(["--quick", "--config", str(other), "--out", str(out), "--resume"]) == 2
    assert out.with_suffix(".png").stat().st_size > 0 and out.with_suffix(".md").is_file()


def test_transfer_ratio_and_its_interval():
    real = [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]
    dream = [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    t = rl.transfer_ratio(dream, real, [0.0, 0.0, 0.0], n_boot=200)
    assert t["ratio"] == pytest.approx(0.5) and t["ci95"] == pytest.approx([0.5, 0.5])
    assert rl.transfer_ratio(dream, [[0.0]], [0.0], n_boot=50)["ratio"] is None  # real learned nothing
    noisy = rl.summarize([list(np.arange(10.0)), list(np.arange(10.0) + 1)], n_boot=500)
    assert noisy["ci95"][0] < noisy["mean"] < noisy["ci95"][1]


def test_a_wrong_config_key_is_one_line(tmp_path, capsys):
    bad = tmp_path / "rl.yaml"
    bad.write_text("train:\n  timestep: 10\n")
    assert rl.main(["--config", str(bad), "--out", str(tmp_path / "r.json")]) == 2
    assert "unknown key(s) ['timestep']" in capsys.readouterr().err


def test_event_matching_counts_each_predicted_event_once():
    from benchmarks.transfer import event_scores, matched_events

    real = np.array([0, 1, 0, 0, 0, 1, 1, 0, 0, 0], bool)
    pred = np.array([0, 0, 1, 0, 0, 0, 1, 0, 0, 1], bool)
    # step 1 matches 2, step 5 and 6 compete for 6 (one wins, the other finds nothing else within 2)
    assert matched_events(real, pred, tolerance=2) == (2, 1)  # step 9 matches nothing
    assert matched_events(real, pred, tolerance=0) == (1, 2)
    s = event_scores(real, pred)
    assert (s["real"], s["predicted"], s["hits"]) == (3, 3, 1) and s["recall"] == pytest.approx(1 / 3)
    assert event_scores(np.zeros(4, bool), np.zeros(4, bool))["recall"] is None


def test_equal_data_difference_and_pooled_recall():
    d = rl.difference([[3.0, 3.0], [3.0, 3.0]], [[1.0, 1.0]], n_boot=100)
    assert d["difference"] == pytest.approx(2.0) and d["ci95"] == pytest.approx([2.0, 2.0])
    diags = [{"heads_on_real": {"pickup": {"real": 4, "hits": 3}}}, {"heads_on_real": {"pickup": {"real": 0, "hits": 0}}}]
    assert rl.pooled_recall(diags) == pytest.approx(0.75)
    assert rl.pooled_recall(diags[1:]) is None


def test_equal_data_counts_each_real_episode_of_every_card_once(tmp_path, monkeypatch):
    """The world model's, the autoencoder's and the heads' datasets (the heads' ``datasets:`` list
    included) are pooled; an episode (world, settings, seed) in two datasets counts once, and a
    teacher that is not here is skipped."""
    import model.io
    from world.record import record

    small = {"rooms_x": 2, "rooms_y": 2}
    a, b, other = tmp_path / "a-v0", tmp_path / "b-v0", tmp_path / "c-v0"
    record("adventure", "explorer", episodes=3, steps=6, out=a, seed=0, settings=small, progress=False)
    record("adventure", "explorer", episodes=2, steps=6, out=b, seed=2, settings=small, progress=False)
    record("adventure", "explorer", episodes=1, steps=6, out=other, seed=0,
           settings={**small, "coins_per_room": 1}, progress=False)  # the same seed in another game: its own episode

    def seeds_steps(d):
        rows = [json.loads(p.read_text()) for p in sorted((d / "data").glob("*/metadata.json"))]
        return {(str(d.name), int(r["seed"])): int(r["total_steps"]) for r in rows}

    cards = {"wm": {"data": {"dataset": str(a)}, "autoencoder": "ae", "teacher": "gone", "heads": "h"},
             "ae": {"data": {"dataset": str(a)}},
             "h": {"data": {"dataset": str(a)}, "datasets": [str(b), str(other)]}}

    def fake_resolve(path):
        if str(path) not in cards:
            raise FileNotFoundError(path)
        return Path(str(path)), cards[str(path)]

    monkeypatch.setattr(model.io, "resolve_full", fake_resolve)
    got = rl.world_model_real_steps("wm")
    assert got["datasets"] == sorted([str(a), str(b), str(other)])
    # seeds 0,1,2 of a and 2,3 of b: 4 episodes of this game; seed 0 of the other game is a fifth
    per = {**seeds_steps(a), **seeds_steps(b), **seeds_steps(other)}
    distinct = {s: n for (name, s), n in per.items() if name != "c-v0"}
    assert sorted(distinct) == [0, 1, 2, 3] and got["episodes"] == 5
    assert got["steps"] == sum(distinct.values()) + per[("c-v0", 0)]
    # a dataset a card names that is not here is a clear error, not a silent undercount
    cards["h"]["datasets"].append(str(tmp_path / "missing-v0"))
    with pytest.raises(rl.BenchmarkError, match="missing-v0"):
        rl.world_model_real_steps("wm")


def test_the_real_game_is_played_with_the_settings_the_dream_was_trained_on(monkeypatch):
    import model.io

    card = {"world_settings": {"rooms_x": 2, "rooms_y": 3}}
    monkeypatch.setattr(model.io, "resolve_full", lambda path: (Path(str(path)), card))
    rl._trained_settings.cache_clear()
    try:
        cfg = rl.RLConfig()
        cfg.dream.checkpoint, cfg.train.envs = "a-card-with-settings", 2
        assert rl.real_settings(cfg) == {"rooms_x": 2, "rooms_y": 3}
        venv = rl.real_vec_env(cfg, seed=0)
        try:
            worlds = [env.unwrapped.world for env in venv.envs]
            assert [(w.settings.rooms_x, w.settings.rooms_y) for w in worlds] == [(2, 3), (2, 3)]
        finally:
            venv.close()
    finally:
        rl._trained_settings.cache_clear()


def test_the_raw_and_frame_reads_of_dreamed_pickups_are_counted_apart():
    from benchmarks.transfer import read_agreement

    raw = np.array([[True, False, True, False]])
    frames = np.array([[True, True, False, False]])
    assert read_agreement(raw, frames) == {"both": 1, "frames_only": 1, "raw_only": 1}


def test_dream_start_frames_are_checked_and_a_missing_dataset_says_what_to_do(tmp_path, monkeypatch):
    bad = tmp_path / "rl.yaml"
    bad.write_text("dream:\n  start_frames: buffer\n")
    with pytest.raises(rl.BenchmarkError, match="start_frames must be one of .*got 'buffer'"):
        rl.load_rl_config(bad)
    bad.write_text("dream:\n  start_frames_max: 0\n")
    with pytest.raises(rl.BenchmarkError, match="start_frames_max must be >= 1, got 0"):
        rl.load_rl_config(bad)
    # the dream env of the benchmark starts its episodes from the buffer
    cfg = rl.load_rl_config(rl.CONFIG, quick=True)
    cfg.dream.start_frames = "dataset"
    buffer = np.zeros((5, 64, 64, 3), np.uint8)
    with monkeypatch.context() as m:
        m.setattr(rl, "dataset_start_frames", lambda checkpoint, limit: buffer)
        venv, env = rl.dream_vec_env(cfg)
        _, info = venv.reset(seed=0)
        assert set(info["start_index"]) <= set(range(5))
        env.close()
    from model import io

    monkeypatch.setattr(io, "resolve_full", lambda ckpt: (None, {"data": {"dataset": str(tmp_path / "gone-v0")}}))
    rl.dataset_start_frames.cache_clear()
    with pytest.raises(rl.BenchmarkError, match="gone-v0.*make dataset.*start_frames: reset"):
        rl.dataset_start_frames("x.safetensors", 8)


def test_a_variant_config_inherits_the_benchmark_and_set_overrides_it(tmp_path):
    # the shipped 1-step variant is rl.yaml with two dream settings changed, by base: or by --set
    one = rl.load_rl_config(rl.CONFIG.parent / "rl_1step.yaml")
    by_set = rl.load_rl_config(rl.CONFIG, overrides={"dream.steps": 1, "dream.compile": True})
    full = rl.load_rl_config(rl.CONFIG)
    assert (one.dream.steps, one.dream.compile) == (1, True) and (full.dream.steps, full.dream.compile) == (2, False)
    assert one == by_set
    one.dream.steps, one.dream.compile = full.dream.steps, full.dream.compile
    assert one == full
    with pytest.raises(rl.BenchmarkError, match=r"unknown key\(s\) \['stepz'\]"):
        rl.load_rl_config(rl.CONFIG, overrides={"dream.stepz": 1})
