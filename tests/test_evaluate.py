"""The fidelity protocol: held-out seeds, baselines that equal themselves, and the command end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from evaluation.fidelity import fidelity, revisit_pairs, revisit_script
from evaluation.report import pair_text
from evaluation.rollouts import (
    EVAL_SEED_BASE,
    EvaluationError,
    RecordedRollouts,
    check_heldout,
    parse_actions,
    play_real,
)
from model.autoencoder import Autoencoder, AutoencoderConfig
from tests.trainer_helpers import ROOT, record_tiny_dataset, tiny_ae_config, write_config

ENV = {**os.environ, "DREAMSTEP_NO_BAR": "1", "OMP_NUM_THREADS": "1"}
SMALL = {"rooms_x": 2, "rooms_y": 2}


def test_evaluation_seeds_are_held_out(tmp_path):
    with pytest.raises(EvaluationError, match="held-out"):
        check_heldout([3], None)
    check_heldout([EVAL_SEED_BASE, EVAL_SEED_BASE + 1], None)
    # a dataset that (wrongly) used an evaluation seed is caught
    ds = tmp_path / "ds" / "data"
    ds.mkdir(parents=True)
    (ds / "metadata.json").write_text(json.dumps({"total_episodes": 2, "episode_seeds": [0, EVAL_SEED_BASE]}))
    with pytest.raises(AssertionError, match="appear in the training dataset"):
        check_heldout([EVAL_SEED_BASE], tmp_path / "ds")


def test_action_scripts(tmp_path):
    names = ["NOOP", "UP", "DOWN", "LEFT", "RIGHT"]
    f = tmp_path / "a.json"
    f.write_text(json.dumps(["up", 4, "NOOP"]))
    assert parse_actions(f, names) == [1, 4, 0]
    f.write_text(json.dumps({"actions": ["JUMP"]}))
    with pytest.raises(EvaluationError, match="JUMP"):
        parse_actions(f, names)
    with pytest.raises(EvaluationError, match="not found"):
        parse_actions(tmp_path / "missing.json", names)


def test_real_rollouts_follow_a_script_and_the_clip_convention():
    script = revisit_script(0, 3, leg=4)  # NOOP x2, RIGHT x4, LEFT x4
    r = play_real("adventure", SMALL, 2, 11, EVAL_SEED_BASE, script=script)
    assert r.frames.shape == (2, 11, 64, 64, 3) and r.actions.shape == (2, 11)
    assert r.actions[0, 0] == 0 and list(r.actions[0, 1:]) == script
    assert r.content is not None and r.content.shape == (2, 11, 64, 64)
    assert min(r.seeds) >= EVAL_SEED_BASE


def test_shift_aligned_psnr_finds_a_view_that_is_off_by_a_shift():
    """A frame whose content sits 3 px higher and 2 px further right than the real one's (shift
    (dy, dx) = (-3, 2)) is wrong only by position: the best
    shift finds it and the centre crop then matches exactly; a frame that is right reads the same
    at shift 0 and at its best; too large a shift for the frame is named."""
    from evaluation import metrics as M

    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    real = big[:, 8:32, 8:32]
    moved = big[:, 8 + 3:32 + 3, 8 - 2:32 - 2]
    zero, best, shift = M.shift_aligned_psnr(np.stack([moved[0], real[1]]), real, 4)
    assert shift.tolist() == [[-3, 2], [0, 0]]
    assert best[0] == pytest.approx(100.0) and zero[0] < 15  # exact once aligned; noise apart at 0
    assert best[1] == zero[1] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="max_shift must be in"):
        M.shift_aligned_psnr(real, real, 12)


def test_revisit_pairs_come_from_the_action_names():
    assert revisit_pairs(["NOOP", "UP", "DOWN", "LEFT", "RIGHT"]) == ((4, 3), (3, 4), (2, 1), (1, 2))
    assert revisit_pairs(["NOOP", "ATTACK", "MOVE_RIGHT", "MOVE_LEFT"]) == ((2, 3), (3, 2))
    assert revisit_pairs(["NOOP", "FIRE"]) == ()  # no opposite moves: no revisit test


def test_recorded_rollouts_are_the_played_ones(tmp_path):
    """Games without get_state/set_state are evaluated on a recorded held-out dataset: on a game
    that can be replayed, the recording gives the very frames and actions playing it gives."""
    ds = record_tiny_dataset(tmp_path / "held-v0", episodes=3, steps=24, seed=EVAL_SEED_BASE)
    rec = RecordedRollouts(ds).take(2, 20)
    played = play_real("adventure", {}, 1, 20, EVAL_SEED_BASE)  # episode 0: the explorer, as recorded
    np.testing.assert_array_equal(rec.frames[0], played.frames[0])
    np.testing.assert_array_equal(rec.actions[0], played.actions[0])
    assert rec.seeds == [EVAL_SEED_BASE, EVAL_SEED_BASE + 1] and rec.content is None
    with pytest.raises(EvaluationError, match="need 4 more episodes of at least 20 frames"):
        RecordedRollouts(ds).take(4, 20)
    train = record_tiny_dataset(tmp_path / "train-v0", episodes=1, steps=24, seed=0)
    with pytest.raises(EvaluationError, match="held-out"):  # training seeds are refused as evaluation data
        check_heldout(RecordedRollouts(train).take(1, 20).seeds, None)


def test_fidelity_of_the_baselines_themselves():
    C, H = 4, 6
    real = play_real("adventure", SMALL, 3, C + H, EVAL_SEED_BASE)
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(latent_channels=4, enc_channels=[8, 8, 8], dec_width=8, dec_fine=8,
                                       dec_res_blocks=1)).eval()
    last = real.frames[:, C - 1]
    copy = np.repeat(last[:, None], H, 1)
    r = fidelity(real, copy, C, ae, None, "adventure", 5)
    # a "model" that copies the last frame scores exactly the copy-last baseline
    assert r["psnr_at"] == r["copy_last_psnr_at"] and len(r["psnr_at"]) == H
    assert r["changed_psnr_mean_16"] == pytest.approx(r["copy_last_changed_psnr_mean_16"])
    assert r["seen_psnr_mean_16"] == pytest.approx(r["copy_last_seen_psnr_mean_16"])
    # a perfect model: PSNR at the cap, sharpness 1, the player always found where it is
    p = fidelity(real, real.frames[:, C:], C, ae, None, "adventure", 5)
    assert min(p["psnr_at"]) >= 99.0
    assert p["sharpness_ratio_16"] == pytest.approx(1.0)
    assert p["player_found_16"] == 1.0 and p["player_pos_err_16"] < 1.0
    assert 0.0 < p["seen_fraction_16"] <= 1.0
    # the untrained autoencoder is far below the perfect model
    assert p["ae_ceiling_psnr"] < 30


def test_evaluate_command_end_to_end(tmp_path):
    ds = record_tiny_dataset(tmp_path / "tiny-v0", episodes=4, steps=24)
    run = lambda *a: subprocess.run([sys.executable, "-m", *a], cwd=ROOT, env=ENV, capture_output=True,  # noqa: E731
                                    text=True)
    ae_cfg = tiny_ae_config(tmp_path, ds, "ae", steps=4)
    assert run("trainer", "autoencoder", "--config", str(ae_cfg)).returncode == 0
    idm_cfg = write_config(tmp_path / "idm.yaml", "adventure_idm.yaml", run_dir=str(tmp_path / "idm"),
                           data={"dataset": str(ds), "holdout_episodes": 1}, model={"width": 8, "feature_dim": 16},
                           train={"steps": 4, "batch_size": 8, "log_every": 2, "ckpt_every": 4, "eval_every": 0})
    assert run("trainer", "idm", "--config", str(idm_cfg)).returncode == 0
    t_cfg = write_config(tmp_path / "teacher.yaml", "adventure_teacher.yaml", run_dir=str(tmp_path / "teacher"),
                         autoencoder=str(tmp_path / "ae"), latent_cache_dir=str(tmp_path / "lat"), frames=4,
                         data={"dataset": str(ds), "holdout_episodes": 1},
                         model={"latent_channels": 8, "width": 32, "depth": 1, "heads": 2, "window": 4},
                         train={"steps": 4, "batch_size": 4, "log_every": 2, "ckpt_every": 4, "eval_every": 0,
                                "warmup": 1},
                         eval_windows=4)
    r = run("trainer", "teacher", "--config", str(t_cfg))
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "eval.json"
    args = ["trainer.evaluate", "--checkpoint", str(tmp_path / "teacher"), "--episodes", "2", "--horizon", "4",
            "--steps", "2", "--long-episodes", "1", "--long-horizon", "8", "--revisit-episodes", "1",
            "--idm", str(tmp_path / "idm"), "--out", str(out)]
    r = run(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(out.read_text())
    for key in ("psnr_at", "psnr_mean_16", "ssim_mean_16", "copy_last_psnr_at", "copy_last_psnr_mean_16",
                "ae_ceiling_psnr", "ae_sharpness_ratio", "gap_closed_1", "changed_psnr_mean_16",
                "copy_last_changed_psnr_mean_16", "seen_psnr_mean_16", "copy_last_seen_psnr_mean_16",
                "player_found_16", "player_pos_err_16", "sharpness_ratio_16", "action_accuracy",
                "idm_real_accuracy", "frechet_early", "frechet_late", "revisit_psnr", "sampler", "provenance"):
        assert key in rep, key
    assert len(rep["psnr_at"]) == 4 and rep["sampler"]["steps"] == 2
    # the revisit walk (32 steps) by step, and its return frame predicted from real frames only
    assert len(rep["revisit_psnr_at"]) == 32 and rep["revisit_psnr_at"][-1] == pytest.approx(rep["revisit_psnr"])
    assert np.isfinite(rep["revisit_teacher_forced_psnr"]) and rep["sampler"]["context_sigma"] == 0.0
    assert np.isfinite(rep["revisit_hidden_walk_psnr"])  # the return frame with the walk hidden
    # whether the walk ended where it began, from the moves the world took (one walk here)
    assert len(rep["revisit_returned"]) == len(rep["revisit_hidden_walk_psnr_each"]) == 1
    if rep["revisit_returned"][0]:
        assert rep["revisit_hidden_walk_psnr_returned"] == pytest.approx(rep["revisit_hidden_walk_psnr"])
    else:
        assert rep["revisit_hidden_walk_psnr_returned"] is None
    assert np.isfinite(rep["revisit_hidden_still_psnr"]) and np.isfinite(rep["copy_last_still_psnr"])
    # the return frame at its best shift reads at least as well as at shift 0 on the same crop
    assert rep["revisit_aligned_psnr"] >= rep["revisit_center_psnr"] and rep["revisit_shift_px"] >= 0
    assert 0.0 <= rep["action_accuracy"] <= 1.0 and np.isfinite(rep["frechet_late"])
    assert 0.0 <= rep["idm_ae_accuracy"] <= 1.0
    # the memory probe replays the memory test: its return frame's attention by key frame sums to 1
    probe = tmp_path / "probe.json"
    r = run("evaluation.memory_probe", "--checkpoint", str(tmp_path / "teacher"), "--episodes", "2", "--steps", "2",
            "--out", str(probe))
    assert r.returncode == 0, r.stderr[-2000:]
    pr = json.loads(probe.read_text())["results"][0]
    att = pr["attention"]
    assert att["context"] + att["hidden"] + att["own"] == pytest.approx(1.0, abs=1e-4)
    assert att["key_times"] == [0, 32, 33, 34, 35]  # window 4: the sink and 3 recent cached frames, then its own
    assert pr["model_calls_recorded"] == 2 and len(pr["psnr"]) == len(pr["copy_last_psnr"]) == 2
    assert all(a >= 0 for a in pr["aligned_psnr"])
    # ... and redraws the return frame from the same noise with its key hidden (tests/test_pose.py
    # checks the redraw itself)
    n = pr["null_action"]
    assert len(n["psnr"]) == len(n["shift_px"]) == 2 and all(0 < v <= 100 for v in n["psnr"])
    assert pr["hidden_far"] is None and pr["context_moved"] is None  # a model without poses
    assert pr["hidden_keys_null"] is None
    assert min(rep["protocol"]["eval_seeds"]) >= EVAL_SEED_BASE
    assert rep["provenance"]["weights_sha1"] and rep["provenance"]["command"].startswith("python -m evaluation")
    assert out.with_suffix(".md").read_text().startswith("# Evaluation")
    assert out.with_suffix(".png").stat().st_size > 1000
    # a given action script is used, and a bad one is a clear error
    script = tmp_path / "acts.json"
    script.write_text(json.dumps(["RIGHT"] * 7))
    r = run(*args[:-2], "--actions", str(script), "--long-episodes", "0", "--revisit-episodes", "0",
            "--out", str(tmp_path / "scripted.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "scripted.json").read_text())["protocol"]["action_script"] == [4] * 7
    # a frame strip: 2 episodes x (real, generated) rows of (context + horizons 1, 2, 4) frames
    strip = tmp_path / "strip.png"
    r = run(*args[:-2], "--long-episodes", "0", "--revisit-episodes", "0", "--strip", str(strip),
            "--out", str(tmp_path / "s.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    from PIL import Image

    assert Image.open(strip).size == (2 * 64 * 4, 2 * 64 * 4)
    script.write_text(json.dumps(["FLY"]))
    r = run(*args[:-2], "--actions", str(script), "--out", str(tmp_path / "bad.json"))
    assert r.returncode == 2 and "FLY" in r.stderr
    # shipping: export both runs as fp16 with model cards; the shipped teacher loads and evaluates
    ship = tmp_path / "ship"
    ae_w = ship / "tiny_ae.safetensors"
    r = run("trainer.export", "--run", str(tmp_path / "ae"), "--name", "tiny_ae", "--out-dir", str(ship),
            "--command", "python -m trainer autoencoder --config x.yaml")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run("trainer.export", "--run", str(tmp_path / "teacher"), "--name", "tiny_teacher", "--out-dir", str(ship),
            "--set", f"autoencoder={ae_w}", "--eval", str(out), "--curve", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    import yaml

    card = yaml.safe_load((ship / "tiny_teacher.yaml").read_text())
    for key in ("config", "data", "steps", "wall_time_s", "git_commit", "evaluation", "loss_curve"):
        assert key in card, key
    assert card["steps"] == 4 and card["config"]["autoencoder"] == str(ae_w)
    assert card["evaluation"][0]["psnr_mean_16"] == rep["psnr_mean_16"]
    assert card["quality_vs_steps"][0]["step"] == 4 == rep["provenance"]["step"]
    from safetensors.torch import load_file

    assert all(v.dtype == torch.float16 for k, v in load_file(str(ship / "tiny_teacher.safetensors")).items())
    r = run(*args[:2], str(ship / "tiny_teacher.safetensors"), *args[3:-2], "--long-episodes", "0",
            "--revisit-episodes", "0", "--out", str(tmp_path / "shipped.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    shipped = json.loads((tmp_path / "shipped.json").read_text())
    assert abs(shipped["psnr_mean_16"] - rep["psnr_mean_16"]) < 1.0  # fp16 weights, same seeds and noise
    r = run("trainer.export", "--run", str(tmp_path / "nothing"), "--name", "x", "--out-dir", str(ship))
    assert r.returncode == 2 and "no complete checkpoint" in r.stderr
    # a card of weights trained on from other weights: the earlier card is folded in, totals add up
    w_before = (ship / "tiny_teacher.safetensors").read_bytes()
    r = run("trainer.export", "--card", str(ship / "tiny_teacher.yaml"), "--continued-from",
            str(ship / "tiny_teacher.yaml"), "--curve", f"8={out}", "--notes", "continued")
    assert r.returncode == 0, r.stderr[-2000:]
    card2 = yaml.safe_load((ship / "tiny_teacher.yaml").read_text())
    assert card2["total_steps"] == 8 and card2["continued_from"]["steps"] == 4
    assert card2["quality_vs_steps"][0]["step"] == 8 and card2["notes"] == "continued"
    assert (ship / "tiny_teacher.safetensors").read_bytes() == w_before
    r = run("trainer.export", "--card", str(ship / "missing.yaml"))
    assert r.returncode == 2 and "missing.yaml" in r.stderr


@pytest.mark.parametrize("ae_kind", ["exact", "blank"])
def test_idm_ae_accuracy_reads_the_autoencoder_reconstructions(monkeypatch, ae_kind):
    """idm_ae_accuracy is the IDM on reconstructions of the real transitions: with an exact
    autoencoder it equals the IDM on the real ones, with one that erases the frames it falls."""
    import evaluation.fidelity as E

    rng = np.random.default_rng(0)
    M_, T, C, A = 3, 8, 2, 5
    frames = rng.integers(0, 256, (M_, T, 16, 16, 3), dtype=np.uint8)
    effective = rng.integers(1, A, (M_, T))
    frames[..., 0, 0, 0] = effective  # the stub IDM reads the action from the new frame's first pixel
    real = E.Rollouts(frames=frames, actions=effective.copy(), effective=effective,
                      player=np.full((M_, T, 2), np.nan), content=None, seeds=[1, 2, 3], policies=["p"] * M_)
    monkeypatch.setattr(E, "_idm_predict", lambda idm, prev, cur: cur.reshape(-1, *cur.shape[-3:])[:, 0, 0, 0] % A)
    monkeypatch.setattr(E, "reconstruct", (lambda ae, f: f.copy()) if ae_kind == "exact" else (lambda ae, f: np.zeros_like(f)))
    gen = rng.integers(0, 256, (M_, T - C, 16, 16, 3), dtype=np.uint8)
    r = E.fidelity(real, gen, C, ae=None, idm=object(), world="gym:stub", num_actions=A)
    assert r["idm_real_accuracy"] == 1.0
    assert r["idm_ae_accuracy"] == (1.0 if ae_kind == "exact" else 0.0)  # a blank frame reads action 0, never taken


def test_action_accuracy_splits_key_changes_from_held_keys(monkeypatch):
    """action_accuracy_switch/_hold: a dream that follows a held key but not a new press scores
    1 on held keys and 0 on changes; the overall accuracy is their share-weighted mean."""
    import evaluation.fidelity as E

    M_, T, C, A = 2, 10, 2, 4
    actions = np.array([[1, 1, 1, 2, 2, 2, 3, 3, 1, 1], [2, 2, 2, 2, 1, 1, 1, 1, 1, 3]])
    frames = np.zeros((M_, T, 16, 16, 3), np.uint8)
    frames[..., 0, 0, 0] = actions  # the stub IDM reads the action from the new frame's first pixel
    real = E.Rollouts(frames=frames, actions=actions, effective=actions.copy(), player=np.full((M_, T, 2), np.nan),
                      content=None, seeds=[1, 2], policies=["p"] * M_)
    monkeypatch.setattr(E, "_idm_predict", lambda idm, prev, cur: cur.reshape(-1, *cur.shape[-3:])[:, 0, 0, 0] % A)
    monkeypatch.setattr(E, "reconstruct", lambda ae, f: f.copy())
    gen = frames[:, C:].copy()
    gen[..., 0, 0, 0] = actions[:, C - 1:T - 1]  # the dream repeats the previous key: wrong only where it changed
    r = E.fidelity(real, gen, C, ae=None, idm=object(), world="gym:stub", num_actions=A)
    switch = actions[:, C:] != actions[:, C - 1:-1]
    assert r["switch_share"] == pytest.approx(switch.mean()) and 0 < r["switch_share"] < 1
    assert r["action_accuracy_hold"] == 1.0 and r["action_accuracy_switch"] == 0.0
    assert r["idm_real_accuracy_hold"] == r["idm_real_accuracy_switch"] == 1.0
    assert r["action_accuracy"] == pytest.approx(1 - r["switch_share"])
    assert r["action_accuracy_at"] == pytest.approx((~switch).mean(0).tolist())  # per horizon, over episodes
    # blank frames: no view scrolled, so every transition counts as on a still view
    assert r["view_moved_share"] == 0.0 and r["action_accuracy_view_moved"] is None
    assert r["action_accuracy_view_still"] == pytest.approx(r["action_accuracy"])
    assert pair_text(r, "action_accuracy_switch", "action_accuracy_hold") == "0.00 / 1.00"
    assert pair_text({}, "action_accuracy_switch", "action_accuracy_hold") is None  # an older report


def test_view_moved_tells_a_scroll_from_a_sprite_moving_on_a_still_view():
    import evaluation.fidelity as E

    rng = np.random.default_rng(0)
    world = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    prev = world[8:40, 8:40].copy()
    scrolled = world[10:42, 8:40].copy()  # the camera moved 2 px down
    still = prev.copy()
    still[14:18, 14:18] = 255  # a sprite moved on a still view
    blank = np.zeros_like(prev)
    moved = E.view_moved(np.stack([prev, prev, prev, blank]), np.stack([scrolled, still, prev, blank]))
    assert moved.tolist() == [True, False, False, False]


def test_creatures_found_reads_the_moving_creatures_from_the_worlds_state():
    """The real frames draw every visible creature at its state's position (found = 1); frames with the
    creatures painted over find none; empty spots away from creatures are not creatures."""
    from evaluation.fidelity import creature_stats, play_real
    from world.adventure import art, find_creatures

    real = play_real("adventure", {}, 2, 12, 1_000_000)
    pos = real.creatures
    assert pos is not None and len(pos) == 2 and len(pos[0]) == 12
    found, visible = creature_stats(real.frames, pos, find_creatures)
    assert sum(visible) > 0 and found == visible
    erased = real.frames.copy()
    for name in ("creature", "creature_light"):
        hit = (np.abs(erased.astype(int) - np.array(art.PALETTE[name])).sum(-1) < 90)
        erased[hit] = art.PALETTE["grass"]
    assert sum(creature_stats(erased, pos, find_creatures)[0]) == 0
    rng = np.random.default_rng(0)
    spots = rng.uniform(4, 60, (200, 2))
    frame, here = real.frames[0, 0], pos[0][0]
    far = np.array([s for s in spots if len(here) == 0 or np.hypot(*(here - s).T).min() > 8])
    assert find_creatures(frame, far).mean() < 0.05
