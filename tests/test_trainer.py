"""The trainer's machinery: strict configs, a falling loss, exact resume after kill -9, DDP on CPU."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.trainer_helpers import ROOT, record_tiny_dataset, tiny_ae_config, write_config
from trainer.checkpoint import CheckpointError, latest_checkpoint, load_weights
from trainer.config import ConfigError, load_config
from trainer.stages.autoencoder import AutoencoderExperiment

ENV = {**os.environ, "DREAMSTEP_NO_BAR": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return record_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny-v0")


def run_trainer(stage: str, config: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", stage, "--config", str(config), *extra],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, check=check)


def losses(run: Path) -> dict[int, float]:
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def test_unknown_config_key_is_named(tmp_path):
    cfg = write_config(tmp_path / "bad.yaml", "adventure_ae.yaml", train={"stpes": 3})
    with pytest.raises(ConfigError, match="stpes"):
        load_config(AutoencoderExperiment, cfg)
    r = run_trainer("autoencoder", cfg, check=False)
    assert r.returncode == 2 and "stpes" in r.stderr and "valid keys" in r.stderr


def test_base_inheritance_is_one_level(tmp_path):
    child = write_config(tmp_path / "child.yaml", "adventure_ae.yaml", train={"steps": 7})
    cfg = load_config(AutoencoderExperiment, child)
    assert cfg.train.steps == 7 and cfg.train.batch_size == 64  # the rest from the base
    grandchild = tmp_path / "grandchild.yaml"
    grandchild.write_text(yaml.safe_dump({"base": str(child)}))
    with pytest.raises(ConfigError, match="one level"):
        load_config(AutoencoderExperiment, grandchild)


def test_autoencoder_loss_falls(tmp_path, dataset):
    # the default autoencoder classifies pixels over the palette: cross-entropy from log(32)
    cfg = tiny_ae_config(tmp_path, dataset, "ae", steps=40, precision="fp32", lr=0.01)
    run_trainer("autoencoder", cfg)
    ls = losses(tmp_path / "ae")
    steps = sorted(ls)
    first = sum(ls[s] for s in steps[:2]) / 2
    last = sum(ls[s] for s in steps[-3:]) / 3
    assert last < 0.8 * first, (first, last)
    recs = [json.loads(ln) for ln in (tmp_path / "ae" / "metrics.jsonl").read_text().splitlines()]
    acc = [r["pixel_acc"] for r in recs if "pixel_acc" in r]
    assert acc[0] < 0.1 and max(acc[-3:]) > 0.3, acc
    assert latest_checkpoint(tmp_path / "ae").name == "step_00000040"
    # a finished run is left alone when run again, even with a smaller train.steps: no second final
    # evaluation in its log, its final checkpoint keeps the config it was trained under
    log_before = (tmp_path / "ae" / "metrics.jsonl").read_text()
    meta_file = tmp_path / "ae" / "checkpoints" / "step_00000040" / "meta.json"
    meta_before = meta_file.read_text()
    r = run_trainer("autoencoder", tiny_ae_config(tmp_path, dataset, "ae", steps=20, precision="fp32", lr=0.01))
    assert "nothing to do" in r.stdout
    assert (tmp_path / "ae" / "metrics.jsonl").read_text() == log_before and meta_file.read_text() == meta_before
    # a new run can start from a trained autoencoder's weights (e.g. the shipped one, to train it further)
    from trainer.stages.autoencoder import AutoencoderStage

    cont = load_config(AutoencoderExperiment, cfg, {"init": str(tmp_path / "ae"), "run_dir": str(tmp_path / "ae2")})
    trained = load_weights(latest_checkpoint(tmp_path / "ae"))  # this tiny config keeps no EMA
    assert all(torch.equal(v, trained[k]) for k, v in AutoencoderStage(cont).net.state_dict().items())
    other = load_config(AutoencoderExperiment, cfg, {"init": str(tmp_path / "ae"), "model.latent_channels": 4})
    with pytest.raises(CheckpointError, match="does not fit the model config"):
        AutoencoderStage(other)


def test_resume_after_kill_continues_the_same_curve(tmp_path, dataset):
    # uninterrupted reference run (fp32 and one thread: bit-reproducible)
    ref_cfg = tiny_ae_config(tmp_path, dataset, "ref", steps=32, precision="fp32", threads=1)
    run_trainer("autoencoder", ref_cfg)
    ref = losses(tmp_path / "ref")
    # the same run, killed with SIGKILL after its step-16 checkpoint, then resumed
    cfg = tiny_ae_config(tmp_path, dataset, "killed", steps=32, precision="fp32", threads=1)
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "autoencoder", "--config", str(cfg)],
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = tmp_path / "killed"
    deadline = time.time() + 120
    while time.time() < deadline:
        ck = latest_checkpoint(run)
        if ck is not None and ck.name >= "step_00000016":
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest_checkpoint(run) is not None
    r = run_trainer("autoencoder", cfg)
    assert "resumed from" in r.stdout
    got = losses(run)
    assert sorted(got) == sorted(ref)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-7), step


def test_training_in_pieces_stops_cleanly_and_resumes_the_same_curve(tmp_path, dataset):
    """--minutes ends a piece, SIGTERM ends one after the step in flight: both write a checkpoint
    off the ckpt_every grid first, and the same command continues the same curve."""
    kw = {"steps": 12, "precision": "fp32", "threads": 1, "ckpt_every": 1000, "ckpt_minutes": 1000.0}
    run_trainer("autoencoder", tiny_ae_config(tmp_path, dataset, "ref", **kw))
    ref = losses(tmp_path / "ref")
    cfg = tiny_ae_config(tmp_path, dataset, "pieces", **kw)
    run = tmp_path / "pieces"
    r = run_trainer("autoencoder", cfg, "--minutes", "0.0001")  # a piece of one step
    assert "piece ended at step 1/12" in r.stdout, r.stdout
    assert latest_checkpoint(run).name == "step_00000001"
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "autoencoder", "--config", str(cfg)],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").is_file() and max(losses(run), default=0) >= 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "SIGTERM received" in out, out
    stopped = int(latest_checkpoint(run).name.split("_")[1])
    assert 4 <= stopped < 12
    meta = json.loads((latest_checkpoint(run) / "meta.json").read_text())
    assert meta["final"] is False
    r = run_trainer("autoencoder", cfg)
    assert "resumed from" in r.stdout and f"step_{stopped:08d}" in r.stdout, r.stdout
    got = losses(run)
    assert sorted(got) == sorted(ref)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-7), step


def test_two_process_ddp_on_cpu_trains(tmp_path, dataset):
    cfg = tiny_ae_config(tmp_path, dataset, "ddp", steps=16, precision="fp32", threads=1)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        "--master_port=29517", "-m", "trainer", "autoencoder", "--config", str(cfg)],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ls = losses(tmp_path / "ddp")
    assert ls[max(ls)] < ls[min(ls)]
    # the same global batch split over 2 ranks matches a 1-process run closely
    single_cfg = tiny_ae_config(tmp_path, dataset, "single", steps=16, precision="fp32", threads=1)
    run_trainer("autoencoder", single_cfg)
    single = losses(tmp_path / "single")
    for step in (2, 8, 16):
        assert ls[step] == pytest.approx(single[step], rel=1e-3)


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_weights(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(tmp_path / "missing.safetensors")


def test_fresh_keeps_the_earlier_run_aside_and_trains_the_new_one(tmp_path, dataset):
    # an earlier, longer run in the folder ...
    first = tiny_ae_config(tmp_path, dataset, "again", steps=24, ckpt_every=8, precision="fp32", threads=1)
    run_trainer("autoencoder", first)
    assert latest_checkpoint(tmp_path / "again").name == "step_00000024"
    # ... then a shorter one with --fresh in the same folder: its checkpoints must survive pruning
    second = tiny_ae_config(tmp_path, dataset, "again", steps=8, ckpt_every=4, precision="fp32", threads=1,
                            keep_checkpoints=2)
    r = run_trainer("autoencoder", second, "--fresh")
    assert "moved to" in r.stdout
    run = tmp_path / "again"
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000004", "step_00000008"]
    assert latest_checkpoint(run).name == "step_00000008"
    moved = list((run / "replaced").glob("*/checkpoints/step_00000024"))
    assert len(moved) == 1  # the earlier run is kept, not deleted
    assert max(losses(run)) == 8  # the new run's own metrics
    # a rerun without --fresh sees the new run, complete
    again = run_trainer("autoencoder", second)
    assert "nothing to do" in again.stdout and "step_00000008" in again.stdout


def test_a_train_state_that_could_run_code_is_refused(tmp_path):
    from safetensors.torch import save_file

    from trainer.checkpoint import load_checkpoint

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    ck = tmp_path / "run" / "checkpoints" / "step_00000001"
    ck.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(ck / "model.safetensors"))
    (ck / "meta.json").write_text(json.dumps({"step": 1, "config": {}}))
    torch.save({"step": 1, "data": Payload()}, ck / "train_state.pt")
    with pytest.raises(CheckpointError, match="refused to load .*train_state.pt"):
        load_checkpoint(ck)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["missing", "metadata", "episode"])
def test_a_missing_or_damaged_dataset_is_one_clear_line(tmp_path, dataset, damage):
    import shutil

    data = tmp_path / "broken-v0"
    if damage != "missing":
        shutil.copytree(dataset, data)
    if damage == "metadata":
        (data / "data" / "metadata.json").write_text("{ not json")
    if damage == "episode":  # garble the middle of every stored episode file
        files = [p for p in (data / "data").rglob("*") if p.is_file() and p.name != "metadata.json"
                 and p.stat().st_size > 256]
        assert files
        for p in files:
            b = bytearray(p.read_bytes())
            b[len(b) // 4: len(b) // 4 + 64] = bytes(64)
            p.write_bytes(bytes(b))
    cfg = write_config(tmp_path / "teacher.yaml", "adventure_teacher.yaml", run_dir=str(tmp_path / "t"),
                       latent_cache_dir=str(tmp_path / "lat"), data={"dataset": str(data), "holdout_episodes": 1})
    r = run_trainer("teacher", cfg, "--set", "train.steps=1", check=False)
    assert r.returncode == 2, r.stderr[-1500:]
    assert "Traceback" not in r.stderr and r.stderr.startswith("error: [teacher]")
    assert str(data) in r.stderr
    want = {"missing": "no dataset at", "metadata": "not valid JSON", "episode": "could not be read"}[damage]
    assert want in r.stderr, r.stderr


def test_teacher_loss_falls(tmp_path, dataset):
    ae_cfg = tiny_ae_config(tmp_path, dataset, "ae_for_teacher", steps=8)
    run_trainer("autoencoder", ae_cfg)
    cfg = write_config(tmp_path / "teacher.yaml", "adventure_teacher.yaml", run_dir=str(tmp_path / "teacher"),
                       autoencoder=str(tmp_path / "ae_for_teacher"), latent_cache_dir=str(tmp_path / "lat"),
                       frames=4, data={"dataset": str(dataset), "holdout_episodes": 1},
                       model={"latent_channels": 8, "width": 32, "depth": 2, "heads": 2},
                       train={"steps": 60, "batch_size": 8, "lr": 0.003, "warmup": 5, "log_every": 5,
                              "ckpt_every": 30, "eval_every": 0, "ema_decay": 0.9},
                       eval_windows=8)
    r = run_trainer("teacher", cfg)
    ls = losses(tmp_path / "teacher")
    early = sum(ls[s] for s in (5, 10, 15)) / 3
    late = sum(ls[s] for s in (50, 55, 60)) / 3
    assert late < 0.9 * early, (early, late)
    assert "heldout_loss" in r.stdout
    # the precision that ran (auto resolved on this machine) is recorded in the run and its checkpoints
    from model.precision import resolve

    ran = json.loads((tmp_path / "teacher" / "config.json").read_text())["precision"]
    assert ran["asked"] == "auto" and ran["ran"] == ("bf16" if ran["probe"]["bf16_faster"] else "fp32")
    assert "reason" in ran["probe"] and resolve("fp32") == "fp32"
    assert f"precision {ran['ran']}" in r.stdout
    ck = latest_checkpoint(tmp_path / "teacher")
    assert json.loads((ck / "meta.json").read_text())["config"]["precision"]["ran"] == ran["ran"]
    assert (ck / "ema.safetensors").is_file()
    assert any(k.endswith("time_bias") for k in load_weights(ck))
    assert torch.isfinite(torch.tensor(list(ls.values()))).all()

    # pose attention from the moves taken added to the trained teacher (init=): the pose bias starts at
    # zero and the taken head fresh, both train on the data's effective actions, and the checkpoint
    # loads as a model that places each generated frame where its taken head says the player went
    # it also trains on the episodes of a second dataset (data.extra_datasets)
    moves = [[0, 0], [0, -1], [0, 1], [-1, 0], [1, 0]]
    extra = record_tiny_dataset(tmp_path / "extra-v0", episodes=2, steps=30, seed=100)
    pose_cfg = write_config(tmp_path / "pose.yaml", "adventure_teacher.yaml", run_dir=str(tmp_path / "pose"),
                            autoencoder=str(tmp_path / "ae_for_teacher"), latent_cache_dir=str(tmp_path / "lat"),
                            frames=4, data={"dataset": str(dataset), "holdout_episodes": 1,
                                            "extra_datasets": [str(extra)]},
                            model={"latent_channels": 8, "width": 32, "depth": 2, "heads": 2, "pose_moves": moves,
                                   "pose_radius": 2, "pose_taken": True},
                            loss={"taken_balance": True, "motion_weight": 2.0},
                            train={"steps": 10, "batch_size": 8, "lr": 0.003, "warmup": 2, "log_every": 5,
                                   "ckpt_every": 10, "eval_every": 10, "ema_decay": 0.5},
                            eval_windows=8, init=str(tmp_path / "teacher"))
    r = run_trainer("teacher", pose_cfg)
    assert "heldout_taken_acc" in r.stdout
    from model.io import load_world_model
    from model.rollout import SamplerConfig, Session
    from trainer.data import load_episodes, split_episodes

    net, card, _ = load_world_model(tmp_path / "pose")
    # the balanced head's weights carry the training episodes' prior log-odds of a move being taken
    eps, extra_eps = load_episodes(str(dataset)), load_episodes(str(extra))
    train_ids, _ = split_episodes(len(eps), 1)
    trained = [eps[e] for e in train_ids] + extra_eps  # the first dataset's last episode held out
    pressed = np.concatenate([e.actions for e in trained])
    effective = np.concatenate([e.effective for e in trained])
    moving = pressed != 0
    n_taken, n_blocked = int((moving & (effective == pressed)).sum()), int((moving & (effective != pressed)).sum())
    assert n_blocked > 0
    assert net.taken_prior.item() == pytest.approx(math.log(n_taken / n_blocked), rel=1e-6)
    # the sprite motion it was weighted by is cached beside the latents, episode after episode
    from trainer.motion import sprite_motion

    for ds, its in ((dataset, eps), (extra, extra_eps)):
        cached = list((tmp_path / "lat").glob(f"{ds.name}_*_motion8.npz"))
        assert len(cached) == 1
        with np.load(cached[0]) as z:
            want = np.concatenate([sprite_motion(e.frames, 8) for e in its]).astype(np.float16)
            assert np.array_equal(z["motion"], want)
    assert card["model"]["pose_moves"] == moves and net.pose_bias.abs().max() > 0
    assert card["model"]["pose_taken"] and net.taken_head.bias.item() != 2.0  # trained from its init
    for bias, want in ((10.0, [[2, -1]]), (-10.0, [[0, 0]])):  # every move taken; none
        with torch.no_grad():
            net.taken_head.bias.fill_(bias)
        sess = Session(net, 1, generator=torch.Generator().manual_seed(0))
        sess.prime(torch.randn(1, 1, 8, 8, 8), torch.zeros(1, 1, dtype=torch.long))
        for a in (4, 4, 1):  # RIGHT, RIGHT, UP
            sess.generate(torch.tensor([[a]]), SamplerConfig(kind="euler", steps=2))
        assert sess.cache.pose_at(sess.t - 1).tolist() == want


def test_sweep_probes_then_runs_each_variant_to_its_time_box(tmp_path, dataset):
    from trainer.sweep import main as sweep_main
    from trainer.sweep import parse_variant

    with pytest.raises(ValueError, match="key=value"):
        parse_variant("bad=train.lr")
    cfg = tiny_ae_config(tmp_path, dataset, "sweep_base", precision="fp32", threads=1)
    out = tmp_path / "sweep"
    code = sweep_main(["autoencoder", "--config", str(cfg), "--minutes", "0.05", "--probe-steps", "24",
                       "--device", "cpu", "--out", str(out),
                       "--variant", "a=train.lr=0.003", "--variant", "b=train.lr=0.001 train.batch_size=4"])
    assert code == 0
    summary = json.loads((out / "sweep.json").read_text())
    assert set(summary["variants"]) == {"a", "b"}
    for name, v in summary["variants"].items():
        assert v["exit_code"] == 0 and v["probe_steps_per_s"] > 0
        # the step count is the probe's rate times the time box (at least the probe's steps)
        assert v["steps"] == max(24, int(v["probe_steps_per_s"] * 0.05 * 60 * 0.95))
        assert latest_checkpoint(out / name) is not None
        assert v["eval"], "each run evaluates on held-out data"
    assert json.loads((out / "b" / "config.json").read_text())["train"]["batch_size"] == 4


def test_event_metrics_count_hits_misses_and_false_alarms():
    from trainer.stages.heads import event_metrics

    true_r = np.array([0, 1, 0, 1, -1, 0], np.float32)
    pred_r = np.array([0, 1, 1, 0, -1, 0], np.float32)
    true_t = np.array([0, 0, 0, 0, 1, 0], bool)
    pred_t = np.array([0, 0, 0, 0, 1, 1], bool)
    m = event_metrics(pred_r, true_r, pred_t, true_t)
    assert m["reward_accuracy"] == pytest.approx(4 / 6)
    assert m["reward_event_recall"] == pytest.approx(2 / 3) and m["reward_event_precision"] == pytest.approx(2 / 3)
    assert m["reward_false_per_1k"] == pytest.approx(1000 / 6)
    assert m["termination_recall"] == 1.0 and m["termination_precision"] == 0.5


def test_heads_learn_rewards_from_latent_transitions(tmp_path, dataset):
    from trainer.models import load_heads

    ae_cfg = tiny_ae_config(tmp_path, dataset, "ae_for_heads", steps=8)
    run_trainer("autoencoder", ae_cfg)
    cfg = write_config(tmp_path / "heads.yaml", "adventure_heads.yaml", run_dir=str(tmp_path / "heads"),
                       autoencoder=str(tmp_path / "ae_for_heads"), latent_cache_dir=str(tmp_path / "lat"),
                       datasets=[str(dataset)], holdout_episodes=1, model={"latent_channels": 8, "width": 16},
                       train={"steps": 80, "batch_size": 64, "lr": 0.003, "warmup": 5, "log_every": 5,
                              "ckpt_every": 40, "eval_every": 0, "threads": 1})
    r = run_trainer("heads", cfg)
    assert "reward values" in r.stdout
    ls = losses(tmp_path / "heads")
    assert sum(ls[s] for s in (70, 75, 80)) < 0.8 * sum(ls[s] for s in (5, 10, 15))
    rows = [json.loads(x) for x in (tmp_path / "heads" / "metrics.jsonl").read_text().splitlines()]
    final = [x for x in rows if "eval/reward_accuracy" in x][-1]
    assert 0.0 <= final["eval/termination_recall"] <= 1.0 and final["eval/reward_accuracy"] > 0.5
    heads, hcfg = load_heads(tmp_path / "heads")
    assert hcfg["model"]["reward_values"][0] <= 0.0 <= hcfg["model"]["reward_values"][-1]
    z = torch.zeros(3, 8, 8, 8)
    rew, term = heads.predict(z, z, torch.zeros(3, dtype=torch.long))
    assert rew.shape == (3,) and term.dtype == torch.bool
    with pytest.raises(CheckpointError, match="not a reward/termination heads"):
        load_heads(tmp_path / "ae_for_heads")


@pytest.mark.parametrize("path", sorted((ROOT / "assets" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_strictly(path):
    from trainer.__main__ import build

    stage = yaml.safe_load(path.read_text()).get("stage")
    if stage is None:  # a child config: its stage is in its base
        base = yaml.safe_load(path.read_text())["base"]
        stage = yaml.safe_load((path.parent / base).read_text())["stage"]
    cfg, _ = build(stage, str(path), {})
    assert cfg.stage == stage


def test_resuming_with_a_changed_config_says_what_changed_and_records_it(tmp_path, dataset):
    cfg = tiny_ae_config(tmp_path, dataset, "changed", steps=8, ckpt_every=4, precision="fp32", threads=1)
    run_trainer("autoencoder", cfg)
    r = run_trainer("autoencoder", cfg, "--set", "train.steps=12", "--set", "train.lr=0.001")
    assert "resumed with a changed config" in r.stdout and "train.lr 0.003 -> 0.001" in r.stdout
    rec = [json.loads(ln) for ln in (tmp_path / "changed" / "config_changes.jsonl").read_text().splitlines()]
    assert rec[-1]["step"] == 8 and rec[-1]["changes"]["train.steps"] == [8, 12]
    assert json.loads((tmp_path / "changed" / "config.json").read_text())["train"]["lr"] == 0.001
