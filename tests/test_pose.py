"""Pose attention: each frame's pose is the running sum of its actions' moves, and each head adds a
learned bias by the displacement between a query's pose and a key's; the same in the teacher-forcing
layout, in streamed sessions (ring and dynamic caches, fused writes, row resets) and after a warm start."""

from __future__ import annotations

import pytest
import torch

from model.rollout import SamplerConfig, Session
from model.transformer import FrameTransformer, KVCache, RingKVCache, TransformerConfig
from tests.test_transformer import clip
from tests.test_transformer import tiny as _tiny

MOVES = [[0, 0], [0, -1], [0, 1], [-1, 0], [1, 0]]  # NOOP, UP, DOWN, LEFT, RIGHT


def tiny(pose: bool = True, **kw) -> FrameTransformer:
    """test_transformer's tiny randomised model, with pose attention (radius 2) unless ``pose`` is off."""
    return _tiny(**({"pose_moves": MOVES, "pose_radius": 2} if pose else {}), **kw)


def test_poses_are_the_running_sum_of_the_moves():
    model = tiny()
    acts = torch.tensor([[4, 4, 1, 5, 3, 0]])  # R R U null L NOOP
    assert model.frame_poses(acts).tolist() == [[[1, 0], [2, 0], [2, -1], [2, -1], [1, -1], [1, -1]]]
    assert model.frame_poses(acts, torch.tensor([[5, 5]]))[0, 0].tolist() == [6, 5]


@pytest.mark.parametrize("cache_cls", [KVCache, RingKVCache])
@pytest.mark.parametrize("block,window", [(1, 16), (1, 3), (2, 4)])
def test_streaming_with_poses_equals_the_teacher_forcing_forward(cache_cls, block, window):
    model = tiny(block_frames=block, window=window)
    x0, xt, sigma, actions = clip(F=8)
    full = model.forward_teacher(x0, xt, sigma, actions)
    cache = cache_cls(model.cfg)
    outs = []
    for s in range(0, 8, block):
        t, sl = torch.arange(s, s + block), slice(s, s + block)
        outs.append(model(xt[:, sl], sigma[:, sl], actions[:, sl], t, torch.zeros(block, dtype=torch.bool),
                          cache=cache))
        model(x0[:, sl], torch.zeros_like(sigma[:, sl]), actions[:, sl], t, torch.ones(block, dtype=torch.bool),
              cache=cache, write_cache=True)
    assert torch.allclose(full, torch.cat(outs, 1), atol=1e-10)
    # the cache keeps each row's pose of each frame it holds
    last = model.frame_poses(actions)[:, -1]
    assert torch.equal(cache.pose_at(7), last)


def test_the_pose_bias_changes_what_a_frame_sees_and_starts_at_zero():
    model = tiny()
    x0, xt, sigma, actions = clip()
    a = model.forward_teacher(x0, xt, sigma, actions)
    other = actions.clone()
    other[:, 2] = torch.where(other[:, 2] == 1, 2, 1)  # the same frames, another path through the world
    b = model.forward_teacher(x0, xt, sigma, other, pose_actions=other)
    c = model.forward_teacher(x0, xt, sigma, other, pose_actions=actions)  # only the embedding differs
    assert not torch.allclose(a[:, 3:], b[:, 3:]) and not torch.allclose(b[:, 3:], c[:, 3:])
    # zero pose bias: exactly the model without poses (what a warm start begins from)
    plain = tiny(pose=False)
    posed = FrameTransformer(model.cfg).double().eval()
    posed.load_from(plain)
    assert torch.count_nonzero(posed.pose_bias) == 0
    assert torch.equal(posed.forward_teacher(x0, xt, sigma, actions), plain.forward_teacher(x0, xt, sigma, actions))


@pytest.mark.parametrize("cache", ["ring", "dynamic"])
def test_a_session_tracks_each_rows_pose_through_fused_writes_and_resets(cache):
    model = tiny(window=4).float()
    gen = torch.Generator().manual_seed(0)
    sess = Session(model, 2, generator=gen, cache=cache)
    start = torch.randn(2, 2, 3, 4, 4)
    sess.prime(start, torch.tensor([[4, 4], [1, 0]]), defer=True)
    sampler = SamplerConfig(kind="consistency", steps=2)
    steps = torch.tensor([[4, 3], [2, 2], [4, 1], [3, 3], [0, 4]])
    for a in steps:
        sess.generate(a[:, None], sampler, fuse=True)
    sess.flush()
    moved = model.frame_poses(torch.cat([torch.tensor([[4, 4], [1, 0]]), steps.T], 1))[:, -1]
    assert torch.equal(sess.cache.pose_at(sess.t - 1), moved)
    sess.reset_rows(torch.tensor([1]), torch.randn(1, 3, 4, 4))
    assert sess.cache.pose_at(sess.t - 1)[1].tolist() == [0, 0]
    assert torch.equal(sess.cache.pose_at(sess.t - 1)[0], moved[0])


def test_pose_settings_are_checked():
    with pytest.raises(ValueError, match="pose_moves"):
        TransformerConfig(num_actions=5, pose_moves=[[0, 0], [1, 0]])
    with pytest.raises(ValueError, match="pose_radius"):
        TransformerConfig(pose_radius=0)


def test_a_model_without_poses_keeps_none_in_its_caches():
    model = tiny(pose=False, window=4).float()
    for cache in ("ring", "dynamic"):
        sess = Session(model, 2, generator=torch.Generator().manual_seed(0), cache=cache)
        sess.prime(torch.randn(2, 2, 3, 4, 4), torch.tensor([[4, 4], [1, 0]]))
        sess.generate(torch.tensor([[4], [3]]), SamplerConfig(kind="consistency", steps=1))
        assert sess.cache.pose_at(sess.t - 1) is None


def test_the_probe_reads_the_pose_bias_per_head():
    from evaluation.memory_probe import pose_bias_summary

    model = tiny()
    assert pose_bias_summary(tiny(pose=False)) is None
    with torch.no_grad():
        model.pose_bias.zero_()
        model.pose_bias[0, 2 * 5 + 2] = 0.1  # head 0, displacement (0, 0) at radius 2
        model.pose_bias[1, -1] = -0.05       # head 1, beyond the radius
    s = pose_bias_summary(model)
    g = model.cfg.pose_gain
    assert s["zero"] == pytest.approx([0.1 * g, 0.0]) and s["beyond_radius"] == pytest.approx([0.0, -0.05 * g])
    assert s["within_1"][0] == pytest.approx(0.1 * g / 9, abs=1e-3)  # rounded to 3 digits


# ---------------------------------------------------------------- poses of the moves taken (pose_taken)
def stream_frames(model: FrameTransformer, cache, x0, xt, sigma, actions, taken=None) -> torch.Tensor:
    """The noisy frames denoised one at a time against ``cache``, each clean frame written after its
    noisy one (with its taken move): the streamed counterpart of ``forward_teacher``."""
    outs = []
    for s in range(x0.shape[1]):
        t, sl = torch.tensor([s]), slice(s, s + 1)
        outs.append(model(xt[:, sl], sigma[:, sl], actions[:, sl], t, torch.zeros(1, dtype=torch.bool), cache=cache))
        model(x0[:, sl], torch.zeros_like(sigma[:, sl]), actions[:, sl], t, torch.ones(1, dtype=torch.bool),
              cache=cache, write_cache=True, taken=None if taken is None else taken[:, sl])
    return torch.cat(outs, 1)


@pytest.mark.parametrize("cache_cls", [KVCache, RingKVCache])
def test_taken_poses_stream_as_the_teacher_forcing_layout_places_them(cache_cls):
    model = tiny(pose_taken=True)
    x0, xt, sigma, actions = clip(F=8)
    actions = actions.clamp(max=4)  # pressed keys (no null)
    taken = torch.rand(actions.shape, generator=torch.Generator().manual_seed(3)) < 0.6
    full, logits = model.forward_teacher(x0, xt, sigma, actions, taken=taken, return_taken=True)
    assert logits.shape == actions.shape
    cache = cache_cls(model.cfg)
    assert torch.allclose(full, stream_frames(model, cache, x0, xt, sigma, actions, taken), atol=1e-10)
    # a finished frame sits at the pose of the moves taken; a move into a wall does not count
    assert torch.equal(cache.pose_at(7), model.frame_poses(actions, taken=taken)[:, -1])
    # with every move taken, the layout is that of poses from the pressed keys
    plain = tiny()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith(("taken_head", "taken_prior"))})
    assert torch.allclose(model.forward_teacher(x0, xt, sigma, actions, taken=torch.ones_like(taken)),
                          plain.forward_teacher(x0, xt, sigma, actions), atol=1e-12)


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_a_session_places_frames_where_the_taken_head_says_the_player_went(cfg):
    model = tiny(pose_taken=True, window=4).float()
    moves = torch.tensor([[4], [4], [1]])  # RIGHT, RIGHT, UP
    for bias, want in ((10.0, [2, -1]), (-10.0, [0, 0])):
        with torch.no_grad():
            model.taken_head.bias.fill_(bias)
        for fuse in (False, True):
            sess = Session(model, 1, generator=torch.Generator().manual_seed(0))
            sess.prime(torch.randn(1, 1, 3, 4, 4), torch.zeros(1, 1, dtype=torch.long), defer=fuse)
            for a in moves:
                sess.generate(a[None], SamplerConfig(kind="euler", steps=2, cfg=cfg), fuse=fuse)
                assert sess.taken is not None and bool(sess.taken.all()) == (bias > 0)
            sess.flush()
            assert sess.cache.pose_at(sess.t - 1).tolist() == [want]


def test_the_taken_head_learns_which_moves_the_world_took():
    from trainer.stages.teacher import TeacherForcing, TeacherLossConfig, teacher_forcing_loss

    torch.manual_seed(0)
    model = tiny(pose_taken=True).float()
    x0, xt, sigma, actions = clip(F=6)
    x0, actions = x0.float(), actions.clamp(max=4)
    # a move is taken where the frame it leads to differs from the one before (a wall shows no change)
    taken = torch.rand(actions.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    x0[:, 1:][~taken[:, 1:]] = x0[:, :-1][~taken[:, 1:]]
    wrapped = TeacherForcing(model)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    cfg = TeacherLossConfig(action_dropout=0.0, taken_weight=1.0)
    first = None
    for _ in range(60):
        loss, m = teacher_forcing_loss(wrapped, x0, actions, cfg, model.cfg.null_action,
                                       torch.Generator().manual_seed(2), taken=taken)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = m["taken_bce"] if first is None else first
    assert m["taken_bce"] < 0.5 * first and m["taken_acc"] > 0.8, (first, m)


def test_the_balanced_taken_loss_weighs_blocked_and_taken_moves_alike():
    from trainer.stages.teacher import TeacherLossConfig, teacher_forcing_loss

    B, F = 2, 6
    x0 = torch.zeros(B, F, 3, 4, 4)
    actions = torch.full((B, F), 4)
    moving = torch.ones(B, F, dtype=torch.bool)
    moving[1, 0] = False  # a frame that does not count
    taken = torch.ones(B, F, dtype=torch.bool)
    taken[0, 2] = taken[1, 3] = False  # two blocked moves of 11
    logits = torch.linspace(-2.0, 3.0, B * F).view(B, F)

    def fixed(clean, x_t, sigma, acts, clean_sigma, pose_actions=None, taken=None):
        return torch.zeros_like(x_t), logits  # a model whose head reads these logits

    def head_loss(balance: bool) -> tuple[float, dict]:
        cfg = TeacherLossConfig(action_dropout=0.0, taken_weight=1.0, taken_balance=balance)
        zero = TeacherLossConfig(action_dropout=0.0, taken_weight=0.0)
        gen = torch.Generator().manual_seed(2)
        value, m = teacher_forcing_loss(fixed, x0, actions, cfg, 5, gen, taken=taken, moving=moving)
        base, _ = teacher_forcing_loss(fixed, x0, actions, zero, 5, torch.Generator().manual_seed(2),
                                       taken=taken, moving=moving)
        return float(value - base), m

    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, taken.float(), reduction="none")
    kept, blocked = moving & taken, moving & ~taken
    plain, m = head_loss(False)
    assert plain == pytest.approx(float(bce[moving].mean()), rel=1e-5)
    balanced, _ = head_loss(True)
    assert balanced == pytest.approx(0.5 * float(bce[kept].mean()) + 0.5 * float(bce[blocked].mean()), rel=1e-5)
    # logits -2..3: the blocked move at (0, 2) reads below 0 (called blocked), the one at (1, 3) above
    assert m["taken_blocked_recall"] == pytest.approx(0.5)
    assert m["taken_acc"] == pytest.approx(float(((logits > 0) == taken)[moving].float().mean()))


def test_the_prior_moves_the_decision_of_a_session_and_of_the_metrics():
    from trainer.stages.teacher import TeacherLossConfig, teacher_forcing_loss

    # a session: a head that reads -2 (blocked) decides "taken" once the prior log-odds exceed 2
    model = tiny(pose_taken=True, window=4).float()
    with torch.no_grad():
        model.taken_head.bias.fill_(-2.0)
    for prior, want in ((0.0, False), (3.0, True)):
        model.taken_prior.fill_(prior)
        sess = Session(model, 1, generator=torch.Generator().manual_seed(0))
        sess.prime(torch.randn(1, 1, 3, 4, 4), torch.zeros(1, 1, dtype=torch.long))
        sess.generate(torch.tensor([[4]]), SamplerConfig(kind="euler", steps=2))
        assert sess.taken is not None and bool(sess.taken.all()) == want
    # the metrics: logits -1 and +1 on one blocked and one taken move, read with prior 0 and 1.5
    logits = torch.tensor([[-1.0, 1.0]])
    taken = torch.tensor([[False, True]])

    def fixed(clean, x_t, sigma, acts, clean_sigma, pose_actions=None, taken=None):
        return torch.zeros_like(x_t), logits

    cfg = TeacherLossConfig(action_dropout=0.0, taken_weight=1.0)
    x0, acts = torch.zeros(1, 2, 3, 4, 4), torch.full((1, 2), 4)
    for prior, acc, recall in ((0.0, 1.0, 1.0), (1.5, 0.5, 0.0)):
        _, m = teacher_forcing_loss(fixed, x0, acts, cfg, 5, torch.Generator().manual_seed(0), taken=taken,
                                    taken_prior=prior)
        assert (m["taken_acc"], m["taken_blocked_recall"]) == (acc, recall)


def test_weights_saved_without_a_prior_load_with_prior_zero():
    model = tiny(pose_taken=True).float()
    model.taken_prior.fill_(3.0)
    state = {k: v for k, v in model.state_dict().items() if k != "taken_prior"}
    fresh = tiny(pose_taken=True).float()
    fresh.taken_prior.fill_(5.0)
    fresh.load_state_dict(state)  # strict: the missing prior is filled in
    assert fresh.taken_prior.item() == 0.0
    fresh.load_state_dict(model.state_dict())
    assert fresh.taken_prior.item() == 3.0
    # the loader's key check (checkpoints, init=, exports) lets the prior be missing, nothing else
    from model.io import CheckpointError, load_into

    load_into(fresh, state, "old weights")
    assert fresh.taken_prior.item() == 0.0
    with pytest.raises(CheckpointError, match=r"missing \['taken_head.bias'\]"):
        load_into(fresh, {k: v for k, v in state.items() if k != "taken_head.bias"}, "damaged weights")


def test_pose_taken_needs_pose_moves_and_a_warm_start_adds_a_fresh_head():
    with pytest.raises(ValueError, match="pose_taken needs pose_moves"):
        TransformerConfig(pose_taken=True)
    with pytest.raises(ValueError, match="frame-wise models only"):
        TransformerConfig(pose_moves=MOVES, pose_taken=True, block_frames=2)
    src = tiny()
    dst = FrameTransformer(TransformerConfig(**{**vars(src.cfg), "pose_taken": True})).double()
    dst.load_from(src)
    assert torch.equal(dst.pose_bias, src.pose_bias) and dst.taken_head.bias.item() == 2.0


# ---------------------------------------------------------------- pose values
@pytest.mark.parametrize("cache_cls", [KVCache, RingKVCache])
@pytest.mark.parametrize("taken", [False, True])
def test_pose_values_stream_as_the_teacher_forcing_layout_computes_them(cache_cls, taken):
    model = tiny(pose_values=True, pose_taken=taken, window=5)
    assert model.blocks[0].attn.pose_out.weight.abs().max() > 0  # randomised: the path is live
    x0, xt, sigma, actions = clip(F=8)
    actions = actions.clamp(max=4)
    tk = torch.rand(actions.shape, generator=torch.Generator().manual_seed(3)) < 0.6 if taken else None
    full = model.forward_teacher(x0, xt, sigma, actions, taken=tk)
    assert torch.allclose(full, stream_frames(model, cache_cls(model.cfg), x0, xt, sigma, actions, tk), atol=1e-10)


def test_pose_values_start_at_zero_and_tell_the_output_where_its_content_came_from():
    src = tiny()
    dst = FrameTransformer(TransformerConfig(**{**vars(src.cfg), "pose_values": True})).double().eval()
    dst.load_from(src)  # warm start: the added layers are zero, the output is the source's
    x0, xt, sigma, actions = clip()
    assert torch.equal(dst.forward_teacher(x0, xt, sigma, actions), src.forward_teacher(x0, xt, sigma, actions))
    with torch.no_grad():
        dst.pose_bias.zero_()  # the bias no longer tells displacements apart: only the values can
        for blk in dst.blocks:
            blk.attn.pose_out.weight.normal_()
    other = actions.clone()
    other[:, 1] = torch.where(other[:, 1] == 3, 4, 3)  # the same frames and keys, another displacement
    a = dst.forward_teacher(x0, xt, sigma, actions, pose_actions=actions)
    b = dst.forward_teacher(x0, xt, sigma, actions, pose_actions=other)
    assert not torch.allclose(a[:, 2:], b[:, 2:])
    with torch.no_grad():
        for blk in dst.blocks:
            blk.attn.pose_out.weight.zero_()
    assert torch.equal(dst.forward_teacher(x0, xt, sigma, actions, pose_actions=actions),
                       dst.forward_teacher(x0, xt, sigma, actions, pose_actions=other))
    with pytest.raises(ValueError, match="pose_values needs pose_moves"):
        TransformerConfig(pose_values=True)


def test_the_probe_redraws_a_frame_from_the_same_noise_with_its_key_hidden():
    from evaluation.memory_probe import redraw

    model = tiny(window=6).float()
    sess = Session(model, 2, generator=torch.Generator().manual_seed(0), cache="dynamic")
    sess.prime(torch.randn(2, 3, 3, 4, 4), torch.tensor([[0, 4, 4], [0, 1, 1]]))
    snap = sess.snapshot()
    before = sess.cache.poses.clone()
    pressed = torch.tensor([[3], [2]])
    drawn = sess.generate(pressed, SamplerConfig(kind="euler", steps=3), write=False)
    assert not torch.allclose(drawn, redraw(sess, snap, pressed, 3, 3.0))  # the key matters to this model
    # the frames of times 1-2 out of the pose bias's reach: another frame, and the cache as it was
    far = redraw(sess, snap, pressed, 3, 3.0, null_key=False, moved_times=torch.tensor([1, 2]))
    assert not torch.allclose(drawn, far) and torch.equal(sess.cache.poses, before)
    assert torch.allclose(drawn, redraw(sess, snap, pressed, 3, 3.0, null_key=False), atol=1e-5)
    moved = redraw(sess, snap, pressed, 3, 3.0, null_key=False, moved_times=torch.tensor([0]), offset=(1, 0))
    assert not torch.allclose(drawn, moved) and torch.equal(sess.cache.poses, before)
    with torch.no_grad():  # a null embedding equal to the pressed keys': the very same frame
        model.action_emb.weight[model.cfg.null_action] = model.action_emb.weight[3]
    same = torch.tensor([[3], [3]])
    sess.restore(snap)
    drawn = sess.generate(same, SamplerConfig(kind="euler", steps=3), write=False)
    assert torch.allclose(drawn, redraw(sess, snap, same, 3, 3.0), atol=1e-5)


def test_the_probe_redraws_the_return_with_the_hidden_walks_keys_hidden():
    from evaluation.memory_probe import redraw, redraw_hidden_keys_null

    model = tiny(window=8).float()
    ctx = torch.randn(1, 2, 3, 4, 4)
    acts = torch.tensor([[0, 4, 4, 4, 4, 3]])  # 2 context frames, 3 hidden RIGHTs, then the return (LEFT)
    taken = torch.ones_like(acts, dtype=torch.bool)

    def with_keys() -> torch.Tensor:  # the hidden walk written with its pressed keys, as the probe's draw
        gen = torch.Generator().manual_seed(5)
        sess = Session(model, 1, generator=gen, cache="dynamic")
        sess.prime(ctx, acts[:, :2], taken=taken[:, :2])
        sess.write(torch.randn(1, 3, 3, 4, 4, generator=gen), acts[:, 2:5], sigma=1.0, taken=taken[:, 2:5])
        return redraw(sess, sess.snapshot(), acts[:, -1:], 3, 3.0, null_key=False)

    hidden = redraw_hidden_keys_null(model, ctx, acts, taken, 2, 3, 5, 3, 3.0)
    assert not torch.allclose(with_keys(), hidden)  # the hidden keys matter to this model
    with torch.no_grad():  # a null embedding equal to RIGHT's: the very same frame
        model.action_emb.weight[model.cfg.null_action] = model.action_emb.weight[4]
    assert torch.allclose(with_keys(), redraw_hidden_keys_null(model, ctx, acts, taken, 2, 3, 5, 3, 3.0), atol=1e-5)


def test_guidance_s_null_action_call_places_the_frame_where_the_pressed_keys_put_it():
    """Action CFG: the null-action call keeps the poses of the pressed moves (training drops action
    tokens but keeps their poses), so guidance does not push the frame a move further along."""
    model = tiny()
    sess = Session(model, 1, generator=torch.Generator().manual_seed(0))
    sess.prime(torch.randn(1, 1, *clip(F=1)[0].shape[2:]), torch.zeros(1, 1, dtype=torch.long))
    seen: list[tuple[list[int], list]] = []
    forward = model.forward

    def spy(x, sigma, actions, times, clean, **kw):
        poses = kw.get("poses")
        if poses is None:
            poses = model.call_poses(actions, times, clean, kw.get("cache"), kw.get("taken"))
        seen.append((actions[0].tolist(), poses[0].tolist()))
        return forward(x, sigma, actions, times, clean, **kw)

    model.forward = spy  # type: ignore[method-assign]
    for a in (4, 4):  # RIGHT, RIGHT
        seen.clear()
        sess.generate(torch.tensor([[a]]), SamplerConfig(kind="euler", steps=2, cfg=2.0))
        null_calls = [p for acts, p in seen if acts == [model.cfg.null_action]]
        cond_calls = [p for acts, p in seen if acts == [a]]
        assert null_calls and cond_calls and all(p == cond_calls[0] for p in null_calls + cond_calls), seen
    assert cond_calls[0] == [[2, 0]]
