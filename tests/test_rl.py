"""benchmarks.rl: the protocol end to end at toy sizes, and its statistics."""

from __future__ import annotations

import json

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
