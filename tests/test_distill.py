"""The Stage 2/3 algorithm pieces on tiny tensors (docs/ALGORITHMS.md sections 3-4)."""

from __future__ import annotations

import numpy as np
import torch

from model import flow
from model.distill import (
    cd_timestep_pair,
    consistency_loss,
    dmd_gradient,
    dmd_loss,
    dmd_sigma,
    ema_update,
    ode_regression_loss,
    teacher_cfg_euler_step,
    trajectory_indices,
)


def test_cd_pairs_are_adjacent_points_of_the_shifted_grid():
    g = torch.Generator().manual_seed(0)
    n, s, s_next = cd_timestep_pair(4000, 48, 3.0, g)
    grid = flow.sigma_grid(48, 3.0)
    assert n.min() == 0 and n.max() == 46  # uniform over {0..N-2}
    assert torch.equal(s, grid[n]) and torch.equal(s_next, grid[n + 1])
    assert (s > s_next).all() and s.max() == 1.0 and s_next.min() == 0.0
    # the grid is the shifted linspace: more points at high noise for shift > 1
    assert torch.allclose(grid, flow.shift_sigma(torch.linspace(1, 0, 48), 3.0))


def test_teacher_cfg_euler_step():
    x = torch.randn(2, 3, 4, 2, 2)
    vc, vu = torch.randn_like(x), torch.randn_like(x)
    s, s2 = torch.tensor([0.8, 0.5]), torch.tensor([0.7, 0.25])
    out = teacher_cfg_euler_step(x, vc, vu, s, s2, 3.0)
    v = vu + 3.0 * (vc - vu)
    expect = x - (s - s2).view(2, 1, 1, 1, 1) * v
    assert torch.allclose(out, expect, atol=1e-6)
    # cfg 1 is the conditional velocity alone; an exact velocity field lands on its line
    x0, eps = torch.randn_like(x), torch.randn_like(x)
    xt = flow.add_noise(x0, eps, s)
    step = teacher_cfg_euler_step(xt, flow.velocity_target(x0, eps), None, s, s2, 1.0)
    assert torch.allclose(step, flow.add_noise(x0, eps, s2), atol=1e-6)


def test_consistency_and_ode_losses_only_train_the_student():
    a = torch.randn(2, 3, 4, requires_grad=True)
    b = torch.randn(2, 3, 4, requires_grad=True)
    loss = consistency_loss(a, b)
    loss.backward()
    assert torch.allclose(loss, ((a - b) ** 2).mean()) and b.grad is None
    assert torch.allclose(a.grad, 2 * (a - b).detach() / a.numel())
    c = torch.randn(2, 3, 4, requires_grad=True)
    assert torch.allclose(ode_regression_loss(c, b), ((c - b) ** 2).mean())


def test_trajectory_indices_pick_the_student_sigmas_on_the_teacher_grid():
    grid = flow.sigma_grid(49, 3.0)
    idx = trajectory_indices(48, flow.step_list(2, 3.0), 3.0)
    assert idx[0] == 0 and len(idx) == 2
    assert abs(float(grid[idx[1]]) - flow.step_list(2, 3.0)[1]) < 0.02


def test_dmd_gradient_and_loss():
    x = torch.randn(2, 3, 4, requires_grad=True)
    real, fake = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    grad = dmd_gradient(x.detach(), fake, real)
    norm = (x.detach() - real).abs().mean(dim=(1, 2), keepdim=True)
    assert torch.allclose(grad, (fake - real) / norm)
    dmd_loss(x, grad).backward()
    assert torch.allclose(x.grad, grad / x.numel(), atol=1e-7)  # the loss pushes x along -grad
    assert torch.equal(dmd_gradient(x.detach(), real, real), torch.zeros_like(real))
    s = dmd_sigma(1000, 3.0, generator=torch.Generator().manual_seed(1))
    assert s.min() >= 0.02 and s.max() <= 0.98 and s.mean() > 0.5  # the shift favours high noise


def test_ema():
    m, e = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    e.load_state_dict(m.state_dict())
    with torch.no_grad():
        m.weight.add_(1.0)
    before = e.weight.clone()
    ema_update(e, m, 0.99)
    assert torch.allclose(e.weight, 0.99 * before + 0.01 * m.weight)


def test_cd_stage_trains_and_resumes_its_target(tmp_path, monkeypatch, capsys):
    """Causal CD on a tiny teacher: the loss is finite and logged with the teacher NFE count, the
    target network is in the checkpoint, and a run resumed with more steps restores that target
    (and its counters) and trains on to the new step count; then the later stages and reports
    built on it, checked by their JSON fields."""
    import json
    import os
    import subprocess
    import sys

    from tests.trainer_helpers import ROOT, record_tiny_dataset, tiny_ae_config, write_config
    from trainer.checkpoint import latest_checkpoint, load_weights

    env = {**os.environ, "DREAMSTEP_NO_BAR": "1", "OMP_NUM_THREADS": "1"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "trainer", *a], cwd=ROOT, env=env,  # noqa: E731
                                    capture_output=True, text=True)
    ds = record_tiny_dataset(tmp_path / "tiny-v0", episodes=4, steps=24)
    assert run("autoencoder", "--config", str(tiny_ae_config(tmp_path, ds, "ae", steps=2))).returncode == 0
    t_cfg = write_config(tmp_path / "teacher.yaml", "adventure_teacher.yaml", run_dir=str(tmp_path / "teacher"),
                         autoencoder=str(tmp_path / "ae"), latent_cache_dir=str(tmp_path / "lat"), frames=4,
                         data={"dataset": str(ds), "holdout_episodes": 1},
                         model={"latent_channels": 8, "width": 32, "depth": 1, "heads": 2, "window": 4},
                         train={"steps": 6, "batch_size": 4, "log_every": 2, "ckpt_every": 6, "eval_every": 0,
                                "warmup": 1}, eval_windows=4)
    assert run("teacher", "--config", str(t_cfg)).returncode == 0
    # a new teacher run can start from a trained one's weights (e.g. the shipped teacher)
    from trainer.config import load_config
    from trainer.stages.teacher import TeacherExperiment, TeacherStage

    cont = load_config(TeacherExperiment, t_cfg, {"init": str(tmp_path / "teacher"), "run_dir": str(tmp_path / "t2")})
    st = TeacherStage(cont)
    ema = load_weights(latest_checkpoint(tmp_path / "teacher"), "ema")
    assert all(torch.equal(v, ema["net." + k]) for k, v in st.net.state_dict().items())
    cd_cfg = write_config(tmp_path / "cd.yaml", "adventure_cd_frame2.yaml", run_dir=str(tmp_path / "cd"),
                          teacher=str(tmp_path / "teacher"), latent_cache_dir=str(tmp_path / "lat"), frames=4,
                          data={"dataset": str(ds), "holdout_episodes": 1}, loss={"cfg": 2.0, "n_points": 8},
                          train={"steps": 6, "batch_size": 4, "log_every": 2, "ckpt_every": 3, "eval_every": 3,
                                 "warmup": 1, "lr": 0.001}, eval_windows=4)
    # Stage 2a on the same tiny teacher: trajectories stored with their cost, then the regression trains
    ode_cfg = write_config(tmp_path / "ode.yaml", "adventure_ode_frame2.yaml", run_dir=str(tmp_path / "ode"),
                           teacher=str(tmp_path / "teacher"), latent_cache_dir=str(tmp_path / "lat"), frames=4,
                           trajectories=str(tmp_path / "traj"), data={"dataset": str(ds), "holdout_episodes": 1},
                           ode={"samples": 6, "solve_steps": 4, "cfg": 2.0, "batch": 4},
                           train={"steps": 4, "batch_size": 2, "log_every": 2, "ckpt_every": 4, "eval_every": 0,
                                  "warmup": 1}, eval_windows=4)
    r = run("ode", "--config", str(ode_cfg))
    assert r.returncode == 0, r.stderr[-2000:]
    cost = json.loads((tmp_path / "traj" / "trajectories.json").read_text())
    # 4 Euler steps + 1 clean-context pass, conditional and unconditional (CFG 2)
    assert cost["samples"] == 6 and cost["teacher_nfe"] == 6 * (4 + 1) * 2 and cost["bytes_stored"] > 0
    assert cost["stored_sigmas"][0] == 1.0 and len(cost["stored_sigmas"]) == 2
    with np.load(tmp_path / "traj" / "trajectories.npz") as z:
        assert z["states"].shape[:3] == (6, 2, 4) and z["endpoints"].shape[:2] == (6, 4)
    r = run("cd", "--config", str(cd_cfg))
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [json.loads(ln) for ln in (tmp_path / "cd" / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in recs if "loss" in x]
    assert len(losses) == 3 and all(np.isfinite(losses))
    nfe = [x["teacher_nfe"] for x in recs if "teacher_nfe" in x]
    assert nfe[-1] == 6 * 4 * 2  # one cond + one uncond teacher forward per sample with CFG
    assert any("eval/x0_mse_2step" in x for x in recs)
    # the recorded config keeps the CD loss settings beside the resolved shift the world loads with
    loss = json.loads((tmp_path / "cd" / "config.json").read_text())["loss"]
    assert loss["cfg"] == 2.0 and loss["n_points"] == 8 and loss["shift"] == 3.0
    ck = latest_checkpoint(tmp_path / "cd")
    tgt = load_weights(ck, "target")
    student = load_weights(ck, "model")
    teacher = load_weights(latest_checkpoint(tmp_path / "teacher"), "ema")
    assert set(tgt) == set(student) == set(teacher)
    # the target trails the student (EMA 0.99): between the teacher it started from and the student
    k = next(k for k in student if "mlp" in k or "qkv" in k)
    d_ts = (teacher[k] - student[k]).abs().sum()
    assert 0 < (tgt[k] - teacher[k]).abs().sum() < d_ts
    # resume: a copy of the run goes on from its final step-6 checkpoint to 8 steps (the same command with
    # --set train.steps=8, run in this process to read the target network the moment training resumes)
    import shutil

    from trainer.__main__ import main as trainer_main
    from trainer.stages.cd import CDStage

    assert ck.name == "step_00000006"
    more = tmp_path / "cd_more"
    shutil.copytree(tmp_path / "cd", more)
    at_resume: list[dict[str, torch.Tensor]] = []
    after_step = CDStage.after_step

    def spy(self, model):  # the target before the first EMA update after the resume
        if not at_resume:
            at_resume.append({n: v.detach().clone() for n, v in self.target.state_dict().items()})
        after_step(self, model)

    with monkeypatch.context() as m:
        m.setattr(CDStage, "after_step", spy)
        m.setenv("DREAMSTEP_NO_BAR", "1")
        m.chdir(ROOT)  # the trainer's main changes to the repository: undone after it
        capsys.readouterr()
        assert trainer_main(["cd", "--config", str(cd_cfg), "--device", "cpu", "--set", f"run_dir={more}",
                             "--set", "train.steps=8"]) == 0
    said = capsys.readouterr().out
    assert f"resumed from {more / 'checkpoints' / ck.name} at step 6" in said, said[-2000:]
    assert at_resume and at_resume[0].keys() == tgt.keys()
    assert all(torch.equal(at_resume[0][n], tgt[n]) for n in tgt)  # the saved target, not a new teacher copy
    changes = [json.loads(ln) for ln in (more / "config_changes.jsonl").read_text().splitlines()]
    assert [c["step"] for c in changes] == [6] and changes[0]["changes"]["train.steps"] == [6, 8]
    recs2 = [json.loads(ln) for ln in (more / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in recs2 if "loss" in x] == [2, 4, 6, 8]  # the first run's, then the resumed step
    resumed = next(x for x in recs2 if "loss" in x and x["step"] == 8)
    assert np.isfinite(resumed["loss"]) and resumed["teacher_nfe"] == 8 * 4 * 2  # counted on from 48
    ck2 = latest_checkpoint(more)
    meta2 = json.loads((ck2 / "meta.json").read_text())
    assert ck2.name == "step_00000008" and meta2["final"] and meta2["config"]["train"]["steps"] == 8
    tgt2 = load_weights(ck2, "target")
    assert all(torch.isfinite(v).all() for v in tgt2.values())
    assert any(not torch.equal(tgt2[n], tgt[n]) for n in tgt)  # and its EMA went on from there
    # Stage 3 on the CD student: self-rollout DMD with an online fake score
    dmd_cfg = write_config(tmp_path / "dmd.yaml", "adventure_cfpp_frame2.yaml", run_dir=str(tmp_path / "dmd"),
                           generator=str(tmp_path / "cd"), teacher=str(tmp_path / "teacher"),
                           latent_cache_dir=str(tmp_path / "lat"), frames=4,
                           data={"dataset": str(ds), "holdout_episodes": 1},
                           dmd={"critic_updates": 2, "real_cfg": 2.0},
                           train={"steps": 4, "batch_size": 2, "log_every": 2, "ckpt_every": 2, "eval_every": 0,
                                  "warmup": 1}, eval_windows=4)
    r = run("dmd", "--config", str(dmd_cfg))
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [json.loads(ln) for ln in (tmp_path / "dmd" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(x["loss"]) and np.isfinite(x["fake_loss"]) for x in recs if "loss" in x)
    ck = latest_checkpoint(tmp_path / "dmd")
    assert (ck / "fake_score.safetensors").is_file() and (ck / "ema.safetensors").is_file()
    gen_w = load_weights(ck, "model")
    assert any(not torch.equal(gen_w[k], student[k]) for k in student)  # the generator moved
    # ship the teacher and the CF++ student, then compare them in one run (tiny protocol)
    ship = tmp_path / "ship"
    for run_name, name, extra in (("ae", "ae", []), ("teacher", "teacher", []), ("dmd", "cfpp_frame2", []),
                                  ("ode", "ode_frame2", []),
                                  ("dmd", "guided", ["--set", "sampler={kind: consistency, steps: 2, cfg: 1.5}"])):
        r = subprocess.run([sys.executable, "-m", "trainer.export", "--run", str(tmp_path / run_name), "--name", name,
                            "--out-dir", str(ship), *extra], cwd=ROOT, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
    import yaml

    card = yaml.safe_load((ship / "cfpp_frame2.yaml").read_text())
    assert card["stage2"]["method"] == "causal_cd" and card["stage2"]["teacher_nfe"] == 6 * 4 * 2
    assert card["stage2"]["bytes_stored"] == 0 and card["config"]["sampler"]["first_frame_steps"] == 4
    # the guidance a student plays with is set at export, as a mapping
    assert yaml.safe_load((ship / "guided.yaml").read_text())["config"]["sampler"]["cfg"] == 1.5
    # the CD student's quality against its Stage 2 cost (evaluations at steps 3 and 6)
    qc = card["stage2"]["quality_vs_cost"]
    assert [q["step"] for q in qc] == [3, 6] and [q["teacher_nfe"] for q in qc] == [24, 48]
    assert 0 < qc[0]["wall_s"] < qc[1]["wall_s"] and all("x0_mse_2step" in q for q in qc)
    ode_card = yaml.safe_load((ship / "ode_frame2.yaml").read_text())
    oq = ode_card["stage2"]["quality_vs_cost"]
    assert oq and oq[-1]["teacher_nfe"] == 60 and oq[-1]["wall_s"] >= ode_card["stage2"]["trajectory_wall_s"]
    # the Stage 2 claim on the flow map: every CD checkpoint (step 0 = the teacher) against the ODE student
    s2 = tmp_path / "stage2.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.stage2", "--out", str(s2), "--cd-run", str(tmp_path / "cd"),
                        "--ode", str(ship / "ode_frame2.safetensors"), "--windows", "4", "--solve-steps", "4",
                        "--threads", "1"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    fm = json.loads(s2.read_text())
    curve = fm["causal_cd"]["curve"]
    assert [p["step"] for p in curve] == [0, 3, 6] and [p["teacher_nfe"] for p in curve] == [0, 24, 48]
    assert [p.get("schedule_steps") for p in curve] == [None, 6, 6]  # the CD run's train.steps at each checkpoint
    assert fm["protocol"]["cfg"] == 2.0 and fm["protocol"]["solve_steps"] == 4  # the ODE card's guidance
    assert all(p["flow_mse_1step"] > 0 and np.isfinite(p["x0_mse_1step"]) for p in curve)
    assert curve[1]["flow_mse_1step"] != curve[0]["flow_mse_1step"]  # the student moved off the teacher
    cd_loss = json.loads(sorted((tmp_path / "cd" / "checkpoints").glob("step_*"))[-1].joinpath("meta.json")
                         .read_text())["config"]["loss"]
    grid = fm["causal_cd"]["grid"]  # the floor of the run's grid: the teacher's Euler solution on it
    assert grid["points"] == cd_loss["n_points"] and grid["target_decay"] == cd_loss["target_decay"]
    assert np.isfinite(grid["teacher_solution_flow_mse"]) and grid["teacher_solution_flow_mse"] > 0
    # the reference solved on the CD run's own grid and guidance: the floor is exactly zero
    s2g = tmp_path / "stage2_own_grid.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.stage2", "--out", str(s2g), "--cd-run", str(tmp_path / "cd"),
                        "--ode", "", "--windows", "4", "--solve-steps", str(cd_loss["n_points"] - 1), "--cfg",
                        str(cd_loss["cfg"]), "--threads", "1"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(s2g.read_text())["causal_cd"]["grid"]["teacher_solution_flow_mse"] == 0.0
    m2 = fm["matched"]
    assert m2["ode"] == fm["causal_ode"]["flow_mse_1step"] and fm["causal_ode"]["teacher_nfe"] == 60
    hit = next((p for p in curve if p["flow_mse_1step"] <= m2["ode"]), None)
    assert m2["reached"] == (hit is not None) and (hit is None or m2["cd_step"] == hit["step"])
    assert all("card_wall_s" not in p for p in curve)  # the default card timed another run
    # a card that timed this very run elsewhere (its evaluations equal the run's) lends its wall times
    cd_recs = [json.loads(ln) for ln in (tmp_path / "cd" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in cd_recs if "eval/x0_mse_2step" in r]
    qc_same = [{**{k[5:]: v for k, v in r.items() if k.startswith("eval/")}, "step": r["step"],
                "wall_s": 10.0 * r["step"]} for r in evals]
    (tmp_path / "same.yaml").write_text(yaml.safe_dump({"stage2": {"quality_vs_cost": qc_same}}))
    r = subprocess.run([sys.executable, "-m", "benchmarks.stage2", "--out", str(s2), "--cd-run", str(tmp_path / "cd"),
                        "--ode", str(ship / "ode_frame2.safetensors"), "--windows", "4", "--solve-steps", "4",
                        "--threads", "1", "--cd-card", str(tmp_path / "same.yaml")], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [p.get("card_wall_s") for p in json.loads(s2.read_text())["causal_cd"]["curve"]] == [0.0, 30.0, 60.0]
    # DMD from a shipped Stage 2 student: its card's Stage 2 cost goes into the DMD card
    abl_cfg = write_config(tmp_path / "abl.yaml", "adventure_cfpp_frame2.yaml", run_dir=str(tmp_path / "abl"),
                           generator=str(ship / "ode_frame2.safetensors"), teacher=str(tmp_path / "teacher"),
                           latent_cache_dir=str(tmp_path / "lat"), frames=4,
                           data={"dataset": str(ds), "holdout_episodes": 1},
                           dmd={"critic_updates": 1, "rollout_frames": 12},  # prefixes of 0-8 frames
                           train={"steps": 2, "batch_size": 2, "log_every": 1, "ckpt_every": 2, "eval_every": 0,
                                  "warmup": 1}, eval_windows=4)
    assert run("dmd", "--config", str(abl_cfg)).returncode == 0
    r = subprocess.run([sys.executable, "-m", "trainer.export", "--run", str(tmp_path / "abl"), "--name", "abl",
                        "--out-dir", str(ship)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    abl_card = yaml.safe_load((ship / "abl.yaml").read_text())
    assert abl_card["stage2"] == ode_card["stage2"]
    out = tmp_path / "compare.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.compare", "--out", str(out), "--variant",
                        f"teacher={ship / 'teacher.safetensors'}", "--variant",
                        f"cfpp_frame2={ship / 'cfpp_frame2.safetensors'}", "--variant",
                        f"ode_frame2={ship / 'ode_frame2.safetensors'}", "--variant",
                        f"cf_chunk4={tmp_path / 'nothing.safetensors'}", "--variant",
                        f"cfpp_frame1={tmp_path / 'nothing.safetensors'}", "--episodes", "2", "--timing-frames", "4",
                        "--long-episodes", "0", "--teacher-steps", "2", "--threads", "1", "--md",
                        str(tmp_path / "RESULTS.md"), "--strip", str(tmp_path / "strip.png"), "--stage2", str(s2)],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert set(rep["variants"]) == {"teacher", "cfpp_frame2", "ode_frame2"} and {"cf_chunk4", "cfpp_frame1"} <= set(rep["missing_variants"])
    m = rep["stage2_matched"]
    assert m["ode_teacher_nfe"] == 60 and m["ode_final"] == oq[-1]["x0_mse_2step"]
    assert m["reached"] == (m["cd_best"] <= m["ode_final"])
    v = rep["variants"]["cfpp_frame2"]
    for key in ("changed_psnr_mean_16", "seen_psnr_mean_16", "player_found_16", "action_accuracy",
                "sharpness_ratio_16", "first_frame_ms", "frame_ms_median", "stage2_teacher_nfe"):
        assert key in v, key
    assert v["sampler"] == {"kind": "consistency", "steps": 2, "cfg": 1.0, "first_frame_steps": 4}
    assert rep["variants"]["teacher"]["sampler"]["kind"] == "euler"
    assert v["first_frame_ms"] > 0 and v["stage2_teacher_nfe"] == 48
    # both students come from one teacher, so the Stage 2 cost is compared; a student of another
    # teacher (the long-context one) is named in the Markdown instead of being compared
    assert rep["stage2_unmatched"] is None and v["distilled_from"] == rep["variants"]["ode_frame2"]["distilled_from"]
    from benchmarks.compare import render_markdown as render

    other = {**rep, "stage2_matched": None, "stage2_unmatched": "cfpp_frame2 was distilled from A, ode_frame2 from B"}
    assert "distilled from A, ode_frame2 from B" in render(other, rep["command"])
    # the flow-map comparison it carries, by its JSON: the stage2 report as written, whose points within the
    # claim's budget (0.35 x the ODE student's 60 teacher forwards) are step 0 only, under one schedule throughout
    flow = json.loads(s2.read_text())
    assert rep["command"].startswith("python -m benchmarks.compare ") and rep["stage2_flow_maps"] == [flow]
    assert flow["causal_ode"]["teacher_nfe"] == 60 and flow["causal_cd"]["grid"] == grid
    assert [p["step"] for p in flow["causal_cd"]["curve"] if p["teacher_nfe"] <= 0.35 * 60] == [0]
    assert {p["schedule_steps"] for p in flow["causal_cd"]["curve"] if "schedule_steps" in p} == {6}
    # the Markdown is that JSON rendered: one flow-map section, untitled for one run, a schedule note only
    # where the schedule changed (headings and notes counted, their wording not read)
    from benchmarks.compare import render_markdown

    def lines(md: str, start: str) -> list[str]:
        return [ln for ln in md.splitlines() if ln.startswith(start)]

    md = (tmp_path / "RESULTS.md").read_text()
    assert md == render_markdown(rep, rep["command"])
    assert len(lines(md, "## Stage 2 cost at equal flow-map error")) == 1
    assert not lines(md, "### Causal CD run") and not lines(md, "Schedule:")
    rep["stage2_flow_maps"][0]["causal_cd"]["curve"][2]["schedule_steps"] = 12  # as if resumed to 12 steps after 3
    assert len(lines(render_markdown(rep, rep["command"]), "Schedule:")) == 1
    # two CD runs (e.g. two grids) against the one ODE student: a section each, named by run and grid
    other = json.loads(s2.read_text())
    other["causal_cd"]["run"] = "runs/other_cd"
    other["causal_cd"]["grid"]["points"] = 8
    s2b = tmp_path / "stage2_other.json"
    s2b.write_text(json.dumps(other))
    r = subprocess.run([sys.executable, "-m", "benchmarks.compare", "--out", str(out), "--render-only", "--md",
                        str(tmp_path / "RESULTS.md"), "--stage2", str(s2), "--stage2", str(s2b)],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    rep2 = json.loads(out.read_text())
    assert [(f["causal_cd"]["run"], f["causal_cd"]["grid"]["points"]) for f in rep2["stage2_flow_maps"]] == \
        [(flow["causal_cd"]["run"], grid["points"]), ("runs/other_cd", 8)]
    md2 = (tmp_path / "RESULTS.md").read_text()
    assert md2 == render_markdown(rep2, rep2["command"])
    assert len(lines(md2, "## Stage 2 cost at equal flow-map error")) == 1 and len(lines(md2, "### Causal CD run")) == 2
    # speed alone, several streams at once (a vector env), rendered beside the batch-1 table
    tb = tmp_path / "timing_b2.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.compare", "--out", str(tb), "--timing-only",
                        "--timing-batch", "2", "--only", "cfpp_frame2", "--only", "teacher", "--variant",
                        f"teacher={ship / 'teacher.safetensors'}", "--variant",
                        f"cfpp_frame2={ship / 'cfpp_frame2.safetensors'}", "--timing-frames", "3", "--teacher-steps",
                        "2", "--threads", "1"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    tr = json.loads(tb.read_text())
    assert set(tr["timing"]) == {"teacher", "cfpp_frame2"} and tr["protocol"]["batch"] == 2
    assert all(t["first_frame_ms_min"] <= t["first_frame_ms"] <= t["first_frame_ms_max"] and t["frame_ms_median"] > 0
               for t in tr["timing"].values())
    assert tr["timing"]["cfpp_frame2"]["sampler"] == {"kind": "consistency", "steps": 2, "first_frame_steps": 4}
    from benchmarks.compare import load_variants, time_variant

    loaded, ae, *_ = load_variants({"cfpp_frame2": ship / "cfpp_frame2.safetensors"}, 2, 1.0)
    model, *_rest, sampler = loaded["cfpp_frame2"]
    decoded: list[int] = []
    decode = ae.decode
    ae.decode = lambda z: (decoded.append(z.shape[0]), decode(z))[1]
    size = ae.cfg.image_size
    time_variant(model, ae, sampler, np.zeros((4, size, size, 3), np.uint8), 2, 0, batch=3)
    assert decoded == [3, 3]  # every stream's frame is generated and decoded, frame after frame
    r = subprocess.run([sys.executable, "-m", "benchmarks.compare", "--out", str(out), "--render-only", "--md",
                        str(tmp_path / "RESULTS.md"), "--timing", str(tb)], cwd=ROOT, env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    rep3 = json.loads(out.read_text())
    assert rep3["timings"] == [tr]  # the batch-2 timing report, rendered beside the batch-1 table
    assert (tmp_path / "RESULTS.md").read_text() == render_markdown(rep3, rep3["command"])
    r = subprocess.run([sys.executable, "-m", "benchmarks.compare", "--out", str(tb), "--timing-only", "--only",
                        "cfpp_frame3"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "'cfpp_frame3' is not a variant" in r.stderr
    r = subprocess.run([sys.executable, "-m", "benchmarks.compare", "--out", str(out), "--render-only", "--md",
                        str(tmp_path / "RESULTS.md"), "--stage2", str(tmp_path / "none.json")],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "none.json does not exist" in r.stderr
    from PIL import Image

    with Image.open(tmp_path / "strip.png") as im:  # 7 columns; 2 episodes x (real + 3 variants) rows, x2
        h = im.size[0] // 14
        assert im.size == (14 * h, 2 * (2 * 4 * h + 4))


def test_matched_cost_finds_the_first_point_at_the_ode_quality():
    from benchmarks.compare import matched_cost

    ode = {"teacher_nfe": 1000, "wall_s": 200.0, "bytes_stored": 5,
           "quality_vs_cost": [{"step": 10, "x0_mse_2step": 0.5}, {"step": 20, "x0_mse_2step": 0.3}]}
    cd = {"quality_vs_cost": [{"step": 1, "x0_mse_2step": 0.6, "teacher_nfe": 100, "wall_s": 20.0},
                              {"step": 2, "x0_mse_2step": 0.29, "teacher_nfe": 200, "wall_s": 40.0},
                              {"step": 3, "x0_mse_2step": 0.2, "teacher_nfe": 300, "wall_s": 60.0}]}
    m = matched_cost(cd, ode)
    assert m["reached"] and m["cd_step"] == 2 and m["ode_final"] == 0.3
    assert m["nfe_ratio"] == 0.2 and m["wall_ratio"] == 0.2 and m["cd_best"] == 0.2
    cd["quality_vs_cost"] = cd["quality_vs_cost"][:1]
    m = matched_cost(cd, ode)
    assert not m["reached"] and "nfe_ratio" not in m and m["cd_final"] == 0.6
    assert matched_cost(None, ode) is None


def test_a_rollout_prefix_runs_without_grad_and_the_clip_follows_it_in_the_rolling_cache():
    from model.transformer import FrameTransformer, TransformerConfig
    from trainer.stages.dmd import self_rollout

    torch.manual_seed(0)
    net = FrameTransformer(TransformerConfig(latent_channels=4, latent_size=4, patch=2, width=32, depth=2, heads=2,
                                             window=3, sink=1))
    ctx = torch.randn(2, 1, 4, 4, 4)
    acts = torch.randint(0, 5, (2, 4))
    plain = self_rollout(net, ctx, acts, 2, 2, 3.0, 1, torch.Generator().manual_seed(1))
    assert plain.shape == (2, 4, 4, 4, 4) and torch.equal(plain[:, 0], ctx[:, 0])  # the real context first
    params = [p for p in net.parameters() if p.requires_grad]

    def grads(x: torch.Tensor) -> list[torch.Tensor | None]:
        return list(torch.autograd.grad(x.sum(), params, allow_unused=True, retain_graph=True))

    assert all(g is None or not g.any() for g in grads(plain[:, :1]))  # no grad into the frames before
    assert any(g is not None and g.any() for g in grads(plain[:, 1:]))
    # a prefix of 6 frames (twice the window): the clip's 3 frames come after it, the frame before
    # them is the prefix's last, generated (not the real context), and only the clip's frames carry grad
    long = self_rollout(net, ctx, acts, 2, 2, 3.0, 1, torch.Generator().manual_seed(1),
                        torch.randint(0, 5, (2, 6)))
    assert long.shape == (2, 4, 4, 4, 4) and not torch.equal(long[:, 0], ctx[:, 0])
    assert torch.isfinite(long).all() and all(g is None or not g.any() for g in grads(long[:, :1]))
    assert any(g is not None and g.any() for g in grads(long[:, 1:]))
    # the prefix's first frame is drawn with first-frame steps, as at inference: with the same
    # generator state the prefix's frame 1 equals the plain rollout's first generated frame
    first = self_rollout(net, ctx, acts[:, :2], 2, 2, 3.0, 1, torch.Generator().manual_seed(1))
    pre = self_rollout(net, ctx, acts[:, :2], 2, 2, 3.0, 1, torch.Generator().manual_seed(1),
                       acts[:, 1:2])  # a prefix of 1 frame under the same action
    assert torch.allclose(pre[:, 0], first[:, 1].detach(), atol=1e-6)


def test_the_scores_see_each_rollout_frame_under_its_own_action():
    """With a prefix, the clip the critic and the scores read starts at the prefix's last C frames:
    their actions are the prefix's, then the clip's generated frames keep the clip's actions."""
    from trainer.stages.dmd import clip_actions, rollout_actions

    acts = torch.tensor([[0, 1, 2, 3], [4, 3, 2, 1]])  # F = 4, the first C the context's
    assert torch.equal(clip_actions(acts, None, 1), acts)
    assert torch.equal(clip_actions(acts, torch.zeros(2, 0, dtype=torch.long), 1), acts)
    pre = torch.tensor([[7, 8, 9], [6, 5, 4]])
    assert torch.equal(rollout_actions(acts, pre, 1), torch.tensor([[0, 7, 8, 9, 1, 2, 3], [4, 6, 5, 4, 3, 2, 1]]))
    assert torch.equal(clip_actions(acts, pre, 1), torch.tensor([[9, 1, 2, 3], [4, 3, 2, 1]]))
    assert torch.equal(clip_actions(acts, pre, 2), torch.tensor([[8, 9, 2, 3], [5, 4, 2, 1]]))  # C = 2
    # a prefix shorter than the context: the frames before are the last real ones, then the prefix's
    assert torch.equal(clip_actions(acts, pre[:, :1], 2), torch.tensor([[1, 7, 2, 3], [3, 6, 2, 1]]))
