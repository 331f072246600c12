"""trainer.pipeline end to end at a tiny size: every stage, skip on rerun, exact resume after kill -9
(once inside each stage; the teacher after its first checkpoint)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import PIPELINE_ENV as ENV
from tests.conftest import PIPELINE_LONGER as LONGER
from tests.conftest import TINY
from tests.trainer_helpers import ROOT


def pipeline(out: Path, *extra: str, **kw) -> subprocess.Popen | subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "trainer.pipeline", "--world", "adventure", "--out", str(out), "--preset", TINY,
           *LONGER, *extra]
    if kw.get("background"):
        return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def finished(tiny_pipeline) -> Path:
    """The tiny pipeline run (built once per test run, shared with test_parallel)."""
    return tiny_pipeline / "run"


def test_pipeline_ends_with_a_playable_checkpoint_and_skips_finished_stages(finished, tmp_path):
    assert (finished / "dream.safetensors").is_file() and (finished / "dream.yaml").is_file()
    assert (finished / "report.json").is_file()
    # the card lists the recorded stage commands it was built from, upstream first (pasteable)
    import yaml

    card = yaml.safe_load((finished / "dream.yaml").read_text())
    stages = [c.split()[3] for c in card["commands"]]
    assert stages == ["autoencoder", "teacher", "cd", "dmd"], card["commands"]
    assert all(c.startswith("python -m trainer ") and "--config" in c for c in card["commands"])
    r = pipeline(finished)
    assert r.returncode == 0
    for stage in ("record", "autoencoder", "teacher", "cd", "dmd", "heads", "evaluate", "export"):
        assert f"{stage}: complete" in r.stdout, stage
    video = tmp_path / "v.mp4"
    play = subprocess.run([sys.executable, "play.py", "--headless", "--checkpoint", str(finished), "--frames", "6",
                           "--out", str(video)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert play.returncode == 0, play.stderr[-2000:]
    assert video.stat().st_size > 0
    from agent_env import make_dream_env

    env = make_dream_env(str(finished), steps=1)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3)
    assert env.unwrapped.world.heads is not None  # the run's own reward/termination heads


def test_bad_pipeline_input_is_named(tmp_path):
    r = subprocess.run([sys.executable, "-m", "trainer.pipeline", "--world", "adventure", "--out", str(tmp_path),
                        "--preset", "huge"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert r.returncode == 2 and "'huge'" in r.stderr and "cpu-small" in r.stderr
    r = subprocess.run([sys.executable, "-m", "trainer.pipeline", "--world", "adventure", "--out", str(tmp_path),
                        "--set", "teacher=3"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert r.returncode == 2 and "STAGE.key=value" in r.stderr
    r = subprocess.run([sys.executable, "-m", "trainer.pipeline", "--world", "adventure", "--out", str(tmp_path),
                        "--setting", "colour=red"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert r.returncode == 2 and "'colour'" in r.stderr


def test_a_game_without_states_is_evaluated_on_a_recording(tmp_path):
    """ViZDoom has no get_state/set_state: the pipeline records held-out episodes (seeds from
    1,000,000) and evaluates on them, and the report says so."""
    pytest.importorskip("vizdoom")
    out = tmp_path / "doom"
    r = subprocess.run([sys.executable, "-m", "trainer.pipeline", "--world", "gym:VizdoomBasic-v1", "--out", str(out),
                        "--preset", TINY, "--setting", "frame_skip=2"], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    report = json.loads((out / "report.json").read_text())
    assert report["protocol"]["real_rollouts"] == "recorded"
    assert "no get_state/set_state" in report["protocol"]["policy_note"]
    assert min(report["protocol"]["eval_seeds"]) >= 1_000_000
    assert report["protocol"]["settings"]["frame_skip"] == 2
    assert report["changed_psnr_mean_16"] is not None


def test_a_pipeline_killed_in_every_stage_ends_with_the_same_outputs(finished, tmp_path):
    """kill -9 once inside each stage (record ... export), rerun after each kill: the final
    weights of every stage and the report's numbers equal an uninterrupted run's."""

    out = tmp_path / "run"
    marks = {"record": "world.record", "evaluate": "trainer.evaluate", "export": "trainer.export"}
    killed = []
    for stage in ("record", "autoencoder", "idm", "teacher", "cd", "dmd", "heads", "evaluate", "export"):
        log = tmp_path / f"{stage}.log"
        cmd = [sys.executable, "-m", "trainer.pipeline", "--world", "adventure", "--out", str(out), "--preset", TINY,
               *LONGER]
        with open(log, "w") as fh:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        mark = f"-m {marks.get(stage, 'trainer ' + stage)} "
        deadline = time.monotonic() + 600
        while mark not in log.read_text() and proc.poll() is None:
            assert time.monotonic() < deadline, f"stage {stage} never started"
            time.sleep(0.05)
        if stage == "teacher":  # killed after a checkpoint: the rerun must resume from it, not restart
            ckpts = out / "teacher" / "checkpoints"
            while not (ckpts.is_dir() and any(p.name.startswith("step_") for p in ckpts.iterdir())):
                assert proc.poll() is None and time.monotonic() < deadline, "the teacher stage never checkpointed"
                time.sleep(0.05)
        else:
            time.sleep(1.0)  # into the stage (its model built, a few steps or episodes done)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            killed.append(stage)
        proc.wait()
    assert len(killed) >= 6, killed  # most stages really were interrupted (the tiniest may finish first)
    assert "teacher" in killed and "resumed from" in (tmp_path / "cd.log").read_text()
    r = pipeline(out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    from trainer.checkpoint import latest_checkpoint

    for stage in ("autoencoder", "idm", "teacher", "cd", "dmd", "heads"):
        a = load_file(str(latest_checkpoint(finished / stage) / "model.safetensors"))
        b = load_file(str(latest_checkpoint(out / stage) / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage
    a, b = load_file(str(finished / "dream.safetensors")), load_file(str(out / "dream.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (finished, out))
    for key in ("psnr_at", "changed_psnr_mean_16", "copy_last_psnr_mean_16", "action_accuracy", "sharpness_ratio_16"):
        assert ra[key] == rb[key], key



def test_heads_learn_from_the_dreams_own_latents(finished, tmp_path):
    """The heads stage with ``dream:``: the student's rollouts are dreamed and labelled once, saved, mixed
    into the batches, and the held-out pool gives ``dream_*`` metrics (reuse of a saved pool: test_heads_dream)."""
    import yaml

    cfg = json.loads((finished / "heads" / "config.json").read_text())
    cfg.pop("precision", None)
    cfg["run_dir"] = str(tmp_path / "heads_dream")
    cfg["train"].update(steps=6, eval_every=6, ckpt_every=6)
    cfg["dream"] = {"checkpoint": str(finished / "dream.safetensors"), "label_heads": str(finished / "heads"),
                    "rollouts": 8, "horizon": 3, "batch": 4, "share": 0.5}
    path = tmp_path / "heads_dream.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "trainer", "heads", "--config", str(path)]
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "dream pool (training): 8 rollouts x 3 steps" in r.stdout + r.stderr
    pools = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "heads_dream").glob("dream_pool_*.npz")}
    assert set(pools) == {"dream_pool_train.npz", "dream_pool_held.npz"}
    evals = [json.loads(x) for x in (tmp_path / "heads_dream" / "metrics.jsonl").read_text().splitlines()]
    ev = [e for e in evals if "eval/dream_reward_accuracy" in e]
    assert ev and 0.0 <= ev[-1]["eval/dream_reward_accuracy"] <= 1.0 and "eval/reward_accuracy" in ev[-1]
