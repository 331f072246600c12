"""The training loop every stage shares: resume, steps, logging, checkpoints, DDP.

A stage supplies the model(s), a batch function and a loss; the loop owns everything
else: precision (``auto``: bf16 autocast where this machine runs it measurably faster, see
:mod:`model.precision`; fp32 master weights and optimizer state), the optimizer and
its schedule, gradient clipping, EMA, a tqdm bar with loss and rate, a JSONL metrics log
(and TensorBoard when installed), atomic checkpoints every N steps or M minutes with
exact resume, and a one-line summary at the end.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn

from model.distill import ema_update
from trainer.checkpoint import (
    CheckpointError,
    begin_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_into,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from trainer.distributed import DistInfo, all_reduce_mean, barrier
from trainer.parallel import MODES as PARALLEL_MODES
from trainer.parallel import (
    SHARDED_DIR,
    Parallel,
    full_state_dict,
    is_sharded,
    load_optimizer_state,
    load_sharded,
    optimizer_state,
    save_sharded,
)
from world.log import get_logger


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.0
    beta2: float = 0.99
    grad_clip: float = 1.0
    ema_decay: float = 0.0          # 0 disables the EMA copy
    precision: str = "auto"         # auto (bf16 where measurably faster here), bf16 autocast (fp32 master weights) or fp32
    threads: int = 0                # torch threads per process; 0 = leave torch's default
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 500
    ckpt_minutes: float = 10.0
    eval_every: int = 0             # 0 = only at the end
    keep_checkpoints: int = 3
    parallel: str = "ddp"           # with several processes: "ddp" (replicas) or "fsdp" (FSDP2 shards)
    compile: bool = False           # torch.compile the trained module
    compile_mode: str = "default"   # torch.compile mode: default, reduce-overhead, max-autotune
    compile_backend: str = "inductor"

    def __post_init__(self) -> None:
        if self.parallel not in PARALLEL_MODES:
            raise ValueError(f"train.parallel must be one of {list(PARALLEL_MODES)}, got {self.parallel!r}")
        if self.compile_mode not in ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
            raise ValueError(f"train.compile_mode must be default, reduce-overhead, max-autotune or "
                             f"max-autotune-no-cudagraphs, got {self.compile_mode!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"train.precision must be 'auto', 'bf16' or 'fp32', got {self.precision!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"train.steps and train.batch_size must be >= 1, got {self.steps}, {self.batch_size}")


class Stage(Protocol):
    name: str

    def model(self) -> nn.Module: ...                       # the trained module
    def extra_modules(self) -> dict[str, nn.Module]: ...    # other modules saved and restored on resume
    def next_batch(self, batch_size: int, info: DistInfo) -> Any: ...
    def loss(self, model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]: ...
    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]: ...
    def data_state(self) -> dict[str, Any]: ...
    def load_data_state(self, state: dict[str, Any]) -> None: ...
    def tokens_per_sample(self) -> int: ...
    # optional: critic_step(model, batch, step) -> batch steps a second network's own optimizer
    # before each loss (DMD's fake score) and returns the batch the loss takes;
    # parallelize(par: Parallel) wraps the stage's own trained/following modules;
    # fsdp_blocks = False shards the trained module as one FSDP unit (a module called several
    # times per forward, e.g. a self-rollout)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


class MetricsLog:
    def __init__(self, run_dir: Path, resume_step: int, enabled: bool) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        if self.path.exists():  # keep the curve up to the resumed step only
            lines = [ln for ln in self.path.read_text().splitlines()
                     if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in lines))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1)
        except Exception:  # noqa: BLE001 - TensorBoard is optional
            self.tb = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def autocast(device: torch.device, precision: str):
    """bf16 autocast when ``precision`` (auto, bf16 or fp32) resolves to bf16 on ``device``."""
    from model.precision import resolve

    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=resolve(precision, device) == "bf16")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def record_config_changes(run_dir: Path, stage: str, step: int, old: dict[str, Any], new: dict[str, Any]) -> dict:
    """A run resumed with another config (a new lr, more steps, another machine's precision) says what
    changed and appends it to ``RUN_DIR/config_changes.jsonl`` (config.json then holds the new one)."""
    a, b = _flat(old), _flat(new)
    changes = {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b))
               if a.get(k) != b.get(k) and not k.startswith("precision.probe")}
    if changes:
        shown = ", ".join(f"{k} {v[0]!r} -> {v[1]!r}" for k, v in list(changes.items())[:8])
        more = f" and {len(changes) - 8} more" if len(changes) > 8 else ""
        get_logger().info(f"[{stage}] resumed with a changed config: {shown}{more} (recorded in {run_dir / 'config_changes.jsonl'})")
        with open(run_dir / "config_changes.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "changes": changes}, default=str) + "\n")
    return changes


class _StopRequest:
    """When a piece of training should end: after ``minutes`` (0 = no limit), or at SIGTERM/SIGINT
    (handled only in the main thread; the previous handlers come back with :meth:`restore`)."""

    def __init__(self, minutes: float) -> None:
        self.deadline = time.time() + 60.0 * minutes if minutes > 0 else None
        self.minutes = minutes
        self.signal: int | None = None
        self.reason = ""
        self._old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.signal = signum

    def requested(self) -> bool:
        if self.signal is not None:
            self.reason = f"{signal.Signals(self.signal).name} received"
            return True
        if self.deadline is not None and time.time() >= self.deadline:
            self.reason = f"--minutes {self.minutes:g} reached"
            return True
        return False

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def train(stage: Stage, cfg: TrainConfig, run_dir: str | Path, info: DistInfo,
          config_dict: dict[str, Any], resume: bool = True, piece_minutes: float = 0.0) -> dict[str, Any]:
    """Run (or resume) a stage to ``cfg.steps``; returns the final metrics.

    A run is trained in pieces when it must: with ``piece_minutes`` > 0 this call stops after that
    many minutes of training, and on SIGTERM or SIGINT (a job scheduler's time limit, Ctrl-C) after
    the step in flight. Either way it writes a checkpoint first and returns with ``stopped`` set;
    the same command resumes the run exactly where the piece ended."""
    run_dir = Path(run_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from model.precision import probe, resolve

    # the precision that runs (auto resolved on this machine), recorded in the run's config.json and in
    # every checkpoint; a run resumed on another machine may resolve differently (same results format)
    precision = resolve(cfg.precision, info.device)
    if info.enabled:  # every rank runs what rank 0's probe chose (a probe near the threshold may differ)
        box = [precision]
        torch.distributed.broadcast_object_list(box, 0)
        precision = box[0]
    config_dict = {**config_dict, "precision": {"asked": cfg.precision, "ran": precision,
                                                "probe": probe(info.device).as_dict()}}
    torch.manual_seed(cfg.seed + info.rank)
    par = Parallel(info, cfg.parallel)
    model = stage.model().to(info.device)
    ema = None
    if cfg.ema_decay > 0:
        ema = copy.deepcopy(model).requires_grad_(False)
    step = 0
    ckpt = latest_checkpoint(run_dir) if resume else None
    sharded = ckpt is not None and (ckpt / SHARDED_DIR).is_dir()
    state: dict[str, Any] = {}
    if ckpt is not None:
        extra = stage.extra_modules()
        own = () if sharded else (("model", "ema") if ema is not None else ("model",))
        weights, state, _meta = load_checkpoint(ckpt, own + tuple(extra))
        if not sharded:  # a sharded checkpoint's model and EMA are loaded after sharding, below
            load_into(model, weights["model"], f"{ckpt}/model.safetensors")
            if ema is not None:
                load_into(ema, weights["ema"], f"{ckpt}/ema.safetensors")
        for name, mod in extra.items():
            load_into(mod, weights[name], f"{ckpt}/{name}.safetensors")
    # plain copies that evaluation and the checkpoint hook run on under FSDP (sharded modules
    # need every rank in each forward; evaluation runs on rank 0 alone)
    plain = copy.deepcopy(model) if par.fsdp else None
    plain_ema = copy.deepcopy(ema) if par.fsdp and ema is not None else None
    train_module = par.wrap(model, blocks=getattr(stage, "fsdp_blocks", True))
    if ema is not None:
        par.shard(ema, blocks=getattr(stage, "fsdp_blocks", True))
    hook = getattr(stage, "parallelize", None)
    if hook is not None:
        hook(par)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, cfg.beta2), fused=info.device.type == "cuda")
    if ckpt is not None:
        if sharded:
            load_sharded(ckpt / SHARDED_DIR, model, ema, opt)
        elif "optimizer_named" in state:
            load_optimizer_state(model, opt, state["optimizer_named"])
        elif par.fsdp:
            raise CheckpointError(f"{ckpt} has an optimizer state from an older trainer that FSDP cannot load; "
                                  f"resume it with train.parallel=ddp, or start over with --fresh")
        else:
            opt.load_state_dict(state["optimizer"])
        stage.load_data_state(state["data"])
        set_rng_state(state["rng"][info.rank] if info.rank < len(state["rng"]) else state["rng"][0])
        step = int(state["step"])
        if _meta.get("final") and step >= cfg.steps:
            # a finished run is left as it is: no second final evaluation, and its last checkpoint keeps
            # the config it was trained under (a smaller train.steps must not overwrite it)
            get_logger().info(f"[{stage.name}] {ckpt} is the final checkpoint of a finished run (step {step}, "
                              f"train.steps={cfg.steps}): nothing to do")
            return {"stage": stage.name, "steps": step, "checkpoint": str(ckpt),
                    "wall_s_total": float(_meta.get("wall_s_total", 0.0)), "already_complete": True}
        if info.is_main:
            get_logger().info(f"[{stage.name}] resumed from {ckpt} at step {step}"
                              f"{' (sharded state)' if sharded else ''}")
            record_config_changes(run_dir, stage.name, step, _meta.get("config") or {}, config_dict)
    if cfg.compile:
        train_module = torch.compile(train_module, mode=cfg.compile_mode, backend=cfg.compile_backend)
        get_logger().info(f"[{stage.name}] torch.compile: mode {cfg.compile_mode}, backend {cfg.compile_backend}")
    log = MetricsLog(run_dir, step, info.is_main)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config_dict, indent=2))
        get_logger().info(f"[{stage.name}] precision {precision} (train.precision={cfg.precision}; {probe(info.device).reason})")
    per_rank = cfg.batch_size // info.world_size
    if per_rank * info.world_size != cfg.batch_size:
        raise ValueError(f"train.batch_size={cfg.batch_size} must be divisible by the number of processes "
                         f"({info.world_size})")

    def gathered(module: nn.Module | None, copy_to: nn.Module | None) -> nn.Module | None:
        """``module`` itself, or under FSDP its plain copy loaded with the full weights on rank 0
        (a collective: every rank calls it)."""
        if module is None or copy_to is None:
            return module
        sd = full_state_dict(module)
        if info.is_main:
            copy_to.load_state_dict(sd)
        return copy_to

    def for_eval() -> nn.Module:
        return gathered(ema, plain_ema) if ema is not None else gathered(model, plain)  # type: ignore[return-value]

    def checkpoint(final: bool = False) -> Path | None:
        rngs = [rng_state()]
        if info.enabled:
            gathered_rngs: list[Any] = [None] * info.world_size
            torch.distributed.all_gather_object(gathered_rngs, rngs[0])
            rngs = gathered_rngs
        m_full, e_full = gathered(model, plain), gathered(ema, plain_ema)
        extras = {name: full_state_dict(mod) for name, mod in stage.extra_modules().items()
                  if info.is_main or is_sharded(mod)}
        tmp = None
        if par.fsdp:  # every rank writes its shards into rank 0's temporary folder
            box = [begin_checkpoint(run_dir, step) if info.is_main else None]
            torch.distributed.broadcast_object_list(box, 0)
            tmp = box[0]
            save_sharded(tmp / SHARDED_DIR, model, ema, opt)
            barrier(info)
        named_opt = optimizer_state(model, opt) if info.is_main and not par.fsdp else None
        path = None
        if info.is_main:
            assert m_full is not None
            before = getattr(stage, "before_checkpoint", None)
            if before is not None:  # e.g. the autoencoder's latent statistics
                before(m_full, e_full)
            weights = {"model": m_full.state_dict()}
            if e_full is not None:
                weights["ema"] = e_full.state_dict()
            weights.update(extras)
            state = {"data": stage.data_state(), "rng": rngs, "step": step}
            if named_opt is not None:
                state["optimizer_named"] = named_opt
            meta = {"stage": stage.name, "config": config_dict, "final": final, "parallel": cfg.parallel,
                    "world_size": info.world_size, "sharded": par.fsdp,
                    "wall_s_total": wall_before + (time.time() - t_start)}
            path = save_checkpoint(run_dir, step, weights, state, meta, keep=cfg.keep_checkpoints, tmp=tmp)
        barrier(info)
        return path

    wall_before = 0.0
    if ckpt is not None:
        wall_before = float(_meta.get("wall_s_total", 0.0))
    t_start = time.time()
    last_ckpt_time = time.time()
    bar = None
    if info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=stage.name, dynamic_ncols=True,
                   disable=os.environ.get("DREAMSTEP_NO_BAR") == "1")
    window_t, window_n = time.time(), 0
    last_metrics: dict[str, float] = {}
    stop = _StopRequest(piece_minutes)
    try:
        model.train()
        while step < cfg.steps:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            batch = stage.next_batch(per_rank, info)
            with autocast(info.device, precision):
                critic_step = getattr(stage, "critic_step", None)
                if critic_step is not None:  # e.g. DMD's fake score: its own optimizer steps, before the loss
                    batch = critic_step(train_module, batch, step)
                loss, metrics = stage.loss(train_module, batch, step)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"[{stage.name}] loss became {loss.item()} at step {step}; "
                                         f"lower train.lr (now {cfg.lr}) or resume from the last checkpoint")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else torch.tensor(0.0)
            if hasattr(gnorm, "full_tensor"):  # FSDP: a DTensor
                gnorm = gnorm.full_tensor()
            opt.step()
            if ema is not None:
                # warm-up: an average over the steps so far until 1/(1-decay) steps have passed, so a
                # short run's EMA is not dominated by its initial weights (0.999**1500 = 22%)
                ema_update(ema, model, min(cfg.ema_decay, (1.0 + step) / (10.0 + step)))
            after = getattr(stage, "after_step", None)
            if after is not None:  # e.g. causal CD's target network
                after(model)
            step += 1
            window_n += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                loss_avg = all_reduce_mean(loss.detach().float(), info).item()
                dt = time.time() - window_t
                rate = window_n / dt if dt > 0 else 0.0
                last_metrics = {"loss": loss_avg, "lr": lr_at(step - 1, cfg), "grad_norm": float(gnorm),
                                "steps_per_s": rate,
                                "tokens_per_s": rate * cfg.batch_size * stage.tokens_per_sample(),
                                **{k: float(v) for k, v in metrics.items()}}
                if info.device.type == "cuda":
                    last_metrics["peak_mem_gb"] = torch.cuda.max_memory_allocated(info.device) / 1e9
                log.log(step, last_metrics)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_avg:.4f}", lr=f"{last_metrics['lr']:.1e}")
                window_t, window_n = time.time(), 0
            if bar is not None:
                bar.update(1)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                ev_model = for_eval()
                ev = stage.evaluate(ev_model, step) if info.is_main else {}
                log.log(step, {f"eval/{k}": v for k, v in ev.items()} | {"wall_s": wall_before + time.time() - t_start})
                model.train()
            want_ckpt = step % cfg.ckpt_every == 0 or (time.time() - last_ckpt_time) > 60 * cfg.ckpt_minutes
            want_stop = stop.requested()
            if info.enabled:  # all ranks must agree to enter the collective in checkpoint(); rank 0 decides
                flag = torch.tensor([float(want_ckpt), float(want_stop)])
                torch.distributed.broadcast(flag, 0)
                want_ckpt, want_stop = bool(flag[0].item()), bool(flag[1].item())
            if (want_ckpt or want_stop) and step < cfg.steps:
                path = checkpoint()
                last_ckpt_time = time.time()
                if want_stop:
                    if bar is not None:
                        bar.close()
                    log.close()
                    wall = wall_before + (time.time() - t_start)
                    get_logger().info(f"[{stage.name}] piece ended at step {step}/{cfg.steps} ({stop.reason}); "
                                      f"wrote {path}; run the same command to continue from it")
                    return {"stage": stage.name, "steps": step, "checkpoint": str(path) if path else None,
                            "wall_s_total": wall, "stopped": stop.reason,
                            **{f"final_{k}": v for k, v in last_metrics.items()}}
    finally:
        stop.restore()
    if bar is not None:
        bar.close()
    ev_model = for_eval()
    final_eval = stage.evaluate(ev_model, step) if info.is_main else {}
    if final_eval:
        log.log(step, {f"eval/{k}": v for k, v in final_eval.items()} | {"wall_s": wall_before + time.time() - t_start})
    path = checkpoint(final=True)
    log.close()
    wall = wall_before + (time.time() - t_start)
    summary = {"stage": stage.name, "steps": step, "checkpoint": str(path) if path else None,
               "wall_s_total": wall, **{f"final_{k}": v for k, v in last_metrics.items()},
               **{f"eval_{k}": v for k, v in final_eval.items()}}
    ev = ", ".join(f"{k}={v:.4g}" for k, v in final_eval.items())
    get_logger().info(f"[{stage.name}] done: {step} steps in {wall / 60:.1f} min (total), "
                      f"loss {last_metrics.get('loss', float('nan')):.4f}{', ' + ev if ev else ''}; wrote {path}")
    return summary
