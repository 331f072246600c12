"""The frame-causal transformer (docs/ALGORITHMS.md section 1), read top to bottom like a figure.

Each latent frame is a grid of tokens. Attention is block-causal over frames: a token of
frame i sees every token of the frames it may see (a block of K frames is denoised jointly;
K = 1 is frame-wise). Each frame carries its own noise level and action, summed into a
conditioning vector that drives AdaLN-Zero modulation of every block. Action index
``num_actions`` is the null action (for classifier-free guidance).

Positions. Within a frame: a learned spatial embedding. Across frames: a learned
per-head bias on the attention logits, indexed by the time distance between the query's
frame and the key's frame, plus a separate bias for the first ``sink`` frames (the
attention sink). Because the bias depends only on true time distances, rolling the cache
never shifts the model out of its training distribution, and a streamed session with a
rolling window equals one windowed full-sequence forward exactly.

Every frame in a sequence is described by its time index and whether it is a clean
(context) frame or a noisy (being denoised) one; :func:`frame_mask` turns those
descriptors into the allowed-attention pattern:
- clean frame i sees clean frames in blocks <= block(i);
- noisy frame i sees clean frames in blocks < block(i) and the noisy frames of its block;
- both see only keys within ``window`` frames back, except the sink frames.
The teacher-forcing layout ``[clean x0[0..F-1] || noisy x_t[0..F-1]]`` is one such
sequence with shared times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from model.attention import attention


@dataclass
class TransformerConfig:
    latent_channels: int = 16
    latent_size: int = 8          # latent grid side (tokens = (latent_size / patch) ** 2 per frame)
    patch: int = 1
    width: int = 256
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    num_actions: int = 5          # real actions; index num_actions is the null action
    block_frames: int = 1         # K: frames denoised jointly (1 = frame-wise)
    window: int = 16              # frames visible back in time, the query's own frame included
    sink: int = 1                 # first frames always visible (attention sink)
    attn_backend: str = "auto"
    # pose attention (None: off): per real action the (dx, dy) step it moves the player. Each frame's
    # pose is the running sum of its actions' steps (what the player pressed, so a move into a wall
    # counts), and each head adds a learned bias indexed by the displacement between the query's and
    # the key's pose, up to ``pose_radius`` steps per axis (one shared entry beyond): a frame taken
    # where the player stands again is found by where it was taken, not only by how long ago
    pose_moves: list[list[int]] | None = None
    pose_radius: int = 8
    # the pose bias is applied times this gain: Adam moves a parameter by about the learning rate per
    # step whatever its gradient's size, and entries that start at zero must reach logits of several
    # units within a training piece (in effect a learning rate this many times the model's)
    pose_gain: float = 40.0
    # poses from the moves the world took, not the keys pressed (needs pose_moves): a key pressed into
    # a wall moves no view, so a pose that counts it is one step off from then on. A head predicts,
    # from each frame's denoising output, whether its pressed move was taken (trained on the data's
    # effective actions); a finished frame enters the cache at the pose of the moves taken, and the
    # frame being denoised sits at its previous frame's pose plus its pressed move
    pose_taken: bool = False
    # pose values (needs pose_moves): the bias only re-weights the keys, so the output cannot tell from
    # which displacement its content came, and a model that shifts the view by its own frame's move
    # draws a place found at displacement 0 one step off. Each head then also attends over its keys'
    # poses (two extra value channels) and hands the query-minus-attended displacement (clamped to
    # pose_radius) through a zero-initialised linear layer into its output. The gain plays pose_gain's
    # part for that layer: at 10 its weights stayed too small to matter over 485 steps
    pose_values: bool = False
    pose_values_gain: float = 100.0

    def __post_init__(self) -> None:
        if self.pose_values and self.pose_moves is None:
            raise ValueError("pose_values needs pose_moves (the per-action moves the poses sum)")
        if self.pose_taken and self.pose_moves is None:
            raise ValueError("pose_taken needs pose_moves (the per-action moves the poses sum)")
        if self.pose_taken and self.block_frames != 1:
            raise ValueError(f"pose_taken places each frame by its predecessor's taken move: frame-wise models "
                             f"only (block_frames 1), got block_frames={self.block_frames}")
        if self.pose_moves is not None:
            moves = self.pose_moves
            if len(moves) != self.num_actions or any(len(m) != 2 or any(not isinstance(v, int) for v in m)
                                                     for m in moves):
                raise ValueError(f"pose_moves must list one [dx, dy] pair of ints per action "
                                 f"({self.num_actions} actions), got {moves!r}")
            self.pose_moves = [list(m) for m in moves]
        if self.pose_radius < 1:
            raise ValueError(f"pose_radius must be >= 1, got {self.pose_radius}")
        if self.pose_gain <= 0:
            raise ValueError(f"pose_gain must be > 0, got {self.pose_gain}")
        if self.latent_size % self.patch:
            raise ValueError(f"latent_size {self.latent_size} is not divisible by patch {self.patch}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.block_frames < 1 or self.window < self.block_frames:
            raise ValueError(f"need 1 <= block_frames <= window, got {self.block_frames}, {self.window}")

    @property
    def tokens_per_frame(self) -> int:
        return (self.latent_size // self.patch) ** 2

    @property
    def null_action(self) -> int:
        return self.num_actions


# ---------------------------------------------------------------------------- masks
def frame_mask(q_times: torch.Tensor, q_clean: torch.Tensor, k_times: torch.Tensor,
               k_clean: torch.Tensor, block: int, window: int, sink: int) -> torch.Tensor:
    """(Fq, Fk) bool: may query frame q attend to key frame k (see the module docstring)."""
    qb = (q_times // block)[:, None]
    kb = (k_times // block)[None, :]
    qc, kc = q_clean[:, None], k_clean[None, :]
    clean_rule = qc & kc & (kb <= qb)
    noisy_rule = ~qc & ((kc & (kb < qb)) | (~kc & (kb == qb)))
    dist = q_times[:, None] - k_times[None, :]
    in_window = (dist < window) | (k_times[None, :] < sink)
    return (clean_rule | noisy_rule) & in_window


def teacher_forcing_descriptors(frames: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Times and clean flags of the layout [clean 0..F-1 || noisy 0..F-1]."""
    t = torch.arange(frames, device=device)
    times = torch.cat([t, t])
    clean = torch.cat([torch.ones(frames, dtype=torch.bool, device=device),
                       torch.zeros(frames, dtype=torch.bool, device=device)])
    return times, clean


# ---------------------------------------------------------------------------- blocks
def timestep_embedding(sigma: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of sigma in [0, 1] (scaled to [0, 1000])."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half)
    args = sigma.float()[..., None] * 1000.0 * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.backend = cfg.attn_backend
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        head_dim = cfg.width // cfg.heads
        self.q_norm = RMSNorm(head_dim)
        self.k_norm = RMSNorm(head_dim)
        if cfg.pose_values:  # zero: a warm start computes what it did
            self.pose_out = nn.Linear(2 * cfg.heads, cfg.width, bias=False)
            nn.init.zeros_(self.pose_out.weight)
            self.pose_scale = cfg.pose_values_gain / cfg.pose_radius
            self.pose_radius = cfg.pose_radius

    def forward(self, x: torch.Tensor, bias: torch.Tensor,
                past_kv: tuple[torch.Tensor, torch.Tensor] | None = None, ring: RingSlot | None = None,
                poses: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x: (B, N, D). Returns the output and this call's (k, v) for a cache.

        ``past_kv``: cached keys/values the tokens also attend to (concatenated before them);
        ``ring``: a :class:`RingKVCache` layer's (keys, values, start) instead: this call's keys/values
        are written into its scratch slots from ``start`` on and attention reads the buffer in place
        (no copy of the cache). ``poses`` (a ``pose_values`` model): the query tokens' (B, Nq, 2) and
        the key tokens' (B, Nk, 2) poses, in steps from a reference near them."""
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        new_kv = (k, v)
        if ring is not None:
            bk, bv, start = ring
            n = k.shape[2]
            bk[:, :, start:start + n].copy_(k)
            bv[:, :, start:start + n].copy_(v)
            k, v = bk[:, :, :start + n], bv[:, :, :start + n]
            if k.dtype != q.dtype:  # a cache made in another precision: follow the call's
                k, v = k.to(q.dtype), v.to(q.dtype)
        elif past_kv is not None:
            k = torch.cat([past_kv[0].to(k.dtype), k], dim=2)
            v = torch.cat([past_kv[1].to(v.dtype), v], dim=2)
        if poses is None or not hasattr(self, "pose_out"):
            out = attention(q, k, v, bias, self.backend)
            return self.proj(rearrange(out, "b h n d -> b n (h d)")), new_kv
        qp, kp = poses
        d = v.shape[-1]
        pv = kp.to(v.dtype)[:, None].expand(-1, v.shape[1], -1, -1)  # (B, H, Nk, 2): the keys' poses
        out = attention(q, k, torch.cat([v, pv], -1), bias, self.backend)
        seen = qp.to(out.dtype)[:, None] - out[..., d:]  # (B, H, Nq, 2): the displacement attended to
        seen = seen.clamp(-self.pose_radius, self.pose_radius) * self.pose_scale
        return (self.proj(rearrange(out[..., :d], "b h n d -> b n (h d)"))
                + self.pose_out(rearrange(seen, "b h n c -> b n (h c)"))), new_kv


class Block(nn.Module):
    """Pre-norm transformer block with AdaLN-Zero modulation from a per-frame condition."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width, elementwise_affine=False, eps=1e-6)
        hidden = int(cfg.width * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(cfg.width, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, cfg.width))
        self.ada = nn.Linear(cfg.width, 6 * cfg.width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, bias: torch.Tensor,
                past_kv: tuple[torch.Tensor, torch.Tensor] | None = None, ring: RingSlot | None = None,
                poses: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x: (B, F*L, D) tokens, frame-major; cond: (B, F, D) the condition of each frame.

        The modulation is computed once per frame and broadcast over the frame's L tokens (a
        third of a block's matmul work if it were computed per token)."""
        B, N, D = x.shape
        Fn = cond.shape[1]
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(F.silu(cond))[:, :, None].chunk(6, dim=-1)  # (B, F, 1, D)
        x = x.view(B, Fn, N // Fn, D)
        h, kv = self.attn(modulate(self.norm1(x), sh1, sc1).reshape(B, N, D), bias, past_kv, ring, poses)
        x = x + g1 * h.view_as(x)
        x = x + g2 * self.mlp(modulate(self.norm2(x), sh2, sc2))
        return x.reshape(B, N, D), kv


# ---------------------------------------------------------------------------- cache
def _same_rows(poses: torch.Tensor, batch: int) -> torch.Tensor:
    if poses.shape[0] != batch:
        raise ValueError(f"a call of {batch} rows on a cache of {poses.shape[0]} rows: poses are per row, "
                         "so a session's calls must keep its batch size")
    return poses


class KVCache:
    """Keys/values of finished (clean) frames for streaming, with a rolling window + sink.

    Holds at most ``sink + window - 1`` frames: the first ``sink`` frames of the session and
    the most recent ones a future frame can still see.
    """

    def __init__(self, cfg: TransformerConfig, rolling: bool = True) -> None:
        self.cfg = cfg
        self.rolling = rolling  # False: keep every frame (a fixed context; the mask still applies the window)
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * cfg.depth
        self.times = torch.zeros(0, dtype=torch.long)
        self.poses: torch.Tensor | None = None  # (B, frames, 2) long: each row's pose of each frame

    def pose_at(self, t: int) -> torch.Tensor | None:
        """(B, 2) the rows' pose of the cached frame at time ``t`` (None if not cached)."""
        hit = (self.times == t).nonzero()
        if self.poses is None or not len(hit):
            return None
        return self.poses[:, int(hit[0, 0])]

    def key_poses(self, batch: int) -> torch.Tensor:
        """(B, frames, 2) the poses of the cached frames (zeros where none were written)."""
        if self.poses is None:
            return torch.zeros(batch, self.num_frames, 2, dtype=torch.long)
        return _same_rows(self.poses, batch)

    @property
    def num_frames(self) -> int:
        return int(self.times.numel())

    def append(self, layer_kv: list[tuple[torch.Tensor, torch.Tensor]], times: torch.Tensor,
               poses: torch.Tensor | None = None) -> None:
        for i, (k, v) in enumerate(layer_kv):
            old = self.layers[i]
            self.layers[i] = (k, v) if old is None else (torch.cat([old[0], k], 2), torch.cat([old[1], v], 2))
        if poses is not None or self.poses is not None:  # a model without poses keeps none
            B = layer_kv[0][0].shape[0]
            new = torch.zeros(B, len(times), 2, dtype=torch.long) if poses is None else poses.cpu().long()
            self.poses = torch.cat([self.key_poses(B), new], 1)
        self.times = torch.cat([self.times, times.cpu()])
        self._evict()

    def _evict(self) -> None:
        """Drop frames no future frame can see (older than the window, and not sink frames)."""
        if not self.rolling:
            return
        latest = int(self.times.max())
        # the next frame to generate is at least latest + 1 and sees dist < window
        keep = (self.times < self.cfg.sink) | (self.times > latest + 1 - self.cfg.window)
        if bool(keep.all()):
            return
        L = self.cfg.tokens_per_frame
        token_keep = keep.repeat_interleave(L)
        idx = token_keep.nonzero().squeeze(1)
        for i, kv in enumerate(self.layers):
            if kv is not None:
                dev_idx = idx.to(kv[0].device)
                self.layers[i] = (kv[0].index_select(2, dev_idx), kv[1].index_select(2, dev_idx))
        self.times = self.times[keep]
        if self.poses is not None:
            self.poses = self.poses[:, keep]

    def state(self) -> dict[str, object]:
        return {"layers": [None if kv is None else (kv[0].clone(), kv[1].clone()) for kv in self.layers],
                "times": self.times.clone(), "poses": None if self.poses is None else self.poses.clone()}

    def load_state(self, state: dict[str, object]) -> None:
        self.layers = [None if kv is None else (kv[0].clone(), kv[1].clone()) for kv in state["layers"]]  # type: ignore[union-attr]
        self.times = state["times"].clone()  # type: ignore[union-attr]
        poses = state.get("poses")
        self.poses = None if poses is None else poses.clone()  # type: ignore[union-attr]

    def nbytes(self) -> int:
        return sum(kv[0].numel() * kv[0].element_size() * 2 for kv in self.layers if kv is not None)


#: one layer of a :class:`RingKVCache` during a forward call: its key and value buffers and the
#: token index from which the call's own keys/values are written (behind the slots)
RingSlot = tuple[torch.Tensor, torch.Tensor, int]


class RingKVCache:
    """The same cache as :class:`KVCache` in preallocated buffers, for inference (no grad).

    ``sink`` slots hold the first frames and ``window - 1`` ring slots the most recent ones:
    frame t >= sink lives in ring slot ``(t - sink) % (window - 1)``, so writing a frame
    overwrites exactly the one the rolling window drops. Behind the slots, scratch room for the
    frames of one call: attention reads the buffer in place, so a step copies only the new
    frame's keys, never the whole cache (the dynamic cache concatenates it twice per layer and
    call), and every steady-state step has the same shapes (what CUDA graphs need). Keys are in
    slot order, not time order; the attention bias follows each slot's time, so the outputs
    equal the dynamic cache's up to float rounding.
    """

    def __init__(self, cfg: TransformerConfig, max_call_frames: int = 2) -> None:
        if cfg.window < 2:
            raise ValueError(f"a ring cache needs window >= 2, got {cfg.window}")
        self.cfg = cfg
        self.slots = cfg.sink + cfg.window - 1
        self.max_call_frames = max_call_frames  # frames of one call (a block + a fused pending block)
        self.buffers: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        # calls on this cache may use a compiled streaming step (FrameTransformer.compile_streaming);
        # False for one-off caches of varying shapes (Session.reset_rows), which would each compile
        self.compiled = True
        self.slot_times = torch.zeros(self.slots, dtype=torch.long)
        self.valid = torch.zeros(self.slots, dtype=torch.bool)
        self.slot_poses: torch.Tensor | None = None  # (B, slots, 2) long: each row's pose of each slot

    def pose_at(self, t: int) -> torch.Tensor | None:
        """(B, 2) the rows' pose of the cached frame at time ``t`` (None if not cached)."""
        if t < 0 or self.slot_poses is None:
            return None
        s = self.slot_of(t)
        if not bool(self.valid[s]) or int(self.slot_times[s]) != t:
            return None
        return self.slot_poses[:, s]

    def key_poses(self, batch: int) -> torch.Tensor:
        """(B, slots, 2) the poses of the slots, in slot order (zeros where none were written)."""
        if self.slot_poses is None:
            return torch.zeros(batch, self.slots, 2, dtype=torch.long)
        return _same_rows(self.slot_poses, batch)

    @property
    def num_frames(self) -> int:
        return int(self.valid.sum())

    @property
    def times(self) -> torch.Tensor:
        return self.slot_times[self.valid]

    def slot_of(self, t: int) -> int:
        s = self.cfg.sink
        return t if t < s else s + (t - s) % (self.cfg.window - 1)

    def _alloc(self, like: torch.Tensor, frames: int) -> None:
        B, H, _, d = like.shape
        L = self.cfg.tokens_per_frame
        n = (self.slots + max(frames, self.max_call_frames)) * L
        if self.buffers is None or self.buffers[0][0].shape[2] < n or self.buffers[0][0].shape[0] != B \
                or self.buffers[0][0].shape[1] != H:
            old = self.buffers
            self.buffers = [(like.new_zeros(B, H, n, d), like.new_zeros(B, H, n, d)) for _ in range(self.cfg.depth)]
            if old is not None and old[0][0].shape[0] == B:
                m = self.slots * L
                for (k, v), (ok, ov) in zip(self.buffers, old):
                    k[:, :, :m].copy_(ok[:, :, :m])
                    v[:, :, :m].copy_(ov[:, :, :m])

    def views(self, like: torch.Tensor, frames: int) -> list[RingSlot]:
        """The per-layer (keys, values, start) of a call with ``frames`` frames whose keys are shaped
        like ``like`` (B, H, _, d) (buffers made at first use)."""
        self._alloc(like, frames)
        assert self.buffers is not None
        start = self.slots * self.cfg.tokens_per_frame
        return [(k, v, start) for k, v in self.buffers]

    def write(self, layer_kv: list[tuple[torch.Tensor, torch.Tensor]], times: torch.Tensor,
              poses: torch.Tensor | None = None) -> None:
        """Store clean frames' keys/values (B, H, F*L, d) at their slots (with their (B, F, 2) poses)."""
        L = self.cfg.tokens_per_frame
        self._alloc(layer_kv[0][0], len(times))
        assert self.buffers is not None
        B = layer_kv[0][0].shape[0]
        if poses is not None and self.slot_poses is None:  # a model without poses keeps none
            self.slot_poses = self.key_poses(B)
        for j, t in enumerate(times.tolist()):
            s = self.slot_of(int(t))
            for (k, v), (bk, bv) in zip(layer_kv, self.buffers):
                bk[:, :, s * L:(s + 1) * L].copy_(k[:, :, j * L:(j + 1) * L])
                bv[:, :, s * L:(s + 1) * L].copy_(v[:, :, j * L:(j + 1) * L])
            self.slot_times[s] = int(t)
            self.valid[s] = True
            if self.slot_poses is not None:
                _same_rows(self.slot_poses, B)[:, s] = 0 if poses is None else poses[:, j].cpu()

    append = write

    @property
    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer the slot region of the buffers (B, H, slots*L, d), batch rows copyable."""
        assert self.buffers is not None
        m = self.slots * self.cfg.tokens_per_frame
        return [(k[:, :, :m], v[:, :, :m]) for k, v in self.buffers]

    def state(self) -> dict[str, object]:
        return {"buffers": None if self.buffers is None else [(k.clone(), v.clone()) for k, v in self.buffers],
                "slot_times": self.slot_times.clone(), "valid": self.valid.clone(),
                "slot_poses": None if self.slot_poses is None else self.slot_poses.clone()}

    def load_state(self, state: dict[str, object]) -> None:
        bufs = state["buffers"]
        self.buffers = None if bufs is None else [(k.clone(), v.clone()) for k, v in bufs]  # type: ignore[union-attr]
        self.slot_times = state["slot_times"].clone()  # type: ignore[union-attr]
        self.valid = state["valid"].clone()  # type: ignore[union-attr]
        poses = state.get("slot_poses")
        self.slot_poses = None if poses is None else poses.clone()  # type: ignore[union-attr]

    def nbytes(self) -> int:
        return 0 if self.buffers is None else sum(k.numel() * k.element_size() * 2 for k, _ in self.buffers)


def _fill_defaulted_state(module: nn.Module, state: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load pre-hook: buffers of ``module.defaulted_state`` that older weights lack load as zeros."""
    for k in getattr(module, "defaulted_state", ()):
        buf = module._buffers.get(k)
        if buf is not None and f"{prefix}{k}" not in state:
            state[f"{prefix}{k}"] = torch.zeros_like(buf)


# ---------------------------------------------------------------------------- model
class FrameTransformer(nn.Module):
    """Velocity predictor over sequences of latent frames: (B, F, C, h, w) -> (B, F, C, h, w)."""

    #: buffers that weights saved before them load without, as zeros (a load pre-hook fills them in;
    #: ``model.io.load_into`` does not count them missing)
    defaulted_state = ("taken_prior",)

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D, p, C = cfg.width, cfg.patch, cfg.latent_channels
        self.patch_in = nn.Linear(C * p * p, D)
        self.pos = nn.Parameter(torch.randn(cfg.tokens_per_frame, D) * 0.02)
        self.t_mlp = nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, D))
        self.action_emb = nn.Embedding(cfg.num_actions + 1, D)
        nn.init.zeros_(self.action_emb.weight)  # zero-initialised action embedder (paper)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        # time-distance bias: distances -(K-1)..window-1, then one entry per sink frame
        self.n_dist = cfg.window + cfg.block_frames - 1
        slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / cfg.heads) for h in range(cfg.heads)])
        dist = torch.arange(-(cfg.block_frames - 1), cfg.window).float().clamp(min=0)
        init = torch.cat([-slopes[:, None] * dist[None, :], torch.zeros(cfg.heads, cfg.sink)], 1)
        self.time_bias = nn.Parameter(init)  # (heads, n_dist + sink)
        if cfg.pose_moves is not None:
            # displacements -R..R per axis, then one entry for every farther one; zero at the start, so
            # a model warm-started from one without poses computes exactly what it did
            self.pose_bias = nn.Parameter(torch.zeros(cfg.heads, (2 * cfg.pose_radius + 1) ** 2 + 1))
            moves = torch.tensor(cfg.pose_moves + [[0, 0]], dtype=torch.long)  # the null action does not move
            self.register_buffer("pose_moves", moves, persistent=False)
        if cfg.pose_taken:
            # logit of "the frame's pressed move was taken"; starts at taken (most moves are)
            self.taken_head = nn.Linear(D, 1)
            nn.init.zeros_(self.taken_head.weight)
            nn.init.constant_(self.taken_head.bias, 2.0)
            # the prior log-odds of "taken" added to the head's logit where it decides (logit adjustment):
            # 0 for a head trained on the plain loss; a head trained with the class-balanced loss
            # (loss.taken_balance) learnt odds as if both classes were equally common, and the trainer
            # stores the data's log(taken / blocked) here so that play decides by the data's odds
            self.register_buffer("taken_prior", torch.zeros(()))
            self._register_load_state_dict_pre_hook(_fill_defaulted_state, with_module=True)
        self.final_norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(D, 2 * D)
        self.patch_out = nn.Linear(D, C * p * p)
        for lin in (self.final_ada, self.patch_out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def taken_decision(self, logits: torch.Tensor) -> torch.Tensor:
        """Bool, the taken head's decision on its ``logits``: taken where the logit plus the prior
        log-odds (``taken_prior``) is positive."""
        return (logits.float() + self.taken_prior.float()) > 0

    def load_from(self, other: FrameTransformer) -> None:
        """Initialise from a trained model of the same widths but possibly another block size (a
        chunk-wise student from a frame-wise teacher), window or number of sink frames (a
        long-context teacher warm-started from a short one). The time-distance bias keeps the
        trained values for the distances both know; distances beyond the trained window start at
        its farthest trained value, the within-block negative distances it never saw at its
        distance-0 value (as a fresh init does), and extra sink frames at its last sink's value."""
        state = dict(other.state_dict())
        a, b = other.cfg, self.cfg
        if a.heads != b.heads:
            raise ValueError(f"cannot initialise heads={b.heads} from a model with heads={a.heads}")
        tb = state["time_bias"]
        d = torch.arange(-(b.block_frames - 1), b.window).clamp(min=-(a.block_frames - 1), max=a.window - 1)
        dist = tb[:, d + a.block_frames - 1]
        if a.sink:
            sinks = tb[:, other.n_dist:][:, torch.arange(b.sink).clamp(max=a.sink - 1)]
        else:
            sinks = torch.zeros(b.heads, b.sink, dtype=tb.dtype)
        state["time_bias"] = torch.cat([dist, sinks], 1)
        if b.pose_moves is not None and "pose_bias" not in state:  # poses added: they start at zero
            state["pose_bias"] = self.pose_bias.detach().clone()
        if b.pose_moves is None:
            state.pop("pose_bias", None)
        own = self.state_dict()
        optional = [k for k in set(own) | set(state) if k.startswith("taken_head.") or k == "taken_prior"
                    or ".pose_out." in k]
        for k in optional:  # a taken head or pose values: fresh where added, dropped where this model lacks them
            if k not in own:
                del state[k]
            elif k not in state:
                state[k] = own[k].detach().clone()
        self.load_state_dict(state)

    # ------------------------------------------------------------ pieces
    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        p = self.cfg.patch
        t = rearrange(x, "b f c (h p1) (w p2) -> b f (h w) (c p1 p2)", p1=p, p2=p)
        return self.patch_in(t) + self.pos

    def _untokens(self, t: torch.Tensor) -> torch.Tensor:
        p, s = self.cfg.patch, self.cfg.latent_size // self.cfg.patch
        return rearrange(t, "b f (h w) (c p1 p2) -> b f c (h p1) (w p2)", h=s, w=s, p1=p, p2=p)

    def _cond(self, sigma: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """(B, F, D): timestep embedding + action embedding per frame."""
        t = self.t_mlp(timestep_embedding(sigma, self.cfg.width).to(self.pos.dtype))
        return t + self.action_emb(actions)

    def frame_poses(self, actions: torch.Tensor, start: torch.Tensor | None = None,
                    taken: torch.Tensor | None = None) -> torch.Tensor:
        """(B, F, 2) the poses of consecutive frames with ``actions`` (B, F): ``start`` (B, 2, the pose
        of the frame before the first; zeros by default) plus the running sum of the actions' moves
        (with ``taken`` (B, F) bool, only the moves taken)."""
        mv = self.pose_moves.to(actions.device)[actions]
        if taken is not None:
            mv = mv * taken.to(mv.device)[..., None].long()
        mv = mv.cumsum(1)
        return mv if start is None else mv + start.to(mv.device)[:, None]

    def denoising_poses(self, actions: torch.Tensor, key_poses: torch.Tensor) -> torch.Tensor:
        """(B, F, 2) the poses of frames being denoised at consecutive times with pressed ``actions``:
        with ``pose_taken``, each sits at the finished pose of the frame before it (``key_poses``
        (B, F, 2) of the same frames; zero before the first) plus its pressed move; else the keys'."""
        if not self.cfg.pose_taken:
            return key_poses
        prev = torch.cat([torch.zeros_like(key_poses[:, :1]), key_poses[:, :-1]], 1)
        return prev + self.pose_moves.to(actions.device)[actions]

    def call_poses(self, actions: torch.Tensor, times: torch.Tensor, clean: torch.Tensor,
                   cache: KVCache | RingKVCache | None, taken: torch.Tensor | None = None) -> torch.Tensor:
        """(B, F, 2) the poses of a call's frames: a frame at time t has the pose of the frame at
        t - 1 (among the call's clean frames, else in the cache, else the session's start: zero) plus
        its action's move (for the clean frames of a ``pose_taken`` model, only where ``taken`` (B, F)
        says the move was taken; every move by default). The clean frames and the noisy frames of a
        call each run at consecutive times (every call the sessions and the teacher-forcing layouts
        make)."""
        B, Fn = actions.shape
        poses = torch.zeros(B, Fn, 2, dtype=torch.long)
        acts = actions.cpu()
        tl = times.cpu().tolist()
        cl = clean.cpu()
        ci = cl.nonzero().squeeze(1).tolist()
        ni = (~cl).nonzero().squeeze(1).tolist()
        clean_at = {t: j for j, t in enumerate(tl) if bool(cl[j])}

        def before(t: int, own: bool) -> torch.Tensor:
            if own and t in clean_at:
                return poses[:, clean_at[t]]
            p = cache.pose_at(t) if cache is not None else None
            return torch.zeros(B, 2, dtype=torch.long) if p is None else p.cpu()

        tk = None if taken is None or not self.cfg.pose_taken else taken.cpu()
        for group, own in ((ci, False), (ni, True)):
            if group:
                g_taken = tk[:, group] if tk is not None and not own else None
                poses[:, group] = self.frame_poses(acts[:, group], before(tl[group[0]] - 1, own), g_taken).cpu()
        return poses

    def attention_bias(self, q_times: torch.Tensor, q_clean: torch.Tensor, k_times: torch.Tensor,
                       k_clean: torch.Tensor, k_valid: torch.Tensor | None = None,
                       q_poses: torch.Tensor | None = None, k_poses: torch.Tensor | None = None) -> torch.Tensor:
        """(1, heads, Nq, Nk) additive bias over tokens: time-distance bias, -inf where masked
        (and for keys that are not ``k_valid``: empty cache slots); with poses ((B, Fq, 2) and
        (B, Fk, 2)) plus the pose bias, per batch row: (B, heads, Nq, Nk)."""
        cfg = self.cfg
        allowed = frame_mask(q_times, q_clean, k_times, k_clean, cfg.block_frames, cfg.window, cfg.sink)
        if k_valid is not None:
            allowed = allowed & k_valid[None, :]
        dist = q_times[:, None] - k_times[None, :]
        idx = (dist + cfg.block_frames - 1).clamp(0, self.n_dist - 1)
        sink_idx = self.n_dist + k_times.clamp(max=cfg.sink - 1) if cfg.sink > 0 else None
        if sink_idx is not None:
            idx = torch.where(k_times[None, :] < cfg.sink, sink_idx[None, :].expand_as(idx), idx)
        bias = self.time_bias[:, idx.to(self.time_bias.device)][None]  # (1, H, Fq, Fk)
        if q_poses is not None and k_poses is not None:
            R = cfg.pose_radius
            d = q_poses[:, :, None, :] - k_poses[:, None, :, :]  # (B, Fq, Fk, 2)
            pidx = (d[..., 0] + R) * (2 * R + 1) + (d[..., 1] + R)
            pidx = torch.where((d.abs() > R).any(-1), (2 * R + 1) ** 2, pidx)
            pb = self.pose_bias[:, pidx.to(self.pose_bias.device)] * cfg.pose_gain  # (H, B, Fq, Fk)
            bias = bias + pb.transpose(0, 1)
        bias = bias.masked_fill(~allowed.to(bias.device)[None, None], float("-inf"))
        L = cfg.tokens_per_frame
        return bias.repeat_interleave(L, dim=2).repeat_interleave(L, dim=3)

    # ------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, sigma: torch.Tensor, actions: torch.Tensor,
                times: torch.Tensor, clean: torch.Tensor,
                cache: KVCache | RingKVCache | None = None, write_cache: bool = False,
                poses: torch.Tensor | None = None, taken: torch.Tensor | None = None,
                return_taken: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """Predict velocities for a sequence of frames.

        x: (B, F, C, h, w); sigma: (B, F) in [0, 1]; actions: (B, F) long (null allowed);
        times: (F,) long time index of each frame; clean: (F,) bool (context vs noisy).
        With ``cache``, the frames also attend to the cached frames; with ``write_cache``
        (all frames clean), their keys/values are appended to it afterwards. ``poses`` (B, F, 2):
        the frames' poses for a model with pose attention (default: :meth:`call_poses`, with
        ``taken`` (B, F) bool: which clean frames' pressed moves were taken). With ``return_taken``
        the result is (velocities, the taken head's (B, F) logits or None).
        """
        B, Fn = x.shape[:2]
        L = self.cfg.tokens_per_frame
        x = x.to(self.pos.dtype)  # a model cast to bf16 for inference computes in bf16 (no-op in fp32)
        times = times.to(x.device)
        clean = clean.to(x.device)
        layers: list[RingSlot] | list[tuple[torch.Tensor, torch.Tensor] | None] | None = None
        k_valid = None
        if isinstance(cache, RingKVCache):  # every slot is a key (empty ones masked): fixed shapes
            c = self.cfg
            layers = cache.views(x.new_empty(B, c.heads, 0, c.width // c.heads), Fn)
            k_times = torch.cat([cache.slot_times.to(x.device), times])
            k_clean = torch.ones(len(k_times), dtype=torch.bool, device=x.device)
            k_clean[cache.slots:] = clean
            k_valid = torch.cat([cache.valid.to(x.device), torch.ones(Fn, dtype=torch.bool, device=x.device)])
        elif cache is not None and cache.num_frames:
            layers = cache.layers
            k_times = torch.cat([cache.times.to(x.device), times])
            k_clean = torch.cat([torch.ones(cache.num_frames, dtype=torch.bool, device=x.device), clean])
        else:
            k_times, k_clean = times, clean
        q_poses = k_poses = None
        if self.cfg.pose_moves is not None:
            if poses is None:
                poses = self.call_poses(actions, times, clean, cache, taken)
            q_poses = poses.to(x.device)
            if isinstance(cache, RingKVCache) or (cache is not None and cache.num_frames):
                assert cache is not None
                k_poses = torch.cat([cache.key_poses(B).to(x.device), q_poses], 1)
            else:
                k_poses = q_poses
        core = FrameTransformer._core
        if self._compiled_core is not None and isinstance(cache, RingKVCache) and cache.compiled \
                and not torch.is_grad_enabled():
            core = self._compiled_core
            x = x.contiguous()  # one layout per shape (a strided view would compile another graph)
        out, new_kv, taken_logits = core(self, x, sigma, actions, times, clean, k_times, k_clean, k_valid, layers,
                                         isinstance(cache, RingKVCache), q_poses, k_poses)
        if write_cache:  # the clean frames' keys/values (a fused call also holds noisy frames)
            if cache is None or not bool(clean.any()):
                raise ValueError("write_cache needs a cache and at least one clean frame")
            if bool(clean.all()):
                cache.append([(k.detach(), v.detach()) for k, v in new_kv], times, q_poses)
            else:
                tok = clean.repeat_interleave(L).nonzero().squeeze(1)
                cache.append([(k.detach().index_select(2, tok), v.detach().index_select(2, tok))
                              for k, v in new_kv], times[clean].cpu(),
                             None if q_poses is None else q_poses[:, clean])
        return (out, taken_logits) if return_taken else out

    def _core(self, x: torch.Tensor, sigma: torch.Tensor, actions: torch.Tensor, times: torch.Tensor,
              clean: torch.Tensor, k_times: torch.Tensor, k_clean: torch.Tensor, k_valid: torch.Tensor | None,
              layers: list | None, ring: bool, q_poses: torch.Tensor | None = None,
              k_poses: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor | None]:
        """The forward's tensor work, without the cache's bookkeeping (what :meth:`compile_streaming`
        compiles): the frames' velocities, each layer's keys/values of the call's tokens and, for a
        ``pose_taken`` model, the (B, F) logits of each frame's move having been taken.
        ``layers``: per layer the cached (keys, values) or, with ``ring``, a ring cache's slots."""
        Fn = x.shape[1]
        tokens = rearrange(self._tokens(x), "b f l d -> b (f l) d")
        cond = self._cond(sigma, actions)  # (B, F, D): per frame, broadcast over its tokens
        bias = self.attention_bias(times, clean, k_times, k_clean, k_valid, q_poses, k_poses)
        pv = None
        if self.cfg.pose_values and q_poses is not None and k_poses is not None:
            # per token, in steps from the call's last frame (small numbers: exact enough in bf16)
            L = self.cfg.tokens_per_frame
            ref = q_poses[:, -1:]
            pv = ((q_poses - ref).float().repeat_interleave(L, 1), (k_poses - ref).float().repeat_interleave(L, 1))
        new_kv = []
        h = tokens
        for i, blk in enumerate(self.blocks):
            lay = layers[i] if layers is not None else None
            h, kv = blk(h, cond, bias, None if ring else lay, lay if ring else None, pv)
            new_kv.append(kv)
        shift, scale = self.final_ada(F.silu(cond))[:, :, None].chunk(2, dim=-1)
        h = self.final_norm(rearrange(h, "b (f l) d -> b f l d", f=Fn))
        taken = self.taken_head(h.mean(2)).squeeze(-1) if self.cfg.pose_taken else None
        return self._untokens(self.patch_out(modulate(h, shift, scale))), new_kv, taken

    _compiled_core = None

    def compile_streaming(self) -> None:
        """Compile the streaming step with ``torch.compile`` (inductor, fixed shapes, frozen weights):
        the forward calls that read and write a :class:`RingKVCache` under ``no_grad``, where every
        steady-state call of a session has the same shapes. It fuses a step's small elementwise
        operations, drops its Python overhead and packs the weights for oneDNN itself (so the
        pre-packed :class:`model.precision.PackedLinear` layers become plain linears again). Each
        new call shape (batch rows x frames per call) compiles once, on its first call, in seconds to
        a minute (inductor caches the code on disk): warm the shapes up at load
        (:meth:`model.dreamer.Dreamer.warm_up`). Measured in ``benchmarks.dream --compile``."""
        import torch._dynamo

        from model.precision import unpack_linears

        unpack_linears(self)
        # one graph per (batch, frames) shape; several sessions of other batch sizes in one process
        # (a benchmark, an evaluation) must not run out of recompiles and fall back to eager
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 1024)
        # the function, not this module's bound method: a deep copy of the module (which copies this
        # attribute) passes itself and gets a graph of its own weights (the guards on the module)
        self._compiled_core = torch.compile(FrameTransformer._core, dynamic=False, options={"freezing": True})

    @property
    def compiled(self) -> bool:
        """Whether :meth:`compile_streaming` was called."""
        return self._compiled_core is not None

    def forward_teacher(self, x_clean: torch.Tensor, x_noisy: torch.Tensor, sigma: torch.Tensor,
                        actions: torch.Tensor, clean_sigma: torch.Tensor | None = None,
                        pose_actions: torch.Tensor | None = None, taken: torch.Tensor | None = None,
                        return_taken: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher forcing: velocities of the noisy frames given the clean history.

        x_clean, x_noisy: (B, F, C, h, w); sigma: (B, F) noise of the noisy frames;
        clean_sigma: (B, F) noise level of the (optionally noise-augmented) context, 0 by default;
        pose_actions: the actions the poses follow (default ``actions``; training passes the pressed
        ones where ``actions`` has some dropped to the null action); taken: (B, F) bool, which of the
        clip's pressed moves the world took (a ``pose_taken`` model: the clean frames sit at the poses
        of the moves taken, each noisy frame at its previous clean frame's plus its pressed move;
        default all taken). With ``return_taken``: (velocities, the noisy frames' taken logits).
        """
        B, Fn = x_clean.shape[:2]
        times, clean = teacher_forcing_descriptors(Fn, x_clean.device)
        if clean_sigma is None:
            clean_sigma = torch.zeros_like(sigma)
        poses = None
        if self.cfg.pose_moves is not None:  # both halves at the clip's poses (vectorised: no graph break)
            pa = actions if pose_actions is None else pose_actions
            p = self.frame_poses(pa, taken=taken if self.cfg.pose_taken else None)
            poses = torch.cat([p, self.denoising_poses(pa, p)], 1)
        out, logits = self.forward(torch.cat([x_clean, x_noisy], 1), torch.cat([clean_sigma, sigma], 1),
                                   torch.cat([actions, actions], 1), times, clean, poses=poses, return_taken=True)
        if return_taken:
            return out[:, Fn:], None if logits is None else logits[:, Fn:]
        return out[:, Fn:]

    def teacher_context(self, x_clean: torch.Tensor, actions: torch.Tensor,
                        taken: torch.Tensor | None = None) -> KVCache:
        """The clean half of the teacher-forcing layout, computed once: a :class:`KVCache` holding
        the keys/values of the clean clip ``x_clean`` (B, F, ...) with its ``actions`` (the same
        actions the noisy frames get, as in :meth:`forward_teacher`). Every Euler step of a
        teacher-forced ODE solve then runs only the noisy half (:meth:`forward_noisy`), about
        half the work of :meth:`forward_teacher`, with the same result."""
        Fn = x_clean.shape[1]
        cache = KVCache(self.cfg, rolling=False)  # every frame stays: each noisy frame's mask picks its own
        times = torch.arange(Fn, device=x_clean.device)
        self.forward(x_clean, torch.zeros(x_clean.shape[:2], device=x_clean.device), actions, times,
                     torch.ones(Fn, dtype=torch.bool, device=x_clean.device), cache=cache, write_cache=True,
                     taken=taken)
        return cache

    def forward_noisy(self, x_noisy: torch.Tensor, sigma: torch.Tensor, actions: torch.Tensor,
                      context: KVCache) -> torch.Tensor:
        """Velocities of the noisy frames given a :meth:`teacher_context` of the same clip: equal to
        ``forward_teacher(x_clean, x_noisy, sigma, actions)`` to float tolerance."""
        Fn = x_noisy.shape[1]
        times = torch.arange(Fn, device=x_noisy.device)
        poses = None
        if self.cfg.pose_moves is not None:
            poses = self.denoising_poses(actions, context.key_poses(x_noisy.shape[0])[:, :Fn].to(actions.device))
        return self.forward(x_noisy, sigma, actions, times, torch.zeros(Fn, dtype=torch.bool, device=x_noisy.device),
                            cache=context, poses=poses)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
