"""Multi-process training through torch.distributed's own engines: DDP (replicas) and FSDP2
(``fully_shard``: parameters, gradients and optimizer state sharded over the ranks).

The loop calls :func:`wrap` on the trained module; stages with modules of their own that
train (DMD's fake score) or follow the trained one (causal CD's target) get the same
``Parallel`` object through their optional ``parallelize(par)`` hook. FSDP checkpoints keep
the training state sharded (``torch.distributed.checkpoint``: loads on any world size, and in
one process on CPU) beside consolidated safetensors weights for everything that only reads
weights (evaluation, export, the dream).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from trainer.distributed import DistInfo

MODES = ("ddp", "fsdp")


@dataclass
class Parallel:
    info: DistInfo
    mode: str = "ddp"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"train.parallel must be one of {list(MODES)}, got {self.mode!r}")

    @property
    def fsdp(self) -> bool:
        return self.info.enabled and self.mode == "fsdp"

    def shard(self, module: nn.Module, blocks: bool = True) -> nn.Module:
        """FSDP2 in place: each ModuleList entry (a transformer block) its own unit when
        ``blocks``, then the root; returns the module (its parameters become DTensors)."""
        if not self.fsdp:
            return module
        import warnings

        from torch.distributed.fsdp import fully_shard

        # our blocks return views (reshapes) that nothing modifies in place; the test suite checks
        # that FSDP's losses and gradients equal DDP's, so this warning is noise here
        warnings.filterwarnings("ignore", message=".*returned a view tensor.*")

        if blocks:  # reversed pre-order: every unit is sharded before the modules holding it
            for m in reversed(list(module.modules())):
                if isinstance(m, nn.ModuleList):
                    for child in m:
                        fully_shard(child)
        fully_shard(module)
        return module

    def replicate(self, module: nn.Module) -> nn.Module:
        """DDP around a module trained beside the main one (gradients averaged over ranks)."""
        return DDP(module) if self.info.enabled else module

    def wrap(self, module: nn.Module, blocks: bool = True) -> nn.Module:
        """The trained module as the loss sees it: sharded (FSDP), wrapped (DDP) or as is."""
        if not self.info.enabled:
            return module
        if self.mode == "fsdp":
            return self.shard(module, blocks)
        return DDP(module)


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on CPU. Sharded modules: a collective (call it on every rank);
    the full dict lands on rank 0, the other ranks get an empty one."""
    if not is_sharded(module):
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter names (sharded under FSDP, full otherwise)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, opt)


def load_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full, name-keyed optimizer state (as :func:`optimizer_state` gives without FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))


SHARDED_DIR = "sharded"


def save_sharded(path: Path, model: nn.Module, ema: nn.Module | None, opt: torch.optim.Optimizer) -> None:
    """Every rank writes its shards of the model, EMA and optimizer state into ``path``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state: dict[str, Any] = {"model": get_model_state_dict(model), "optim": optimizer_state(model, opt)}
    if ema is not None:
        state["ema"] = get_model_state_dict(ema)
    dcp.save(state, checkpoint_id=str(path))


def load_sharded(path: Path, model: nn.Module, ema: nn.Module | None, opt: torch.optim.Optimizer) -> None:
    """Load a sharded checkpoint written on any number of ranks into this run's layout
    (sharded or not: one plain CPU process reads it too)."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    state: dict[str, Any] = {"model": get_model_state_dict(model), "optim": optimizer_state(model, opt)}
    if ema is not None:
        state["ema"] = get_model_state_dict(ema)
    with warnings.catch_warnings():  # "loading in a single process" is what we mean in 1 process
        warnings.filterwarnings("ignore", message=".*single process.*")
        dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])
    if ema is not None:
        set_model_state_dict(ema, state["ema"])
