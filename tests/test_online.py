"""The RL benchmark's online mode: exact real-step accounting, heads fine-tuned on real transitions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import online, rl


def test_round_budgets_split_exactly():
    assert online.round_budgets(10, 3) == [4, 3, 3] and sum(online.round_budgets(20_000, 7)) == 20_000
    assert online.round_budgets(0, 2) == [0, 0]
    with pytest.raises(ValueError):
        online.round_budgets(5, 0)


def test_collection_plays_exactly_its_budget_on_training_seeds():
    trajs = online.collect("adventure", {}, lambda o: 4, budget=70, episode_steps=32,
                           seed_base=online.COLLECT_SEED_BASE)
    assert sum(len(t.actions) for t in trajs) == 70            # never more real steps than the budget
    assert [len(t.actions) for t in trajs] == [32, 32, 6]       # the last episode cut at the budget
    assert all(t.seed < 1_000_000 for t in trajs)               # the held-out seeds stay unplayed
    assert all(len(t.frames) == len(t.actions) + 1 for t in trajs)


def test_transitions_encode_each_trajectory_once_across_rounds():
    """The online rounds pass their growing trajectory list again: earlier latents are reused, only
    the new trajectories are encoded, and the transitions are the same as encoding all afresh."""
    from benchmarks.transfer import Trajectory

    class Counting:
        calls = 0

        def encode(self, frames: np.ndarray) -> torch.Tensor:
            Counting.calls += 1
            return torch.from_numpy(frames.astype(np.float32)).mean(-1)[:, None]

    rng = np.random.default_rng(0)

    def traj(t: int) -> Trajectory:
        return Trajectory(0, rng.integers(0, 255, (t + 1, 4, 4, 3), dtype=np.uint8), rng.integers(0, 5, t),
                          rng.random(t), np.zeros(t, dtype=bool))

    trajs = [traj(5), traj(0), traj(3)]
    enc: list[torch.Tensor] = []
    first = online.transitions(Counting(), trajs, enc)
    assert Counting.calls == 2 and len(enc) == 3 and len(first["action"]) == 8
    trajs.append(traj(4))
    again = online.transitions(Counting(), trajs, enc)
    assert Counting.calls == 3                          # only the new trajectory was encoded
    fresh = online.transitions(Counting(), trajs)
    assert all(torch.equal(again[k], fresh[k]) for k in fresh) and len(fresh["z"]) == 12


def test_finetuning_the_heads_lowers_their_loss_on_real_transitions():
    from model.heads import HeadsConfig, RewardHeads

    torch.manual_seed(0)
    heads = RewardHeads(HeadsConfig(latent_channels=4, latent_size=4, num_actions=5, width=16,
                                    reward_values=[-1.0, 0.0, 1.0]))
    n = 128
    z = torch.randn(n, 4, 4, 4)
    reward = torch.zeros(n)
    reward[::8] = 1.0  # a pickup whenever the next latent is bright
    zc = torch.randn(n, 4, 4, 4) + 3.0 * reward[:, None, None, None]
    data = {"z_prev": z, "z": zc, "action": torch.randint(0, 5, (n,)), "reward": reward,
            "terminated": torch.zeros(n, dtype=torch.bool)}
    out = online.finetune_heads(heads, data, steps=60, lr=3e-3)
    assert out["transitions"] == n and out["loss_after"] < 0.5 * out["loss_before"]
    r, _ = heads.predict(zc, zc, data["action"])
    assert (r[reward > 0] > 0).float().mean() >= 0.9


def test_the_online_mode_runs_in_the_benchmark_and_counts_its_real_steps(tmp_path):
    cfg = tmp_path / "rl.yaml"
    cfg.write_text(rl.CONFIG.read_text().replace("  enabled: false", "  enabled: true"))
    assert rl.main(["--quick", "--config", str(cfg), "--out", str(tmp_path / "all.json"), "--threads", "1",
                    "--agents", str(tmp_path / "agents"), "--only", "online"]) == 0
    rep = json.loads((tmp_path / "all.json").read_text())
    run = rep["settings"]["online"]["runs"][0]
    assert run["real_steps"] == 96 == sum(r["real_steps"] for r in run["rounds"])  # quick: 96 real steps, 2 rounds
    assert [r["dream_steps"] for r in run["rounds"]] == [128, 128]
    assert all(np.isfinite(r["heads"]["loss_after"]) for r in run["rounds"])
    assert rep["online"]["real_steps"] == 96 and len(run["returns"]) == 4
    assert set(rep["settings"]) == {"random", "online"}  # --only online trains only the online agents
