"""Floating-point work of the hot paths, from the model configs (a multiply-add counts 2 FLOPs).

Counted: every matrix product the code runs (linear layers, convolutions, the attention's
``Q K^T`` and ``A V``, dense over the keys it is given, masked or not, as the kernels compute them).
Not counted: element-wise work (norms, activations, softmax, the sampler's arithmetic), which is
small next to the products and bound by memory, not by the matrix units. This is the convention of
``torch.utils.flop_counter.FlopCounterMode``, which the tests check these formulas against.

A training step counts 3x its forward (the backward's two products per forward product); frozen
networks that only run forward (a distillation's teacher and target) count 1x.
"""

from __future__ import annotations

from model.autoencoder import AutoencoderConfig
from model.transformer import TransformerConfig


def transformer_forward(cfg: TransformerConfig, batch: int, frames: int, key_frames: int | None = None) -> int:
    """One forward of :class:`~model.transformer.FrameTransformer` on ``frames`` frames per row whose
    tokens attend to ``key_frames`` frames of keys (cache included; default: the same frames)."""
    D, L = cfg.width, cfg.tokens_per_frame
    hidden = int(cfg.width * cfg.mlp_ratio)
    patch = cfg.latent_channels * cfg.patch ** 2
    nq = frames * L
    nk = (frames if key_frames is None else key_frames) * L
    per_row = 2 * nq * patch * D                      # patch_in
    per_row += 2 * frames * (2 * D * D)               # t_mlp: two D x D linears per frame
    block = (2 * frames * D * 6 * D                   # AdaLN modulation, once per frame
             + 2 * nq * D * 3 * D                     # qkv
             + 2 * 2 * nq * nk * D                    # Q K^T and A V over all heads
             + 2 * nq * D * D                         # output projection
             + 2 * 2 * nq * D * hidden)               # MLP
    per_row += cfg.depth * block
    per_row += 2 * frames * D * 2 * D                 # final modulation
    per_row += 2 * nq * D * patch                     # patch_out
    return batch * per_row


def teacher_train_step(cfg: TransformerConfig, batch: int, frames: int) -> int:
    """One teacher-forcing training step: forward + backward on [clean || noisy] (2F frames)."""
    return 3 * transformer_forward(cfg, batch, 2 * frames)


def cd_train_step(cfg: TransformerConfig, batch: int, frames: int, teacher_cfg_scale: float = 1.0) -> int:
    """One causal CD step: the student's forward + backward, the frozen teacher's forward (two with
    action guidance) and the target's forward, each teacher-forced on 2F frames."""
    fwd = transformer_forward(cfg, batch, 2 * frames)
    return 3 * fwd + (2 if teacher_cfg_scale != 1.0 else 1) * fwd + fwd


def ring_key_frames(cfg: TransformerConfig, call_frames: int) -> int:
    """Key frames of a streamed call with the ring cache: every slot (sink + window - 1) + the call's."""
    return cfg.sink + cfg.window - 1 + call_frames


def dream_step(cfg: TransformerConfig, ae: AutoencoderConfig, batch: int, steps: int, guidance: bool = False) -> int:
    """One streamed frame of the dream for ``batch`` rows in steady state: ``steps`` consistency
    steps, the first of them fused with the cache write of the previous frame (2 frames), then
    the decode. With action guidance the previous frame is written by a call of its own, and each
    step runs the conditional and the null-action rows (:class:`model.rollout.Session`)."""
    K = cfg.block_frames
    fused = transformer_forward(cfg, batch, 2 * K, ring_key_frames(cfg, 2 * K))
    one = transformer_forward(cfg, batch, K, ring_key_frames(cfg, K))
    model = one + 2 * steps * one if guidance else fused + (steps - 1) * one
    return model + K * decode(ae, batch)


def _conv(h: int, w: int, cin: int, cout: int, k: int) -> int:
    return 2 * h * w * cin * cout * k * k


def encode(ae: AutoencoderConfig, batch: int) -> int:
    """:meth:`Autoencoder.encode` of ``batch`` frames (stride-2 4x4 convolutions and residual blocks)."""
    n = ae.image_size
    c1, c2, c3 = ae.enc_channels
    f = _conv(n // 2, n // 2, 3, c1, 4) + 2 * _conv(n // 2, n // 2, c1, c1, 3)
    f += _conv(n // 4, n // 4, c1, c2, 4) + 2 * _conv(n // 4, n // 4, c2, c2, 3)
    f += _conv(n // 8, n // 8, c2, c3, 4) + 2 * 2 * _conv(n // 8, n // 8, c3, c3, 3)
    f += _conv(n // 8, n // 8, c3, ae.latent_channels, 1)
    return batch * f


def decode(ae: AutoencoderConfig, batch: int) -> int:
    """:meth:`Autoencoder.decode` of ``batch`` latents (the palette head's last 1x1 product included)."""
    s, D, f = ae.latent_size, ae.dec_width, ae.dec_fine
    out = _conv(s, s, ae.latent_channels, D, 3) + ae.dec_res_blocks * 2 * _conv(s, s, D, D, 3)
    out += _conv(s, s, D, 4 * f, 1)
    out += 2 * _conv(2 * s, 2 * s, f, f, 3)
    out += _conv(2 * s, 2 * s, f, 16 * ae.out_channels, 1)
    return batch * out
