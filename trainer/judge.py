"""The action judge: the frozen autoencoder's decoder and the frozen inverse-dynamics model read which
action a *predicted* frame shows, differentiably, so that a teacher can be trained to draw the move it
was told (``loss.idm_weight``, docs/ALGORITHMS.md, "The action judge").

The evaluation reads the controls the same way (the IDM on the decoded frames, docs/EVALUATION.md);
training against it directly targets the transitions the flow loss weights least: on a still view a
move shows in the one or two latent cells the player's 2-pixel step changes.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from model import flow
from model.autoencoder import Autoencoder
from model.idm import InverseDynamics


class ActionJudge(nn.Module):
    """Frozen decoder + IDM. :meth:`logits` (prev latents, current latents) -> the IDM's action logits;
    the gradient flows into the current latents only (the previous ones are real frames)."""

    def __init__(self, ae: Autoencoder, idm: InverseDynamics) -> None:
        super().__init__()
        if idm.cfg.image_size != ae.cfg.image_size:
            raise ValueError(f"the IDM reads {idm.cfg.image_size}x{idm.cfg.image_size} frames and the autoencoder "
                             f"decodes {ae.cfg.image_size}x{ae.cfg.image_size}: give the judge the world's own IDM")
        self.ae, self.idm = ae, idm
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def load(cls, autoencoder: str | Path, idm: str | Path, device: str | torch.device = "cpu") -> ActionJudge:
        from model.io import load_autoencoder, load_idm

        return cls(load_autoencoder(autoencoder, device)[0], load_idm(idm, device)[0])

    def train(self, mode: bool = True) -> ActionJudge:  # always frozen, in eval mode
        return super().train(False)

    def soft_image(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents (N, C, h, w) -> images (N, 3, H, W) in [-1, 1], differentiable: for a
        palette decoder each pixel is the palette's colours weighted by their probabilities (where the
        decoder is sure, the colour :meth:`Autoencoder.decode` picks)."""
        ae = self.ae
        out = ae.decoder(ae.denormalize(z))
        if ae.cfg.output == "rgb":
            return out
        p = out.float().softmax(1)                                   # (N, K, H, W)
        return torch.einsum("nkhw,kc->nchw", p, ae.palette.float())

    def logits(self, prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        """(N, num_actions) action logits of the transitions prev -> cur (normalised latents (N, C, h, w));
        ``prev`` decoded as the evaluation decodes frames (no gradient), ``cur`` by :meth:`soft_image`."""
        with torch.no_grad():
            p = self.ae.decode(prev.float()).float()
        return self.idm(p, self.soft_image(cur)).float()


def pick_frames(sigma: torch.Tensor, drop: torch.Tensor, per_clip: int, max_sigma: float,
                gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Up to ``per_clip`` frames of each clip (B, F) for the judge: frames 1.. (a previous frame in the
    clip), noise level below ``max_sigma`` and their action not dropped. Returns (clip, frame) indices
    (N,) each and a (N,) bool of which picks are valid (a clip with fewer eligible frames pads)."""
    B, F = sigma.shape
    ok = (sigma < max_sigma) & ~drop
    ok[:, 0] = False
    score = torch.rand(B, F, generator=gen).to(sigma.device).masked_fill(~ok, -1.0)
    k = min(per_clip, F - 1)
    top, frame = score.topk(k, dim=1)
    clip = torch.arange(B, device=sigma.device)[:, None].expand(B, k)
    return clip.reshape(-1), frame.reshape(-1), (top >= 0).reshape(-1)


def judge_loss(judge: ActionJudge, x0: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor,
               effective: torch.Tensor, drop: torch.Tensor, per_clip: int, max_sigma: float,
               gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy of the judge's reading of the model's predicted clean frames (from its velocity
    ``v`` at ``x_t``, ``sigma``) against the data's effective actions (B, F): the action that led from
    frame f - 1 to frame f, as the evaluation labels a transition. The previous frame is the real one
    (teacher forcing). Returns (loss, metrics: the CE and the share read right), 0 where nothing is picked."""
    clip, frame, valid = pick_frames(sigma, drop, per_clip, max_sigma, gen)
    if not bool(valid.any()):
        return v.new_zeros((), dtype=torch.float32), {}
    clip, frame = clip[valid], frame[valid]
    x0_hat = flow.x0_from_v(x_t[clip, frame].float(), sigma[clip, frame].float(), v[clip, frame].float())
    logits = judge.logits(x0[clip, frame - 1], x0_hat)
    y = effective[clip, frame].long()
    ce = nn.functional.cross_entropy(logits, y)
    return ce, {"judge_ce": float(ce.detach()), "judge_acc": float((logits.argmax(1) == y).float().mean())}
