"""trainer.curve: which checkpoints it measures, what it keeps, and the log section it rewrites."""

from __future__ import annotations

import json

import pytest

from evaluation import curve


def fake_run(root, steps):
    for s in steps:
        d = root / "checkpoints" / f"step_{s:08d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "meta.json").write_text(json.dumps({"step": s, "wall_s_total": 36.0 * s, "final": False}))
    (root / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "eval/heldout_loss": 1.0 / s}) + "\n"
                                                for s in steps))
    return root


def test_curve_measures_each_checkpoint_once_and_keeps_the_log_current(tmp_path, monkeypatch):
    measured = []

    def fake_measure(ckpt, world):
        measured.append(ckpt)
        step = 0 if ckpt == "base.safetensors" else int(ckpt.rsplit("_", 1)[1])
        return {"revisit_psnr": 20.0 + step / 100, "action_accuracy": 0.9, "eval_wall_s": 1.0}

    monkeypatch.setattr(curve, "measure", fake_measure)
    run = fake_run(tmp_path / "run", [100, 200])
    out = tmp_path / "curve.json"
    new = curve.update(run, out, "adventure", baseline="base.safetensors")
    assert [(p["label"], p["step"]) for p in new] == [("baseline", 0), ("run", 100), ("run", 200)]
    assert curve.update(run, out, "adventure", baseline="base.safetensors") == []  # nothing measured twice
    fake_run(run, [300])
    assert [p["step"] for p in curve.update(run, out, "adventure")] == [300]
    data = json.loads(out.read_text())
    assert [p["step"] for p in data["points"]] == [0, 100, 200, 300]
    assert data["points"][2]["heldout_loss"] == pytest.approx(1 / 200)
    assert data["points"][3]["train_wall_s"] == pytest.approx(36.0 * 300)
    assert len(measured) == 4

    log = tmp_path / "LOG.md"
    log.write_text("# Log\nbefore\n\n" + curve.BEGIN.format(name="run") + "\nold table\n"
                   + curve.END.format(name="run") + "\nafter\n")
    curve.write_log(log, "run", curve.render(data))
    text = log.read_text()
    assert "old table" not in text and text.startswith("# Log\nbefore") and text.endswith("after\n")
    row = next(line for line in text.splitlines() if line.startswith("| 300 |"))
    assert "| 3.00 |" in row and "| 23.00 |" in row  # training hours, revisit PSNR


def test_a_curve_of_another_protocol_is_refused(tmp_path):
    out = tmp_path / "curve.json"
    out.write_text(json.dumps({"protocol": {**curve.PROTOCOL, "episodes": 16}, "points": []}))
    with pytest.raises(curve.CurveError, match="protocol"):
        curve.load_curve(out, "run")
