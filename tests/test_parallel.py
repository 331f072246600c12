"""Multi-process training on CPU (gloo): every stage trains and resumes under DDP and FSDP2,
FSDP equals DDP, and a sharded checkpoint written by 2 processes resumes in 1."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.trainer_helpers import ROOT
from trainer.checkpoint import latest_checkpoint

ENV = {**os.environ, "DREAMSTEP_NO_BAR": "1", "OMP_NUM_THREADS": "1"}
PORT = iter(range(29631, 29731))


@pytest.fixture(scope="module")
def commands(tiny_pipeline) -> dict[str, list[str]]:
    """The tiny pipeline's stage commands (its own outputs are the inputs of the later stages; the
    run is built once per test run, shared with test_pipeline: the ODE stage's trajectories go to
    each test's own folder, ``{TRAJ}``)."""
    cmds = {}
    for line in (tiny_pipeline / "stdout.txt").read_text().splitlines():
        if line.startswith("pipeline: $ python -m trainer "):
            args = shlex.split(line.removeprefix("pipeline: $ python "))
            cmds[args[2]] = args
    # the causal-ODE stage is not in the pipeline: the CD command with the ODE recipe
    ode = [a.replace("adventure_cd_frame2.yaml", "adventure_ode_frame2.yaml") for a in cmds["cd"]]
    ode[2] = "ode"
    cmds["ode"] = ode + ["--set", "trajectories={TRAJ}", "--set", "ode.samples=8",
                         "--set", "ode.solve_steps=4", "--set", "ode.batch=4"]
    return cmds


def launch(cmd: list[str], run: Path, steps: int, nproc: int, mode: str) -> subprocess.CompletedProcess:
    args = [*cmd[1:], "--set", f"run_dir={run}", "--set", f"train.steps={steps}", "--set", "train.log_every=1",
            "--set", f"train.parallel={mode}", "--set", "train.eval_every=0"]
    pre = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={next(PORT)}"] if nproc > 1 else [sys.executable]
    r = subprocess.run([*pre, "-m", *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def curve(run: Path) -> dict[int, float]:
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


# every stage under DDP; under FSDP the stages with state beside the trained module (the teacher's
# EMA, CD's target network, DMD's fake score and generator; the autoencoder's FSDP runs are below)
@pytest.mark.parametrize("stage, mode", [(s, "ddp") for s in ("autoencoder", "idm", "teacher", "ode", "cd", "dmd",
                                                              "heads")]
                         + [(s, "fsdp") for s in ("teacher", "cd", "dmd")])
def test_two_processes_train_and_resume_every_stage(commands, tmp_path, stage, mode):
    run = tmp_path / f"{stage}_{mode}"
    cmd = [a.replace("{TRAJ}", str(tmp_path / "traj")) for a in commands[stage]]
    launch(cmd, run, 2, 2, mode)
    r = launch(cmd, run, 4, 2, mode)
    assert "resumed from" in r.stdout and "at step 2" in r.stdout
    ck = latest_checkpoint(run)
    meta = json.loads((ck / "meta.json").read_text())
    assert meta["step"] == 4 and meta["final"] and meta["world_size"] == 2
    assert (ck / "sharded").is_dir() == (mode == "fsdp")
    losses = curve(run)
    assert sorted(losses) == [1, 2, 3, 4] and all(map(torch.isfinite, torch.tensor(list(losses.values()))))
    # the consolidated weights are whole (not one rank's shards): they load into the model's shapes
    first = load_file(str(latest_checkpoint(run).parent / "step_00000002" / "model.safetensors"))
    last = load_file(str(ck / "model.safetensors"))
    assert first.keys() == last.keys()
    assert all(first[k].shape == last[k].shape for k in first)
    assert any(not torch.equal(first[k], last[k]) for k in first)  # resumed training moved the weights


def test_fsdp_equals_ddp_and_a_sharded_checkpoint_resumes_in_one_process(commands, tmp_path):
    cmd = commands["autoencoder"]
    ddp, full, part = tmp_path / "ddp", tmp_path / "fsdp_full", tmp_path / "fsdp_part"
    launch(cmd, ddp, 6, 2, "ddp")
    launch(cmd, full, 6, 2, "fsdp")
    ref = curve(full)
    for step, loss in curve(ddp).items():  # the same math, parameters sharded or replicated
        assert ref[step] == pytest.approx(loss, rel=1e-5, abs=1e-7), step
    launch(cmd, part, 3, 2, "fsdp")
    one = tmp_path / "one"
    shutil.copytree(part, one)
    # 2 -> 2 processes: exactly the uninterrupted curve
    launch(cmd, part, 6, 2, "fsdp")
    got = curve(part)
    for step in range(1, 7):
        assert got[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-7), step
    # 2 -> 1 process (no process group, plain CPU module): the sharded state loads and the curve goes on
    r = launch(cmd, one, 6, 1, "fsdp")
    assert "(sharded state)" in r.stdout
    got1 = curve(one)
    for step in range(4, 7):
        assert got1[step] == pytest.approx(ref[step], rel=1e-3), step
