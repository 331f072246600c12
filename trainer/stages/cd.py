"""Stage 2b: causal consistency distillation (Causal Forcing++; docs/ALGORITHMS.md section 3b).

Three networks: the student (initialised from the teacher, trained), the frozen teacher, and
the target = EMA of the student (starts equal to the teacher; saved in every checkpoint).
One step on a ground-truth clip x0 with its actions:

1. ``n`` uniform in {0..N-2} on the shifted N-point grid; the same sigma for every frame;
2. ``x_t = (1 - sigma_n) x0 + sigma_n eps``;
3. the teacher (no grad, teacher-forced on the clean ground-truth history, CFG on actions)
   takes one Euler step to ``sigma_{n+1}``;
4. the student predicts x0 at ``(x_t, sigma_n)``; 5. the target predicts x0 at
   ``(x_t', sigma_{n+1})``; 6. loss = MSE between them in x0 space.

No trajectories are stored. The teacher forwards spent are counted (``teacher_nfe``, per
training sample: 1, or 2 with CFG) for the Stage 2 cost comparison.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from model import flow
from model.distill import cd_timestep_pair, consistency_loss, ema_update, teacher_cfg_euler_step
from model.precision import frozen_for_autocast
from trainer.distributed import DistInfo
from trainer.loop import TrainConfig
from trainer.stages.autoencoder import DataConfig
from trainer.stages.common import Student, few_step_eval


@dataclass
class CDLossConfig:
    n_points: int = 48            # the shifted grid (paper: 48)
    cfg: float = 1.0              # teacher guidance in its Euler step (paper: 3.0)
    target_decay: float = 0.99    # EMA decay of the target network
    shift: float = 0.0            # 0 = the teacher's training shift


@dataclass
class CDExperiment:
    stage: str = "cd"
    run_dir: str = "runs/adventure_cd_frame"
    world: str = "adventure"
    teacher: str = "assets/checkpoints/adventure_teacher.safetensors"
    latent_cache_dir: str = "data/latents"
    frames: int = 8
    block_frames: int = 0         # the student's block size; 0 = the teacher's (frame-wise)
    data: DataConfig = field(default_factory=DataConfig)
    loss: CDLossConfig = field(default_factory=CDLossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_windows: int = 64
    eval_steps: tuple[int, ...] = (1, 2)  # few-step lists judged in the held-out evaluation

    def __post_init__(self) -> None:
        self.eval_steps = tuple(self.eval_steps)


class CDStage:
    name = "cd"

    def __init__(self, cfg: CDExperiment) -> None:
        self.cfg = cfg
        st = Student.from_teacher(cfg.teacher, cfg.loss.shift, cfg.block_frames, cfg.data, cfg.frames,
                                  cfg.latent_cache_dir, cfg.eval_windows, cfg.train.seed)
        self.setup = st
        self.shift, self.model_cfg, self.data = st.shift, st.model_cfg, st.data
        self.teacher, self.student = st.teacher, st.student
        self.target = copy.deepcopy(self.student).requires_grad_(False).eval()
        self.gen = torch.Generator().manual_seed(cfg.train.seed)
        self.teacher_nfe = 0
        self.samples = 0

    def config_extra(self) -> dict[str, Any]:
        return self.setup.world_config({"steps": max(self.cfg.eval_steps)})

    # -- Stage protocol
    def model(self) -> nn.Module:
        return self.student

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"target": self.target}

    def tokens_per_sample(self) -> int:
        return 2 * self.cfg.frames * self.model_cfg.tokens_per_frame

    def next_batch(self, batch_size: int, info: DistInfo) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.next_batch(batch_size, info)

    def loss(self, model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """One causal CD step on a ground-truth clip (the numbered steps of the module docstring)."""
        x0, actions = batch
        B, F = x0.shape[:2]
        dev = x0.device
        self.teacher.to(dev)
        frozen_for_autocast(self.teacher)  # bf16 training: the frozen teacher cast once, not per call
        self.target.to(dev)
        # 1. adjacent points n, n+1 of the shifted grid, one sigma for every frame of a clip
        _, s_n, s_next = cd_timestep_pair(B, self.cfg.loss.n_points, self.shift, self.gen)
        sigma = s_n.to(dev)[:, None].expand(B, F)
        sigma_next = s_next.to(dev)[:, None].expand(B, F)
        # 2. x_t = (1 - sigma_n) x0 + sigma_n eps
        eps = torch.randn(x0.shape, generator=self.gen).to(dev)
        x_t = flow.add_noise(x0, eps, sigma)
        zeros = torch.zeros(B, F, device=dev)  # the clean history's sigma (teacher forcing)
        with torch.no_grad():
            # 3. the teacher's guided Euler step sigma_n -> sigma_{n+1}: x_t'
            v_c = self.teacher(x0, x_t, sigma, actions, zeros).float()
            v_u = None
            if self.cfg.loss.cfg != 1.0:
                null = torch.full_like(actions, self.model_cfg.null_action)
                v_u = self.teacher(x0, x_t, sigma, null, zeros).float()
            x_next = teacher_cfg_euler_step(x_t, v_c, v_u, sigma, sigma_next, self.cfg.loss.cfg)
            # 5. the target's x0 at (x_t', sigma_{n+1})
            x0_target = flow.x0_from_v(x_next, sigma_next, self.target(x0, x_next, sigma_next, actions, zeros).float())
        # 4. the student's x0 at (x_t, sigma_n)
        x0_student = flow.x0_from_v(x_t, sigma, model(x0, x_t, sigma, actions, zeros).float())
        self.teacher_nfe += B * (1 if v_u is None else 2)
        self.samples += B
        # 6. MSE between the two in x0 space (the target's EMA update is after_step)
        loss = consistency_loss(x0_student, x0_target)
        return loss, {"teacher_nfe": float(self.teacher_nfe), "teacher_nfe_per_sample":
                      float(self.teacher_nfe / max(self.samples, 1))}

    def parallelize(self, par: Any) -> None:
        """Under FSDP the target is sharded like the student (its EMA update is per shard)."""
        par.shard(self.target)

    def after_step(self, model: nn.Module) -> None:
        from trainer.parallel import is_sharded

        if is_sharded(self.target):  # a sharded root that never runs backward stays gathered after
            self.target.reshard()    # its forward: shard it again so the update is per shard
        ema_update(self.target, model, self.cfg.loss.target_decay)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        return few_step_eval(model, self.data, self.cfg.eval_steps, self.shift, self.cfg.train.precision)

    def data_state(self) -> dict[str, Any]:
        return {"sampler": self.data.sampler.state(), "gen": self.gen.get_state(),
                "teacher_nfe": self.teacher_nfe, "samples": self.samples}

    def load_data_state(self, state: dict[str, Any]) -> None:
        self.data.sampler.load_state(state["sampler"])
        self.gen.set_state(state["gen"])
        self.teacher_nfe = int(state["teacher_nfe"])
        self.samples = int(state["samples"])

