"""The dreamed world: a World whose frames come from a trained world model.

It starts from real context frames (the real game reset with the same seed, then
``context - 1`` NOOP steps), streams frames with the model's sampler and its KV cache
(a rolling window plus attention sink, so a session runs forever in bounded memory), and
decodes each generated latent to pixels. ``get_state``/``set_state`` snapshot the whole
state (cache, noise generator, frame), so replaying an action log from a state is
bit-exact on the same machine.

Rewards and episode ends come from reward/termination heads trained on recorded data
(``python -m trainer heads``) that read each generated latent transition; without heads the
reward is 0 and episodes end only by ``max_steps`` (truncation).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.dreamer import Dreamer
from model.io import SHIPPED
from model.rollout import SamplerConfig
from world.core import InvalidSettingError, StepResult, World, settings_from_kwargs

#: the default dream: the first shipped of these (the CF++ student, its Stage 2 student, the teacher)
DEFAULT_CHOICES = ("adventure_cfpp_frame2", "adventure_cd_frame2", "adventure_teacher")
DEFAULT_CHECKPOINT = next((SHIPPED / f"{n}.safetensors" for n in DEFAULT_CHOICES
                           if (SHIPPED / f"{n}.safetensors").is_file()), SHIPPED / "adventure_teacher.safetensors")


@dataclass
class DreamSettings:
    checkpoint: str = str(DEFAULT_CHECKPOINT)
    sampler: str = "auto"        # "euler" (teacher), "consistency" (students) or "auto" (from the card)
    steps: int = 0               # sampling steps per frame; 0 = the checkpoint's default
    cfg: float = 0.0             # action guidance on each step; 0 = the card's sampler cfg (else 1 = off)
    context: int = 1             # real frames the dream starts from
    max_steps: int = 1000
    noise_seed: int = 0          # base seed of the sampling noise (combined with the reset seed)
    heads: str = "auto"          # reward/termination heads: "auto" (the world's shipped ones), a path, or ""
    heads_input: str = "latents"  # what the heads read: "latents" (the generated ones) or "frames" (re-encoded)
    threads: int = 0             # torch threads (0 = leave as is)
    device: str = "cpu"          # "cpu", "cuda" or "auto" (CUDA when available)
    precision: str = "auto"      # "auto" (bf16 where measurably faster here), "fp32" or "bf16" (model.precision)
    warmup: bool = True          # run a few throwaway frames at load so the first played frames are not slow
    compile: bool = False        # torch.compile the streaming step (faster frames; compiling adds seconds
                                 # to a minute at load, less once inductor's disk cache has the graphs)

    def __post_init__(self) -> None:
        if self.sampler not in ("auto", "euler", "consistency"):
            raise InvalidSettingError(f"sampler must be 'auto', 'euler' or 'consistency', got {self.sampler!r}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise InvalidSettingError(f"device must be 'cpu', 'cuda' or 'auto', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise InvalidSettingError("device 'cuda' was asked for but CUDA is not available here; use 'cpu'")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise InvalidSettingError(f"precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if self.heads_input not in ("latents", "frames"):
            raise InvalidSettingError(f"heads_input must be 'latents' or 'frames', got {self.heads_input!r}")
        if self.cfg < 0:
            raise InvalidSettingError(f"cfg must be >= 0 (0: the checkpoint's own, 1: off), got {self.cfg!r}")
        if self.steps < 0 or self.context < 1 or self.max_steps < 1:
            raise InvalidSettingError(
                f"need steps >= 0, context >= 1, max_steps >= 1; got {self.steps}, {self.context}, {self.max_steps}")


def load_dreamer(s: DreamSettings) -> tuple[Dreamer, str, dict[str, Any]]:
    """The :class:`model.dreamer.Dreamer` of dream settings, the real game it was trained on and that
    game's settings; every loading problem is one :class:`InvalidSettingError` line."""
    from model.dreamer import DreamerError
    from model.io import CheckpointError
    from world.paths import ROOT

    if s.threads:
        torch.set_num_threads(s.threads)
    torch.set_flush_denormal(True)
    if not Path(s.checkpoint).exists() and not Path(s.checkpoint).is_absolute() and (ROOT / s.checkpoint).exists():
        s.checkpoint = str(ROOT / s.checkpoint)  # a repository path (assets/checkpoints/...) from another folder
    if (Path(s.checkpoint) / "dream.safetensors").is_file():  # a trainer.pipeline run folder
        s.checkpoint = str(Path(s.checkpoint) / "dream.safetensors")
    if not Path(s.checkpoint).exists():
        raise InvalidSettingError(
            f"dream checkpoint {s.checkpoint!r} not found; give a run folder, a checkpoint folder or a "
            f".safetensors with its model card (shipped: {sorted(p.name for p in SHIPPED.glob('*.safetensors'))})")
    device = torch.device("cuda" if s.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if s.device == "auto" else s.device))
    try:
        dreamer = Dreamer.load(s.checkpoint, s.sampler, s.steps, s.cfg, s.heads, device, s.precision,
                               compile=s.compile)
    except CheckpointError as e:  # one line for the user (play, gym.make, evaluate), no traceback chain
        raise InvalidSettingError(f"cannot load the dream checkpoint: {e}") from None
    except DreamerError as e:
        raise InvalidSettingError(str(e)) from None
    dreamer.heads_input = s.heads_input
    return dreamer, dreamer.world, trained_settings(dreamer.config, dreamer.world)


class DreamWorld(World):
    name = "dream"
    supports_state = True

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        self.settings = settings_from_kwargs(DreamSettings, settings, self.name)
        self.dreamer, self.real_world_name, self.real_settings = load_dreamer(self.settings)
        d = self.dreamer
        self.model, self.ae, self.config, self.model_id, self.ae_id = d.model, d.ae, d.config, d.model_id, d.ae_id
        self.device, self.precision = d.device, d.precision
        from world import make_world

        self._real = make_world(self.real_world_name, **self.real_settings)
        if hasattr(self._real, "action_for_pressed"):  # a gym game's way of combining held inputs
            self.action_for_pressed = self._real.action_for_pressed
        self.action_names = tuple(self._real.action_names)
        self.tick_rate = self._real.tick_rate
        self.keymap_name = self._real.keymap_name
        self.name = f"dream:{self.real_world_name}"
        self._session = None
        self._frame: np.ndarray | None = None
        self._z: torch.Tensor | None = None
        if self.settings.warmup:
            self.warm_up(1)

    @property
    def sampler(self) -> SamplerConfig:
        """The sampler the dream plays with (the play window changes its steps)."""
        return self.dreamer.sampler

    @sampler.setter
    def sampler(self, value: SamplerConfig) -> None:
        self.dreamer.sampler = value

    @property
    def heads(self):  # -> model.heads.RewardHeads | None
        return self.dreamer.heads

    # ----------------------------------------------------------------- World's dream interface
    is_dream = True

    @property
    def context_frames(self) -> int:
        return self.settings.context

    def real_twin(self) -> World:
        from world import make_world

        return make_world(self.real_world_name, **self.real_settings)

    @property
    def sampling_steps(self) -> int:
        return self.sampler.steps

    @sampling_steps.setter
    def sampling_steps(self, steps: int) -> None:
        self.sampler = dataclasses.replace(self.sampler, steps=int(steps))

    @property
    def sampler_summary(self) -> str:
        return f"{self.sampler.kind} {self.sampler.steps} steps"

    def keymap(self):  # -> world.keymap.Keymap
        """The real game's keymap (a gym game's is built from its own action names)."""
        return self._real.keymap()

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return self.dreamer.frame_shape

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"checkpoint": self.settings.checkpoint, "model_id": self.model_id, "precision": self.precision,
                  "sampler": dataclasses.asdict(self.sampler), "real_world": self.real_world_name})
        return d

    # ----------------------------------------------------------------- on the model's device
    def autocast(self):
        return self.dreamer.autocast()

    def session(self, batch: int, generator: torch.Generator):
        return self.dreamer.session(batch, generator)

    def warm_up(self, batch: int = 1, frames: int = 3) -> None:
        self.dreamer.warm_up(batch, frames)

    def encode(self, frames: np.ndarray) -> torch.Tensor:
        return self.dreamer.encode(frames)

    def decode(self, z: torch.Tensor) -> np.ndarray:
        return self.dreamer.decode(z)

    # ----------------------------------------------------------------- dynamics
    def _reset(self, seed: int | None) -> tuple[np.ndarray, dict[str, Any]]:
        seed = 0 if seed is None else seed
        frame, info = self._real.reset(seed=seed)
        frames = [frame]
        for _ in range(self.settings.context - 1):
            frame, *_ = self._real.step(0)
            frames.append(frame)
        gen = torch.Generator().manual_seed(self.settings.noise_seed * 1_000_003 + seed)
        self._session = self.session(1, gen)
        z = self.encode(np.stack(frames))
        with torch.no_grad(), self.autocast():
            # a block's worth of start frames waits for the first dreamed frame's first forward (fused,
            # the steady state's call shape): the first frame comes one forward sooner
            self._session.prime(z[None], torch.zeros(1, len(frames), dtype=torch.long),
                                defer=len(frames) == self.model.cfg.block_frames)
        self._z = z[-1:].float()
        self._zh = self._z  # what the heads read of the last frame (a real frame: its encoding)
        self._frame = frames[-1]
        return self._frame.copy(), {"effective_action": 0, "dream": True, "seed": seed}

    def _step(self, action: int) -> StepResult:
        assert self._session is not None
        with torch.no_grad():
            # fused: this frame is written to the cache by the next frame's first forward
            with self.autocast():
                z = self._session.generate(torch.tensor([[action]]), self.sampler, fuse=True)
            z_cur = z[0].float()
            self._frame = self.decode(z_cur)[0]
            zh = self.dreamer.heads_view(z_cur, self._frame[None])
            r, t = self.dreamer.outcomes(self._zh, zh, torch.tensor([action], device=self.device))
            reward, terminated = float(r[0]), bool(t[0])
            self._z, self._zh = z_cur, zh
        truncated = not terminated and self._steps + 1 >= self.settings.max_steps
        return StepResult(self._frame.copy(), reward, terminated, truncated,
                          {"effective_action": action, "dream": True})

    def render(self, size: int | None = None) -> np.ndarray:
        if self._frame is None:
            raise RuntimeError("call reset() before render()")
        n = self.ae.cfg.image_size
        if size is None or size == n:
            return self._frame.copy()
        k = max(1, size // n)
        return np.repeat(np.repeat(self._frame, k, 0), k, 1)

    # ----------------------------------------------------------------- state
    def get_state(self) -> dict[str, Any]:
        if self._session is None:
            raise RuntimeError("call reset() before get_state()")
        return {"session": self._session.snapshot(), "frame": self._frame.copy(), "z": self._z.clone(),
                "zh": self._zh.clone(), **self._base_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        if self._session is None:
            raise RuntimeError("call reset() before set_state()")
        self._session.restore(state["session"])
        self._frame = state["frame"].copy()
        self._z = state["z"].clone()
        self._zh = state["zh"].clone() if "zh" in state else self._z
        self._restore_base_state(state)

    def close(self) -> None:
        self._real.close()


def trained_settings(config: dict[str, Any], world: str) -> dict[str, Any]:
    """The real world's settings the model was trained on (its card, else its dataset's metadata)."""
    from world.dataset import recorded_settings

    out = recorded_settings((config.get("data") or {}).get("dataset"), world)
    out.update(config.get("world_settings") or {})
    return out
