"""Stage 2a: causal ODE distillation (Causal Forcing; the baseline; docs/ALGORITHMS.md section 3a).

Precompute: the AR teacher's PF-ODE (``solve_steps`` Euler steps with action CFG) on all
frames of a clip at once, teacher-forced on the ground-truth clean history, from pure noise;
the states at the student's step sigmas plus the endpoint are stored (float16) with the clip's
window index. The cost is accounted in ``trajectories.json``: teacher forwards, wall time and
bytes stored.

Train: the student (initialised from the teacher) maps a stored state at one of the step
sigmas (the same for all frames) to the stored endpoint, with the same teacher-forced clean
context; MSE in x0 space.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from model import flow
from model.distill import ode_regression_loss, teacher_cfg_euler_step, trajectory_indices
from model.transformer import FrameTransformer
from trainer.data import EpochSampler
from trainer.distributed import DistInfo, main_first
from trainer.loop import TrainConfig
from trainer.stages.autoencoder import DataConfig
from trainer.stages.common import Student, few_step_eval
from trainer.stages.teacher import ClipData
from world.log import get_logger


@dataclass
class ODEConfig:
    student_steps: int = 2        # the student's step list (states stored at its sigmas)
    solve_steps: int = 48         # teacher Euler steps per trajectory (paper: 48)
    cfg: float = 1.0              # teacher guidance (paper: 6.0)
    samples: int = 2048           # trajectories to precompute
    shift: float = 0.0            # 0 = the teacher's
    batch: int = 32               # clips solved at once


@dataclass
class ODEExperiment:
    stage: str = "ode"
    run_dir: str = "runs/adventure_ode_frame"
    world: str = "adventure"
    teacher: str = "assets/checkpoints/adventure_teacher.safetensors"
    latent_cache_dir: str = "data/latents"
    trajectories: str = "data/ode/adventure_frame2"
    frames: int = 8
    block_frames: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    ode: ODEConfig = field(default_factory=ODEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_windows: int = 64
    eval_steps: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        self.eval_steps = tuple(self.eval_steps)


@torch.no_grad()
def solve_teacher_ode(teacher: nn.Module, x0: torch.Tensor, actions: torch.Tensor, noise: torch.Tensor,
                      grid: torch.Tensor, cfg_scale: float, null_action: int, keep: Any = ()
                      ) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    """The teacher's PF-ODE from ``noise`` over ``grid`` (Euler, action CFG), every frame at once and
    teacher-forced on the clean clip ``x0``: (endpoint, states at the step indices in ``keep``,
    teacher forwards). The clean clip's keys/values are computed once (a context pass, counted as
    a forward) and each step runs only the noisy frames: about half the work of a full
    teacher-forcing forward per step, the same velocities."""
    B, F = x0.shape[:2]
    null = torch.full_like(actions, null_action)
    passes = 1 if cfg_scale == 1.0 else 2
    net = getattr(teacher, "net", teacher)
    x, saved, nfe = noise, [], 0
    if isinstance(net, FrameTransformer):
        # the clean half of [clean || noisy] does not change along the solve: its keys/values once
        # (these context passes count as forwards)
        ctx_c = net.teacher_context(x0, actions)
        ctx_u = net.teacher_context(x0, null) if passes == 2 else None
        nfe += B * passes

        def v_of(x: torch.Tensor, s: torch.Tensor, conditional: bool) -> torch.Tensor:
            return net.forward_noisy(x, s, actions if conditional else null, ctx_c if conditional else ctx_u)
    else:  # any other teacher-forcing module: the whole [clean || noisy] forward every step
        zeros = torch.zeros(B, F, device=x0.device)

        def v_of(x: torch.Tensor, s: torch.Tensor, conditional: bool) -> torch.Tensor:
            return teacher(x0, x, s, actions if conditional else null, zeros)
    for j in range(len(grid) - 1):
        if j in keep:
            saved.append(x.clone())
        s, s2 = torch.full((B, F), float(grid[j])), torch.full((B, F), float(grid[j + 1]))
        v_c = v_of(x, s, True).float()
        v_u = v_of(x, s, False).float() if passes == 2 else None
        nfe += B * passes
        x = teacher_cfg_euler_step(x, v_c, v_u, s, s2, cfg_scale)
    return x, saved, nfe


@torch.no_grad()
def generate_trajectories(teacher: nn.Module, data: ClipData, cfg: ODEConfig, shift: float, null_action: int,
                          out: Path, seed: int) -> dict[str, Any]:
    """Solve and store ``cfg.samples`` teacher trajectories; returns (and writes) the cost record."""
    t0 = time.time()
    student_sigmas = flow.step_list(cfg.student_steps, shift)
    grid = flow.sigma_grid(cfg.solve_steps + 1, shift)
    keep = trajectory_indices(cfg.solve_steps, student_sigmas, shift)
    rng = np.random.default_rng(seed)
    rows = data.train_windows[rng.permutation(len(data.train_windows))[:cfg.samples]]
    gen = torch.Generator().manual_seed(seed)
    states, ends, nfe = [], [], 0
    import os

    from tqdm import tqdm

    for i in tqdm(range(0, len(rows), cfg.batch), desc="teacher ODE trajectories", dynamic_ncols=True,
                  disable=os.environ.get("DREAMSTEP_NO_BAR") == "1"):
        x0, a = data.clips(rows[i:i + cfg.batch], torch.device("cpu"))
        x, saved, n = solve_teacher_ode(teacher, x0, a, torch.randn(x0.shape, generator=gen), grid, cfg.cfg,
                                        null_action, keep)
        nfe += n
        states.append(torch.stack(saved, 1).half().numpy())  # (B, K, F, C, h, w)
        ends.append(x.half().numpy())
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"trajectories.tmp{os.getpid()}.npz"
    np.savez(tmp, rows=rows, states=np.concatenate(states), endpoints=np.concatenate(ends),
             sigmas=np.asarray([float(grid[k]) for k in keep], np.float32))
    tmp.replace(out / "trajectories.npz")
    cost = {"samples": int(len(rows)), "solve_steps": cfg.solve_steps, "cfg": cfg.cfg,
            "stored_sigmas": [float(grid[k]) for k in keep], "teacher_nfe": int(nfe),
            "wall_s": time.time() - t0, "bytes_stored": int((out / "trajectories.npz").stat().st_size)}
    (out / "trajectories.json").write_text(json.dumps(cost, indent=1))
    return cost


class ODEStage:
    name = "ode"

    def __init__(self, cfg: ODEExperiment) -> None:
        self.cfg = cfg
        st = Student.from_teacher(cfg.teacher, cfg.ode.shift, cfg.block_frames, cfg.data, cfg.frames,
                                  cfg.latent_cache_dir, cfg.eval_windows, cfg.train.seed)
        self.setup = st
        self.shift, self.model_cfg, self.data, self.student = st.shift, st.model_cfg, st.data, st.student
        store = Path(cfg.trajectories)
        with main_first():  # several processes: rank 0 solves and stores them, the others read them
            if not (store / "trajectories.npz").is_file():
                cost = generate_trajectories(st.teacher, self.data, cfg.ode, self.shift,
                                             self.model_cfg.null_action, store, cfg.train.seed)
                get_logger().info(f"[ode] stored {cost['samples']} trajectories: {cost['teacher_nfe']} teacher forwards, "
                      f"{cost['wall_s']:.0f} s, {cost['bytes_stored'] / 1e6:.1f} MB -> {store}")
        self.cost = json.loads((store / "trajectories.json").read_text())
        with np.load(store / "trajectories.npz") as z:
            self.rows, self.states, self.endpoints = z["rows"], z["states"], z["endpoints"]
            self.sigmas = z["sigmas"]
        if self.rows.shape[1:] != (2,) or self.states.shape[2] != cfg.frames:
            raise ValueError(f"trajectories in {store} do not fit frames={cfg.frames}; delete the folder to "
                             f"regenerate them")
        self.sampler = EpochSampler(len(self.rows), cfg.train.seed)
        self.gen = torch.Generator().manual_seed(cfg.train.seed)

    def config_extra(self) -> dict[str, Any]:
        return self.setup.world_config({"steps": self.cfg.ode.student_steps})

    def model(self) -> nn.Module:
        return self.student

    def extra_modules(self) -> dict[str, nn.Module]:
        return {}

    def tokens_per_sample(self) -> int:
        return 2 * self.cfg.frames * self.model_cfg.tokens_per_frame

    def next_batch(self, batch_size: int, info: DistInfo) -> tuple[torch.Tensor, ...]:
        idx = self.sampler.take(batch_size * info.world_size)[info.rank * batch_size:(info.rank + 1) * batch_size]
        x0, a = self.data.clips(self.rows[idx], info.device)
        k = torch.randint(0, len(self.sigmas), (len(idx),), generator=self.gen).numpy()
        state = torch.from_numpy(self.states[idx, k].astype(np.float32)).to(info.device)
        sigma = torch.from_numpy(self.sigmas[k]).to(info.device)
        end = torch.from_numpy(self.endpoints[idx].astype(np.float32)).to(info.device)
        return x0, a, state, sigma, end

    def loss(self, model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        x0, a, state, sigma, end = batch
        B, F = x0.shape[:2]
        s = sigma[:, None].expand(B, F)
        pred = flow.x0_from_v(state, s, model(x0, state, s, a, torch.zeros(B, F, device=x0.device)).float())
        return ode_regression_loss(pred, end), {"stage2_teacher_nfe": float(self.cost["teacher_nfe"])}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        return few_step_eval(model, self.data, self.cfg.eval_steps, self.shift, self.cfg.train.precision)

    def data_state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state(), "gen": self.gen.get_state()}

    def load_data_state(self, state: dict[str, Any]) -> None:
        self.sampler.load_state(state["sampler"])
        self.gen.set_state(state["gen"])
