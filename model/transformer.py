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

    def __post_init__(self) -> None:
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

    def forward(self, x: torch.Tensor, bias: torch.Tensor,
                past_kv: tuple[torch.Tensor, torch.Tensor] | None = None, ring: RingSlot | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x: (B, N, D). Returns the output and this call's (k, v) for a cache.

        ``past_kv``: cached keys/values the tokens also attend to (concatenated before them);
        ``ring``: a :class:`RingKVCache` layer's (keys, values, start) instead: this call's keys/values
        are written into its scratch slots from ``start`` on and attention reads the buffer in place
        (no copy of the cache)."""
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
        out = attention(q, k, v, bias, self.backend)
        return self.proj(rearrange(out, "b h n d -> b n (h d)")), new_kv


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
                past_kv: tuple[torch.Tensor, torch.Tensor] | None = None, ring: RingSlot | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x: (B, F*L, D) tokens, frame-major; cond: (B, F, D) the condition of each frame.

        The modulation is computed once per frame and broadcast over the frame's L tokens (a
        third of a block's matmul work if it were computed per token)."""
        B, N, D = x.shape
        Fn = cond.shape[1]
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(F.silu(cond))[:, :, None].chunk(6, dim=-1)  # (B, F, 1, D)
        x = x.view(B, Fn, N // Fn, D)
        h, kv = self.attn(modulate(self.norm1(x), sh1, sc1).reshape(B, N, D), bias, past_kv, ring)
        x = x + g1 * h.view_as(x)
        x = x + g2 * self.mlp(modulate(self.norm2(x), sh2, sc2))
        return x.reshape(B, N, D), kv


# ---------------------------------------------------------------------------- cache
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

    @property
    def num_frames(self) -> int:
        return int(self.times.numel())

    def append(self, layer_kv: list[tuple[torch.Tensor, torch.Tensor]], times: torch.Tensor) -> None:
        for i, (k, v) in enumerate(layer_kv):
            old = self.layers[i]
            self.layers[i] = (k, v) if old is None else (torch.cat([old[0], k], 2), torch.cat([old[1], v], 2))
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

    def state(self) -> dict[str, object]:
        return {"layers": [None if kv is None else (kv[0].clone(), kv[1].clone()) for kv in self.layers],
                "times": self.times.clone()}

    def load_state(self, state: dict[str, object]) -> None:
        self.layers = [None if kv is None else (kv[0].clone(), kv[1].clone()) for kv in state["layers"]]  # type: ignore[union-attr]
        self.times = state["times"].clone()  # type: ignore[union-attr]

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

    def write(self, layer_kv: list[tuple[torch.Tensor, torch.Tensor]], times: torch.Tensor) -> None:
        """Store clean frames' keys/values (B, H, F*L, d) at their slots."""
        L = self.cfg.tokens_per_frame
        self._alloc(layer_kv[0][0], len(times))
        assert self.buffers is not None
        for j, t in enumerate(times.tolist()):
            s = self.slot_of(int(t))
            for (k, v), (bk, bv) in zip(layer_kv, self.buffers):
                bk[:, :, s * L:(s + 1) * L].copy_(k[:, :, j * L:(j + 1) * L])
                bv[:, :, s * L:(s + 1) * L].copy_(v[:, :, j * L:(j + 1) * L])
            self.slot_times[s] = int(t)
            self.valid[s] = True

    append = write

    @property
    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer the slot region of the buffers (B, H, slots*L, d), batch rows copyable."""
        assert self.buffers is not None
        m = self.slots * self.cfg.tokens_per_frame
        return [(k[:, :, :m], v[:, :, :m]) for k, v in self.buffers]

    def state(self) -> dict[str, object]:
        return {"buffers": None if self.buffers is None else [(k.clone(), v.clone()) for k, v in self.buffers],
                "slot_times": self.slot_times.clone(), "valid": self.valid.clone()}

    def load_state(self, state: dict[str, object]) -> None:
        bufs = state["buffers"]
        self.buffers = None if bufs is None else [(k.clone(), v.clone()) for k, v in bufs]  # type: ignore[union-attr]
        self.slot_times = state["slot_times"].clone()  # type: ignore[union-attr]
        self.valid = state["valid"].clone()  # type: ignore[union-attr]

    def nbytes(self) -> int:
        return 0 if self.buffers is None else sum(k.numel() * k.element_size() * 2 for k, _ in self.buffers)


# ---------------------------------------------------------------------------- model
class FrameTransformer(nn.Module):
    """Velocity predictor over sequences of latent frames: (B, F, C, h, w) -> (B, F, C, h, w)."""

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
        self.final_norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(D, 2 * D)
        self.patch_out = nn.Linear(D, C * p * p)
        for lin in (self.final_ada, self.patch_out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

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

    def attention_bias(self, q_times: torch.Tensor, q_clean: torch.Tensor, k_times: torch.Tensor,
                       k_clean: torch.Tensor, k_valid: torch.Tensor | None = None) -> torch.Tensor:
        """(1, heads, Nq, Nk) additive bias over tokens: time-distance bias, -inf where masked
        (and for keys that are not ``k_valid``: empty cache slots)."""
        cfg = self.cfg
        allowed = frame_mask(q_times, q_clean, k_times, k_clean, cfg.block_frames, cfg.window, cfg.sink)
        if k_valid is not None:
            allowed = allowed & k_valid[None, :]
        dist = q_times[:, None] - k_times[None, :]
        idx = (dist + cfg.block_frames - 1).clamp(0, self.n_dist - 1)
        sink_idx = self.n_dist + k_times.clamp(max=cfg.sink - 1) if cfg.sink > 0 else None
        if sink_idx is not None:
            idx = torch.where(k_times[None, :] < cfg.sink, sink_idx[None, :].expand_as(idx), idx)
        bias = self.time_bias[:, idx.to(self.time_bias.device)]  # (H, Fq, Fk)
        bias = bias.masked_fill(~allowed.to(bias.device)[None], float("-inf"))
        L = cfg.tokens_per_frame
        return bias.repeat_interleave(L, dim=1).repeat_interleave(L, dim=2)[None]

    # ------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, sigma: torch.Tensor, actions: torch.Tensor,
                times: torch.Tensor, clean: torch.Tensor,
                cache: KVCache | RingKVCache | None = None, write_cache: bool = False) -> torch.Tensor:
        """Predict velocities for a sequence of frames.

        x: (B, F, C, h, w); sigma: (B, F) in [0, 1]; actions: (B, F) long (null allowed);
        times: (F,) long time index of each frame; clean: (F,) bool (context vs noisy).
        With ``cache``, the frames also attend to the cached frames; with ``write_cache``
        (all frames clean), their keys/values are appended to it afterwards.
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
        core = FrameTransformer._core
        if self._compiled_core is not None and isinstance(cache, RingKVCache) and cache.compiled \
                and not torch.is_grad_enabled():
            core = self._compiled_core
            x = x.contiguous()  # one layout per shape (a strided view would compile another graph)
        out, new_kv = core(self, x, sigma, actions, times, clean, k_times, k_clean, k_valid, layers,
                           isinstance(cache, RingKVCache))
        if write_cache:  # the clean frames' keys/values (a fused call also holds noisy frames)
            if cache is None or not bool(clean.any()):
                raise ValueError("write_cache needs a cache and at least one clean frame")
            if bool(clean.all()):
                cache.append([(k.detach(), v.detach()) for k, v in new_kv], times)
            else:
                tok = clean.repeat_interleave(L).nonzero().squeeze(1)
                cache.append([(k.detach().index_select(2, tok), v.detach().index_select(2, tok))
                              for k, v in new_kv], times[clean].cpu())
        return out

    def _core(self, x: torch.Tensor, sigma: torch.Tensor, actions: torch.Tensor, times: torch.Tensor,
              clean: torch.Tensor, k_times: torch.Tensor, k_clean: torch.Tensor, k_valid: torch.Tensor | None,
              layers: list | None, ring: bool) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The forward's tensor work, without the cache's bookkeeping (what :meth:`compile_streaming`
        compiles): the frames' velocities and each layer's keys/values of the call's tokens.
        ``layers``: per layer the cached (keys, values) or, with ``ring``, a ring cache's slots."""
        Fn = x.shape[1]
        tokens = rearrange(self._tokens(x), "b f l d -> b (f l) d")
        cond = self._cond(sigma, actions)  # (B, F, D): per frame, broadcast over its tokens
        bias = self.attention_bias(times, clean, k_times, k_clean, k_valid)
        new_kv = []
        h = tokens
        for i, blk in enumerate(self.blocks):
            lay = layers[i] if layers is not None else None
            h, kv = blk(h, cond, bias, None if ring else lay, lay if ring else None)
            new_kv.append(kv)
        shift, scale = self.final_ada(F.silu(cond))[:, :, None].chunk(2, dim=-1)
        h = rearrange(h, "b (f l) d -> b f l d", f=Fn)
        return self._untokens(self.patch_out(modulate(self.final_norm(h), shift, scale))), new_kv

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
                        actions: torch.Tensor, clean_sigma: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: velocities of the noisy frames given the clean history.

        x_clean, x_noisy: (B, F, C, h, w); sigma: (B, F) noise of the noisy frames;
        clean_sigma: (B, F) noise level of the (optionally noise-augmented) context, 0 by default.
        """
        B, Fn = x_clean.shape[:2]
        times, clean = teacher_forcing_descriptors(Fn, x_clean.device)
        if clean_sigma is None:
            clean_sigma = torch.zeros_like(sigma)
        out = self.forward(torch.cat([x_clean, x_noisy], 1), torch.cat([clean_sigma, sigma], 1),
                           torch.cat([actions, actions], 1), times, clean)
        return out[:, Fn:]

    def teacher_context(self, x_clean: torch.Tensor, actions: torch.Tensor) -> KVCache:
        """The clean half of the teacher-forcing layout, computed once: a :class:`KVCache` holding
        the keys/values of the clean clip ``x_clean`` (B, F, ...) with its ``actions`` (the same
        actions the noisy frames get, as in :meth:`forward_teacher`). Every Euler step of a
        teacher-forced ODE solve then runs only the noisy half (:meth:`forward_noisy`), about
        half the work of :meth:`forward_teacher`, with the same result."""
        Fn = x_clean.shape[1]
        cache = KVCache(self.cfg, rolling=False)  # every frame stays: each noisy frame's mask picks its own
        times = torch.arange(Fn, device=x_clean.device)
        self.forward(x_clean, torch.zeros(x_clean.shape[:2], device=x_clean.device), actions, times,
                     torch.ones(Fn, dtype=torch.bool, device=x_clean.device), cache=cache, write_cache=True)
        return cache

    def forward_noisy(self, x_noisy: torch.Tensor, sigma: torch.Tensor, actions: torch.Tensor,
                      context: KVCache) -> torch.Tensor:
        """Velocities of the noisy frames given a :meth:`teacher_context` of the same clip: equal to
        ``forward_teacher(x_clean, x_noisy, sigma, actions)`` to float tolerance."""
        Fn = x_noisy.shape[1]
        times = torch.arange(Fn, device=x_noisy.device)
        return self.forward(x_noisy, sigma, actions, times, torch.zeros(Fn, dtype=torch.bool, device=x_noisy.device),
                            cache=context)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
