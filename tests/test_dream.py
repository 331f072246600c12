"""The dreamed world on a tiny (untrained) model: the World contract, determinism, exact state replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from model.autoencoder import Autoencoder, AutoencoderConfig
from model.transformer import FrameTransformer, TransformerConfig
from world import InvalidActionError, InvalidSettingError, make_world

SMALL = {"rooms_x": 2, "rooms_y": 2}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("ship")
    torch.manual_seed(0)
    ae_cfg = {"latent_channels": 4, "enc_channels": [8, 8, 8], "dec_width": 8, "dec_fine": 8, "dec_res_blocks": 1,
              "output": "palette", "palette_size": 8}
    ae = Autoencoder(AutoencoderConfig(**ae_cfg))
    ae.set_palette(torch.randint(0, 256, (8, 3), dtype=torch.uint8))
    save_file({k: v.contiguous() for k, v in ae.state_dict().items()}, str(d / "ae.safetensors"))
    (d / "ae.yaml").write_text(yaml.safe_dump({"config": {"model": ae_cfg}}))
    tf_cfg = {"latent_channels": 4, "latent_size": 8, "patch": 2, "width": 32, "depth": 1, "heads": 2, "window": 4}
    net = FrameTransformer(TransformerConfig(**tf_cfg))
    for p in net.parameters():  # AdaLN-Zero starts as the identity: perturb so frames depend on actions
        p.data.add_(torch.randn_like(p) * 0.05)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(d / "tf.safetensors"))
    (d / "tf.yaml").write_text(yaml.safe_dump({"config": {
        "model": tf_cfg, "autoencoder": str(d / "ae.safetensors"), "world": "adventure", "world_settings": SMALL,
        "loss": {"shift": 3.0}}}))
    return str(d / "tf.safetensors")


def test_dream_world_contract_and_determinism(checkpoint):
    w = make_world("dream", checkpoint=checkpoint, steps=2, context=2, max_steps=5)
    assert w.action_names == ("NOOP", "UP", "DOWN", "LEFT", "RIGHT") and w.supports_state
    f0, info = w.reset(seed=3)
    rw = make_world("adventure", **SMALL)
    rw.reset(seed=3)
    real = rw.step(0).frame
    assert f0.shape == (64, 64, 3) and f0.dtype == np.uint8 and info["step"] == 0
    # the dream starts from the real world's last context frame (reset + context-1 NOOPs)
    assert np.array_equal(f0, real)
    frames = [w.step(a).frame for a in (4, 4, "UP")]
    res = w.step(0)
    assert res.reward == 0.0 and not res.terminated and not res.truncated
    assert w.step(0).truncated  # the 5th step since reset
    with pytest.raises(Exception, match="reset"):
        w.step(0)
    w2 = make_world("dream", checkpoint=checkpoint, steps=2, context=2, max_steps=5)
    w2.reset(seed=3)
    assert all(np.array_equal(a, w2.step(b).frame) for a, b in zip(frames, (4, 4, "UP")))
    with pytest.raises(InvalidActionError, match="valid"):
        w2.step(9)


def test_state_snapshot_replays_bit_exactly(checkpoint):
    w = make_world("dream", checkpoint=checkpoint, steps=1, sampler="consistency")
    w.reset(seed=1)
    for a in (1, 2, 3):
        w.step(a)
    state = w.get_state()
    log = (4, 4, 1, 0, 2)
    first = [w.step(a).frame for a in log]
    w.set_state(state)
    again = [w.step(a).frame for a in log]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    # the rolling window keeps the cache bounded however long the session runs
    for _ in range(12):
        w.step(4)
    assert w._session.cache.times.numel() <= w.model.cfg.window + w.model.cfg.sink


def test_bad_dream_settings_are_clear(checkpoint, tmp_path):
    with pytest.raises(InvalidSettingError, match="not found"):
        make_world("dream", checkpoint=str(tmp_path / "missing.safetensors"))
    with pytest.raises(InvalidSettingError, match="sampler"):
        make_world("dream", checkpoint=checkpoint, sampler="magic")
    with pytest.raises(InvalidSettingError, match="valid settings"):
        make_world("dream", checkpoint=checkpoint, stepz=2)


def test_the_card_sampler_guidance_is_the_default(checkpoint, tmp_path):
    import shutil
    from pathlib import Path

    src = Path(checkpoint)
    card = yaml.safe_load(src.with_suffix(".yaml").read_text())
    card["config"]["sampler"] = {"kind": "consistency", "steps": 1, "cfg": 1.5}
    shutil.copy(src, tmp_path / "g.safetensors")
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(card))
    ck = str(tmp_path / "g.safetensors")
    assert make_world("dream", checkpoint=ck).sampler.cfg == 1.5  # the card's sampler and its guidance
    assert make_world("dream", checkpoint=ck, cfg=2.0).sampler.cfg == 2.0  # an explicit setting wins
    assert make_world("dream", checkpoint=ck, sampler="euler").sampler.cfg == 1.0  # not the student's guidance
    assert make_world("dream", checkpoint=checkpoint).sampler.cfg == 1.0  # a card without one: off
    with pytest.raises(InvalidSettingError, match="cfg"):
        make_world("dream", checkpoint=ck, cfg=-1.0)
    from trainer.models import card_guidance

    # the same rule serves trainer.evaluate and benchmarks.compare
    assert card_guidance(card["config"], "consistency") == 1.5 and card_guidance(card["config"], "euler") == 1.0
    assert card_guidance({"sampler": {"cfg": 3.0}}, "euler") == 3.0 and card_guidance({}, "consistency") == 1.0


def _write_heads(d, ae_path: str, latent_channels: int, term_bias: float) -> str:
    from model.heads import HeadsConfig, RewardHeads

    cfg = {"latent_channels": latent_channels, "latent_size": 8, "num_actions": 5, "width": 8,
           "reward_values": [-1.0, 0.0, 1.0]}
    heads = RewardHeads(HeadsConfig(**cfg))
    with torch.no_grad():  # a head that always says "reward 1, episode over" (or never, with a low bias)
        heads.mlp[-1].weight.zero_()
        heads.mlp[-1].bias.copy_(torch.tensor([0.0, 0.0, 5.0, term_bias]))
    name = f"heads_{latent_channels}_{term_bias:+.0f}"
    save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, str(d / f"{name}.safetensors"))
    (d / f"{name}.yaml").write_text(yaml.safe_dump({"config": {"stage": "heads", "autoencoder": ae_path,
                                                               "model": cfg}}))
    return str(d / f"{name}.safetensors")


def test_dream_rewards_and_episode_ends_come_from_the_heads(checkpoint, tmp_path):
    from pathlib import Path

    ae_path = str(Path(checkpoint).parent / "ae.safetensors")
    ends = _write_heads(tmp_path, ae_path, 4, term_bias=9.0)
    w = make_world("dream", checkpoint=checkpoint, steps=1, sampler="consistency", heads=ends)
    w.reset(seed=2)
    res = w.step(4)
    assert res.reward == 1.0 and res.terminated and not res.truncated
    goes_on = _write_heads(tmp_path, ae_path, 4, term_bias=-9.0)
    w = make_world("dream", checkpoint=checkpoint, steps=1, sampler="consistency", heads=goes_on, max_steps=3)
    w.reset(seed=2)
    assert [w.step(0).terminated for _ in range(2)] == [False, False] and w.step(0).truncated
    # heads that read another autoencoder's latents are refused with the reason
    other_ae = tmp_path / "other_ae.safetensors"
    (tmp_path / "other_ae.yaml").write_text((Path(ae_path).with_suffix(".yaml")).read_text())
    from safetensors.torch import load_file

    st = load_file(ae_path)
    st[next(iter(st))] = st[next(iter(st))] + 1
    save_file(st, str(other_ae))
    wrong = _write_heads(tmp_path, str(other_ae), 4, term_bias=1.0)
    with pytest.raises(InvalidSettingError, match="latents of autoencoder"):
        make_world("dream", checkpoint=checkpoint, heads=wrong)
    with pytest.raises(InvalidSettingError, match="not found"):
        make_world("dream", checkpoint=checkpoint, heads=str(tmp_path / "none.safetensors"))


def test_dream_vector_env_steps_a_batch_and_autoresets(checkpoint, tmp_path):
    from pathlib import Path

    import gymnasium as gym

    from agent_env import DREAM_ENV_ID, DreamVectorEnv

    envs = DreamVectorEnv(3, checkpoint=checkpoint, steps=1, sampler="consistency", heads="", max_episode_steps=2)
    obs, info = envs.reset(seed=7)
    assert obs.shape == (3, 64, 64, 3) and obs.dtype == np.uint8 and envs.observation_space.contains(obs)
    real = make_world("adventure", **SMALL)
    for i in range(3):  # every episode starts at the real game's first frame of its seed
        f, _ = real.reset(seed=int(info["world_seed"][i]))
        assert np.array_equal(obs[i], f)
    o1, r, term, trunc, _ = envs.step(np.array([4, 1, 0]))
    assert not trunc.any() and (r == 0).all() and o1.shape == obs.shape
    _, _, term, trunc, _ = envs.step(np.array([4, 4, 4]))
    assert trunc.all() and not term.any()  # max_episode_steps=2
    o3, r, term, trunc, info = envs.step(np.array([2, 2, 2]))  # next-step autoreset
    assert not (term | trunc).any() and (r == 0).all()
    for i in range(3):
        f, _ = real.reset(seed=int(info["world_seed"][i]))
        assert np.array_equal(o3[i], f)
    o4, *_ = envs.step(np.array([4, 4, 4]))
    assert o4.shape == (3, 64, 64, 3)
    with pytest.raises(ValueError, match="actions must be 3 ints"):
        envs.step(np.array([4, 9, 0]))
    envs.close()
    # heads that end every episode: terminated on the first step, then a fresh episode
    ends = _write_heads(tmp_path, str(Path(checkpoint).parent / "ae.safetensors"), 4, term_bias=9.0)
    envs = gym.make_vec(DREAM_ENV_ID, num_envs=2, vectorization_mode="vector_entry_point", checkpoint=checkpoint,
                        steps=1, sampler="consistency", heads=ends)
    assert isinstance(envs, DreamVectorEnv)
    envs.reset(seed=1)
    _, r, term, trunc, _ = envs.step(np.array([1, 3]))
    assert term.all() and (r == 1.0).all()
    _, r, term, _, _ = envs.step(np.array([1, 3]))
    assert not term.any() and (r == 0).all()


def test_single_dream_env_passes_the_gymnasium_checker(checkpoint):
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    from agent_env import make_dream_env

    env = make_dream_env(checkpoint, steps=1, sampler="consistency")
    assert isinstance(env, gym.Env)
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


def test_dream_benchmark_writes_every_field(checkpoint, tmp_path):
    import json

    from benchmarks.dream import main as bench

    out = tmp_path / "dream.json"
    assert bench(["--out", str(out), "--checkpoint", checkpoint, "--frames", "4", "--repeats", "2",
                  "--env-steps", "8", "--batches", "1,4", "--session-frames", "600",
                  "--session-strip", str(tmp_path / "strip.png")]) == 0
    rep = json.loads(out.read_text())
    for key in ("fps_1step", "fps_2step", "first_frame_ms", "action_to_display_ms", "batch_speedup"):
        assert rep[key] > 0, key
    assert set(rep["env_steps_per_s"]) == {"1", "4"}
    assert rep["sampler_cfg"] == 1.0  # the tiny card has no guidance
    # the work per env step is the same at any batch (one batched forward); the ceiling is measured
    b1, b4 = rep["env_steps_per_s"]["1"], rep["env_steps_per_s"]["4"]
    assert b1["gflop_per_env_step"] > 0 and abs(b4["gflop_per_env_step"] / b1["gflop_per_env_step"] - 1) < 0.05
    assert b1["gflops"] > 0 and rep["matmul_gflops"]["median"] > 0 and rep["batch_speedup_ceiling"] > 0
    s = rep["long_session"]
    assert s["frames"] == 600 and s["non_finite_frames"] == 0 and s["frechet_last_256"] >= 0
    from PIL import Image

    assert s["frechet_frames"] == [256, 256]  # the first and the last 256 frames, whole
    assert s["strip"]["frames"] == [75 * k for k in range(1, 9)]  # 8 evenly spaced, the last one the last frame
    w, h = Image.open(tmp_path / "strip.png").size
    assert w == 8 * h  # 8 square frames side by side
    assert bench(["--out", str(out), "--checkpoint", str(tmp_path / "nope.safetensors")]) == 2


def test_same_step_autoreset_and_the_ppo_example(checkpoint, tmp_path):
    import json
    from pathlib import Path

    from agent_env import DreamVectorEnv
    from agent_env.ppo import main as ppo_main

    ends = _write_heads(tmp_path, str(Path(checkpoint).parent / "ae.safetensors"), 4, term_bias=9.0)
    envs = DreamVectorEnv(2, checkpoint=checkpoint, steps=1, sampler="consistency", heads=ends,
                          autoreset_mode="SameStep")
    envs.reset(seed=3)
    obs, r, term, _, info = envs.step(np.array([1, 2]))
    assert term.all() and info["_final_obs"].all() and info["final_obs"][0].shape == (64, 64, 3)
    real = make_world("adventure", **SMALL)
    for i in range(2):  # the returned frame already starts the next episode
        assert np.array_equal(obs[i], real.reset(seed=int(info["world_seed"][i]))[0])
    with pytest.raises(ValueError, match="autoreset_mode"):
        DreamVectorEnv(1, checkpoint=checkpoint, autoreset_mode="Sometimes")
    # the PPO example end to end at a tiny size: trains in the dream, scores in the real game
    goes_on = _write_heads(tmp_path, str(Path(checkpoint).parent / "ae.safetensors"), 4, term_bias=-9.0)
    out = tmp_path / "ppo"
    assert ppo_main(["--out", str(out), "--checkpoint", checkpoint, "--heads", goes_on, "--timesteps", "64",
                     "--envs", "2", "--n-steps", "16", "--steps", "1", "--episode-steps", "8",
                     "--eval-episodes", "2"]) == 0
    res = json.loads((out / "result.json").read_text())
    assert (out / "ppo.zip").is_file() and res["eval_seeds"][0] >= 1_000_000
    assert np.isfinite(res["agent_real_return_mean"]) and np.isfinite(res["random_real_return_mean"])
    lo, hi = res["agent_minus_random_ci95"]
    assert lo <= res["agent_real_return_mean"] - res["random_real_return_mean"] <= hi
    assert res["clearly_above_random"] == (lo > 0)
    assert ppo_main(["--out", str(out), "--checkpoint", checkpoint, "--heads", ""]) == 2  # nothing to learn


def test_the_shipped_external_dream_plays_with_the_games_own_keys():
    """The ViZDoom dream: its keymap and input combination are the real game's (gym actions)."""
    pytest.importorskip("vizdoom")
    from world import make_world

    w = make_world("dream", checkpoint="assets/checkpoints/doom_basic_dream.safetensors", steps=1)
    assert w.action_names == ("NOOP", "ATTACK", "MOVE_RIGHT", "MOVE_LEFT")
    km = w.keymap()
    assert km.action_for_key("right") == "MOVE_RIGHT" and set(km.keys.values()) <= set(w.action_names)
    assert w.action_for_pressed({"MOVE_RIGHT"}) == 2 and w.action_for_pressed(set()) == 0
    frame, _ = w.reset(seed=1_000_000)
    r = w.step(2)
    assert r.frame.shape == frame.shape == (64, 64, 3) and w.heads is not None
    w.close()


def test_dream_vector_env_starts_from_a_seeded_start_state_buffer(checkpoint):
    from agent_env import DreamVectorEnv

    envs = DreamVectorEnv(4, checkpoint=checkpoint, steps=1, sampler="consistency", heads="", max_episode_steps=2)
    buffer = np.stack([np.full((64, 64, 3), 10 * k, np.uint8) for k in range(6)])
    envs.set_start_frames(buffer)
    starts = []
    for _ in range(2):
        obs, info = envs.reset(seed=3)
        starts.append(info["start_index"].copy())
        for i in range(4):  # each row starts on the buffer frame it names
            assert np.array_equal(obs[i], buffer[info["start_index"][i]])
        assert (info["world_seed"] == -1).all()
    assert np.array_equal(starts[0], starts[1])  # the draws follow the seed
    assert not np.array_equal(envs.reset(seed=4)[1]["start_index"], starts[0]) or len(set(starts[0])) == 1
    with pytest.raises(ValueError, match="start frames must be"):
        envs.set_start_frames(buffer[:, :32])
    envs.set_start_frames(None)  # back to the real game's first frames
    obs, info = envs.reset(seed=3)
    assert (info["start_index"] == -1).all() and (info["world_seed"] >= 0).all()
    envs.close()


def test_the_heads_can_read_the_frames_encoded_again(checkpoint, tmp_path):
    from pathlib import Path

    ae_path = str(Path(checkpoint).parent / "ae.safetensors")
    heads = _write_heads(tmp_path, ae_path, 4, term_bias=-9.0)
    with pytest.raises(InvalidSettingError, match="heads_input"):
        make_world("dream", checkpoint=checkpoint, heads=heads, heads_input="pixels")
    w = make_world("dream", checkpoint=checkpoint, steps=1, sampler="consistency", heads=heads, heads_input="frames",
                   precision="fp32")
    w.reset(seed=2)
    seen = []
    real_outcomes = w.dreamer.outcomes

    def spy(z_prev, z, a):
        seen.append((z_prev.clone(), z.clone()))
        return real_outcomes(z_prev, z, a)

    w.dreamer.outcomes = spy
    f1 = w.step(4).frame
    state = w.get_state()
    f2 = w.step(1).frame
    # the heads read each dreamed frame encoded again, and the previous read carries over
    assert torch.equal(seen[0][1], w.dreamer.encode(f1[None])) and torch.equal(seen[1][1], w.dreamer.encode(f2[None]))
    assert torch.equal(seen[1][0], seen[0][1])
    w.set_state(state)
    w.step(1)
    assert torch.equal(seen[2][0], seen[0][1]) and torch.equal(seen[2][1], seen[1][1])  # restored exactly
    # the default reads the generated latents themselves
    lat = make_world("dream", checkpoint=checkpoint, heads=heads)
    assert lat.dreamer.heads_input == "latents"
    z = torch.zeros(1, 4, 8, 8)
    assert lat.dreamer.heads_view(z, f1[None]) is z
    # in bf16 the frames are encoded by a bf16 copy of the encoder: close to the fp32 encoding
    b = make_world("dream", checkpoint=checkpoint, heads=heads, heads_input="frames", precision="bf16")
    ref = b.dreamer.encode(f1[None])
    got = b.dreamer.heads_view(z, f1[None])
    assert got.dtype == torch.float32 and torch.allclose(got, ref, atol=0.05 * float(ref.abs().max()) + 1e-3)
    assert next(b.dreamer.ae.encoder.parameters()).dtype == torch.float32  # the dream's own encoder stays fp32


def test_the_vector_dream_reads_frames_for_its_heads_too(checkpoint, tmp_path):
    from pathlib import Path

    from agent_env.dream_vec import DreamVectorEnv

    ae_path = str(Path(checkpoint).parent / "ae.safetensors")
    heads = _write_heads(tmp_path, ae_path, 4, term_bias=-9.0)
    envs = DreamVectorEnv(3, max_episode_steps=2, checkpoint=checkpoint, steps=1, sampler="consistency", heads=heads,
                          heads_input="frames", autoreset_mode="SameStep", precision="fp32")
    obs, _ = envs.reset(seed=0)
    for _ in range(3):  # across an episode end: the restarted rows' reads are their start frames' encodings
        obs, rew, term, trunc, info = envs.step(np.array([1, 2, 4]))
        assert torch.allclose(envs._zh, envs.dreamer.encode(obs), atol=1e-5)
    assert (rew == 1.0).all()
