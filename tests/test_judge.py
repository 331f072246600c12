"""The action judge (trainer/judge.py): the frozen decoder + IDM read predicted frames differentiably,
and a teacher trains against them (loss.idm_weight)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from model import flow
from model.autoencoder import Autoencoder, AutoencoderConfig
from model.idm import IDMConfig, InverseDynamics
from tests.conftest import PIPELINE_ENV
from tests.trainer_helpers import ROOT, write_config
from trainer.judge import ActionJudge, judge_loss, pick_frames


def tiny_judge() -> ActionJudge:
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(image_size=32, latent_channels=4, enc_channels=(8, 8, 8), dec_width=8,
                                       dec_fine=8, dec_res_blocks=1, output="palette", palette_size=4))
    ae.set_palette(torch.tensor([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0]], dtype=torch.uint8))
    return ActionJudge(ae, InverseDynamics(IDMConfig(image_size=32, width=8, feature_dim=16)))


def test_frames_are_picked_after_the_first_below_the_noise_limit_and_with_their_action():
    sigma = torch.tensor([[0.1, 0.2, 0.9, 0.3, 0.1], [0.1, 0.9, 0.9, 0.9, 0.9]])
    drop = torch.tensor([[False, False, False, True, False], [False] * 5])
    clip, frame, valid = pick_frames(sigma, drop, per_clip=3, max_sigma=0.5, gen=torch.Generator().manual_seed(1))
    picked = {(int(c), int(f)) for c, f, ok in zip(clip, frame, valid) if ok}
    assert picked == {(0, 1), (0, 4)}  # frame 0 has no previous frame, 2 is too noisy, 3 dropped
    assert len(clip) == 6 and int(valid.sum()) == 2  # clip 1 has none: its picks are padding


def test_the_judge_is_frozen_and_its_gradient_teaches_the_frame_the_action():
    judge = tiny_judge()
    judge.train()
    assert not judge.training and not any(p.requires_grad for p in judge.parameters())
    with torch.no_grad():  # a random IDM barely tells frames apart: a sharper one, so that 100 steps show it
        for p in judge.idm.parameters():
            p.mul_(3.0)
    g = torch.Generator().manual_seed(0)
    B, F, C, h = 2, 3, 4, 4
    x0 = torch.randn(B, F, C, h, h, generator=g)
    eps = torch.randn(B, F, C, h, h, generator=g)
    sigma = torch.full((B, F), 0.4)
    x_t = flow.add_noise(x0, eps, sigma)
    v = flow.velocity_target(x0, eps).clone().requires_grad_(True)
    effective = torch.tensor([[0, 2, 3], [0, 1, 4]])
    drop = torch.zeros(B, F, dtype=torch.bool)
    opt = torch.optim.Adam([v], lr=0.3)
    first = None
    for _ in range(100):
        loss, m = judge_loss(judge, x0, x_t, sigma, v, effective, drop, per_clip=2, max_sigma=1.0)
        if first is None:
            first, first_acc = float(loss.detach()), m["judge_acc"]
        opt.zero_grad()
        loss.backward()
        assert v.grad[:, 0].abs().sum() == 0  # frame 0 has no transition to judge
        opt.step()
    assert float(loss.detach()) < 0.4 * first, (first, float(loss.detach()))
    assert m["judge_acc"] > first_acc
    # a palette decoder's soft image is the colour it decodes where it is sure (a sharpened decoder)
    with torch.no_grad():
        judge.ae.decoder.net[-2].weight.mul_(200.0)
    z = x0[:, 1]
    hard, soft = judge.ae.decode(z), judge.soft_image(z * 1.0)
    sure = judge.ae.decoder(judge.ae.denormalize(z)).softmax(1)
    mask = (sure.max(1).values > 0.999)[:, None].expand_as(hard)
    assert mask.float().mean() > 0.5
    assert torch.allclose(hard[mask], soft[mask], atol=5e-3)


def test_the_judge_pairs_each_predicted_frame_with_the_real_frame_before_it_and_its_effective_action():
    class Recorder(ActionJudge):
        def logits(self, prev, cur):
            self.seen = (prev.detach().clone(), cur.detach().clone())
            # reads frame k (its value is k + 100) as action k % 5: right exactly when the label is frame k's
            k = (cur[:, 0, 0, 0].detach() - 100).long()
            return 50.0 * torch.nn.functional.one_hot(k % 5, 5).float() + cur.sum() * 0

    rec = Recorder(tiny_judge().ae, tiny_judge().idm)
    B, F = 2, 5
    x0 = torch.arange(B * F, dtype=torch.float32).view(B, F, 1, 1, 1).expand(B, F, 4, 4, 4).contiguous()
    sigma = torch.full((B, F), 0.5)
    v = torch.zeros_like(x0)  # x0_hat = x_t: pass the clean frames as x_t to read the pairing back
    effective = torch.arange(B * F).view(B, F) % 5
    loss, m = judge_loss(rec, x0, x0 + 100, sigma, v, effective, torch.zeros(B, F, dtype=torch.bool),
                         per_clip=F, max_sigma=1.0)
    prev, cur = rec.seen
    assert len(prev) == B * (F - 1)
    assert torch.equal(cur[:, 0, 0, 0] - 100, prev[:, 0, 0, 0] + 1)  # the frame right after the previous one
    idx = (cur[:, 0, 0, 0] - 100).long()
    assert set(idx.tolist()) == {b * F + f for b in range(B) for f in range(1, F)}
    assert m["judge_acc"] == 1.0 and float(loss) < 1e-6  # labelled with the judged frame's effective action


def test_a_teacher_trains_with_the_judge_and_says_where_it_reads_the_controls(tiny_pipeline, tmp_path):
    run = tiny_pipeline / "run"
    dataset = run / "data" / "adventure-explorer-v0"  # where trainer.pipeline records
    base = dict(autoencoder=str(run / "autoencoder"), latent_cache_dir=str(tmp_path / "lat"), frames=4,
                data={"dataset": str(dataset), "holdout_episodes": 1},
                model={"latent_channels": 8, "width": 32, "depth": 1, "heads": 2, "window": 4},
                train={"steps": 4, "batch_size": 4, "log_every": 1, "eval_every": 0, "threads": 1},
                eval_windows=4, init=str(run / "teacher"))
    cmd = [sys.executable, "-m", "trainer", "teacher", "--config"]
    # without an IDM the judge's weight is refused, with the value and the key to set
    bad = write_config(tmp_path / "bad.yaml", "adventure_teacher.yaml", run_dir=str(tmp_path / "bad"),
                       loss={"idm_weight": 0.5}, **base)
    r = subprocess.run([*cmd, str(bad)], cwd=ROOT, env=PIPELINE_ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "idm_weight 0.5" in r.stderr + r.stdout and "set idm" in r.stderr + r.stdout
    good = write_config(tmp_path / "good.yaml", "adventure_teacher.yaml", run_dir=str(tmp_path / "good"),
                        idm=str(run / "idm"), loss={"idm_weight": 0.5, "idm_frames": 2}, **base)
    r = subprocess.run([*cmd, str(good)], cwd=ROOT, env=PIPELINE_ENV, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    import json

    logged = [json.loads(line) for line in (tmp_path / "good" / "metrics.jsonl").read_text().splitlines()]
    judged = [m for m in logged if "judge_ce" in m]
    assert len(judged) == 4 and all(0 <= m["judge_acc"] <= 1 and m["judge_ce"] >= 0 for m in judged)
    for level in ("0.3", "0.6", "0.9"):
        assert f"heldout_judge_acc_s{level}" in out


def test_the_sampled_judge_reads_half_drawn_frames_and_teaches_the_model():
    """loss.idm_steps: frames sampled part of the way (no grad), the prediction there judged with grad."""
    from model.transformer import FrameTransformer, TransformerConfig
    from trainer.stages.teacher import TeacherForcing, TeacherLossConfig, sampled_judge_loss

    judge = tiny_judge()
    torch.manual_seed(0)
    net = FrameTransformer(TransformerConfig(latent_channels=4, latent_size=4, width=32, depth=1, heads=2,
                                             window=4, num_actions=5))
    model = TeacherForcing(net)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(3, 4, 4, 4, 4, generator=g)
    actions = torch.randint(0, 5, (3, 4), generator=g)
    cfg = TeacherLossConfig(idm_weight=1.0, idm_steps=4, idm_clips=2, idm_frames=3)
    levels = set()
    for seed in range(6):
        loss, m = sampled_judge_loss(model, judge, x0, actions, actions, cfg, torch.Generator().manual_seed(seed))
        levels.add(round(m["judge_sigma"], 4))
    # stopped after 1..3 of 4 steps of the shifted grid: sigma 0.9, 0.75 or 0.5, never pure noise or 0
    assert levels <= {0.9, 0.75, 0.5} and len(levels) >= 2
    model.zero_grad()
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and sum(float(gr.abs().sum()) for gr in grads) > 0
    with pytest.raises(ValueError, match="idm_steps"):
        TeacherLossConfig(idm_steps=1)


def test_the_judge_adds_its_weighted_cross_entropy_to_the_teacher_loss():
    """teacher_forcing_loss with the judge = the flow loss (same noise) + idm_weight * the judge's CE."""
    from model.transformer import FrameTransformer, TransformerConfig
    from trainer.stages.teacher import TeacherForcing, TeacherLossConfig, teacher_forcing_loss

    judge = tiny_judge()
    torch.manual_seed(0)
    model = TeacherForcing(FrameTransformer(TransformerConfig(latent_channels=4, latent_size=4, width=32, depth=1,
                                                              heads=2, window=4, num_actions=5)))
    x0 = torch.randn(2, 4, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    actions = torch.randint(0, 5, (2, 4), generator=torch.Generator().manual_seed(2))
    for steps in (0, 4):  # the batch's own predictions, then frames being sampled
        cfg = TeacherLossConfig(idm_weight=0.5, idm_steps=steps, idm_frames=3, action_dropout=0.0)
        plain, _ = teacher_forcing_loss(model, x0, actions, cfg, 5, torch.Generator().manual_seed(7))
        judged, m = teacher_forcing_loss(model, x0, actions, cfg, 5, torch.Generator().manual_seed(7), judge=judge,
                                         effective=actions)
        assert m["judge_ce"] > 0
        assert float(judged) == pytest.approx(float(plain) + 0.5 * m["judge_ce"], rel=1e-5)


def test_the_judge_reads_frames_drawn_from_the_models_own_rollout(monkeypatch):
    """loss.idm_rollout_from: the judged clips' frames from that index on are the model's own (streamed
    without grad from the real frames before it); only frames drawn after a generated one are judged,
    each against the generated frame before it, and the judge's gradient still reaches the model."""
    import trainer.stages.teacher as teacher
    from model.transformer import FrameTransformer, TransformerConfig

    judge = tiny_judge()
    torch.manual_seed(0)
    net = FrameTransformer(TransformerConfig(latent_channels=4, latent_size=4, width=32, depth=1, heads=2,
                                             window=8, num_actions=5))
    model = teacher.TeacherForcing(net)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(3, 8, 4, 4, 4, generator=g)
    actions = torch.randint(0, 5, (3, 8), generator=g)
    own = teacher.own_frames(model, x0[:2], actions[:2], 3, 2, 3.0, torch.Generator().manual_seed(1))
    assert torch.equal(own[:, :3], x0[:2, :3]) and not torch.allclose(own[:, 3:], x0[:2, 3:])
    again = teacher.own_frames(net, x0[:2], actions[:2], 3, 2, 3.0, torch.Generator().manual_seed(1))
    assert torch.equal(own, again)  # the wrapper or the bare transformer, the same frames
    seen = {}
    real_loss = teacher.judge_loss

    def spy(judge_, x, x_t, sigma, v, eff, drop, *rest):
        seen["x"], seen["drop"] = x, drop
        return real_loss(judge_, x, x_t, sigma, v, eff, drop, *rest)

    monkeypatch.setattr(teacher, "judge_loss", spy)
    cfg = teacher.TeacherLossConfig(idm_weight=1.0, idm_steps=3, idm_clips=2, idm_frames=8, idm_prefix=6,
                                    idm_rollout_from=3, idm_rollout_steps=2)
    loss, m = teacher.sampled_judge_loss(model, judge, x0, actions, actions, cfg, torch.Generator().manual_seed(5))
    assert seen["x"].shape[:2] == (2, 6)
    assert torch.equal(seen["x"][:, :3], x0[:2, :3]) and not torch.allclose(seen["x"][:, 3:], x0[:2, 3:6])
    assert seen["drop"][:, :3].all() and not seen["drop"][:, 3:].any()
    assert m["judge_ce"] > 0
    model.zero_grad()
    loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in net.parameters() if p.grad is not None) > 0
    with pytest.raises(ValueError, match="idm_rollout_from"):
        teacher.TeacherLossConfig(idm_steps=4, idm_prefix=4, idm_rollout_from=3)
