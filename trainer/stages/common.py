"""The set-up every distillation stage shares (docs/ALGORITHMS.md sections 3-4).

Causal ODE distillation (``ode.py``), causal consistency distillation (``cd.py``) and DMD
(``dmd.py``) each read as their method; what they have in common lives here, so that no
method depends on another: loading the frozen teacher and its noise shift, the student a
Stage 2 method starts from (``Student``), the config keys that make a distilled run's
checkpoints load like a teacher's (``distilled_world_config``), and the held-out few-step
evaluation the loop runs for all of them (``few_step_eval``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from model import flow
from model.transformer import FrameTransformer, TransformerConfig
from trainer.config import from_dict
from trainer.loop import autocast
from trainer.stages.autoencoder import DataConfig
from trainer.stages.teacher import ClipData, TeacherForcing


def load_teacher(path: str) -> tuple[FrameTransformer, dict[str, Any]]:
    """A world model (a teacher, or a distilled student: a run folder, checkpoint or shipped
    file) and its config."""
    from trainer.models import load_world_model

    net, cfg, _ = load_world_model(path)
    return net, cfg


def teacher_shift(teacher_config: dict[str, Any], shift: float = 0.0) -> float:
    """``shift``, or (0) the noise shift the teacher was trained with."""
    return shift or float(teacher_config.get("loss", {}).get("shift", 3.0))


@dataclass
class Student:
    """What every Stage 2 method starts from: the frozen teacher, its config and shift, the
    student's model config (the teacher's, with an optional block size), the clip data, and a
    student initialised from the teacher."""
    teacher: nn.Module            # frozen, teacher-forcing wrapper
    teacher_config: dict[str, Any]
    shift: float
    model_cfg: TransformerConfig
    data: ClipData
    student: nn.Module            # trainable, teacher-forcing wrapper

    @classmethod
    def from_teacher(cls, teacher_path: str, shift: float, block_frames: int, data: DataConfig, frames: int,
                     cache_dir: str, eval_windows: int, seed: int) -> Student:
        teacher, tcfg = load_teacher(teacher_path)
        shift = teacher_shift(tcfg, shift)
        model_cfg = dict(tcfg["model"])
        if block_frames:
            model_cfg["block_frames"] = block_frames
        mcfg = from_dict(TransformerConfig, model_cfg, "student model")
        clips = ClipData(tcfg["autoencoder"], data, frames, cache_dir, mcfg, eval_windows, seed)
        student = FrameTransformer(mcfg)
        student.load_from(teacher)
        if mcfg.pose_taken:  # the distillation losses do not train the taken head: it keeps the teacher's
            student.taken_head.requires_grad_(False)  # (and DDP sees no parameter without a gradient)
        return cls(TeacherForcing(teacher).requires_grad_(False).eval(), tcfg, shift, mcfg, clips,
                   TeacherForcing(student))

    def world_config(self, sampler: dict[str, Any]) -> dict[str, Any]:
        return distilled_world_config(self.model_cfg, self.teacher_config, self.shift, sampler)


def distilled_world_config(model_cfg: TransformerConfig, teacher_config: dict[str, Any], shift: float,
                           sampler: dict[str, Any]) -> dict[str, Any]:
    """The config keys that make a distilled run's checkpoints load like a teacher's (evaluation,
    the dream, export): its model, the teacher's autoencoder and world, its few-step sampler."""
    return {"model": dataclasses.asdict(model_cfg), "autoencoder": teacher_config["autoencoder"],
            "loss": {"shift": shift}, "world_settings": teacher_config.get("world_settings", {}),
            "sampler": {"kind": "consistency", **sampler}}


@torch.no_grad()
def few_step_eval(model: nn.Module, data: ClipData, steps_list: tuple[int, ...], shift: float,
                  precision: str) -> dict[str, float]:
    """Held-out x0 error of k-step consistency sampling, teacher-forced on the true history
    (every frame at once): what the student gets right per frame before rollout drift."""
    if not len(data.eval_windows):
        return {}
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    out: dict[str, list[float]] = {f"x0_mse_{k}step": [] for k in steps_list}
    for i in range(0, len(data.eval_windows), 16):
        x0, a = data.clips(data.eval_windows[i:i + 16], dev)
        B, F = x0.shape[:2]
        zeros = torch.zeros(B, F, device=dev)
        for k in steps_list:
            gen = torch.Generator().manual_seed(1234 + i)

            def v(x: torch.Tensor, sigma: torch.Tensor, acts: torch.Tensor, clean: torch.Tensor = x0,
                  zs: torch.Tensor = zeros) -> torch.Tensor:
                with autocast(dev, precision):
                    return model(clean, x, sigma, acts, zs).float()

            noise = torch.randn(x0.shape, generator=gen).to(dev)
            pred = flow.sample_consistency(v, noise, a, flow.step_list(k, shift), gen)
            out[f"x0_mse_{k}step"].append(float((pred - x0).pow(2).mean()))
    model.train(was)
    return {key: float(np.mean(vals)) for key, vals in out.items()}
