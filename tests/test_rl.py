"""benchmarks.rl: the protocol end to end at toy sizes, and its statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import rl


def test_the_rl_protocol_runs_end_to_end_and_reports_by_fields(tmp_path):
    out = tmp_path / "rl.json"
    assert rl.main(["--quick", "--out", str(out), "--threads", "1"]) == 0
    rep = json.loads(out.read_text())
    for name in ("random", "real", "dream"):
        s = rep["settings"][name]
        assert len(s["returns"] if name == "random" else s["runs"][0]["returns"]) == 4  # eval.episodes
        assert s["ci95"][0] <= s["mean"] <= s["ci95"][1]
    for name in ("real", "dream"):
        run = rep["settings"][name]["runs"][0]
        assert run["train_wall_s"] > 0 and [p["timesteps"] for p in run["curve"]] == [128, 256]
    assert "ratio" in rep["transfer"] and rep["quick"] is True
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
