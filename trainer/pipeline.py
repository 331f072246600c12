"""One command from a game to a playable distilled world model:

    python -m trainer.pipeline --world WORLD --out RUN_DIR [--preset cpu-small|cpu-external|gpu-small|gpu-base]
        [--set STAGE.key=value ...] [--until STAGE]

Stages, in order, each in ``RUN_DIR/<stage>``: ``record`` (the explorer, or ``--policy``),
``autoencoder``, ``idm``, ``teacher``, ``cd``, ``dmd``, ``heads``, ``evaluate`` (the fidelity
report of the final student; for a game without ``get_state``/``set_state`` on held-out episodes
recorded first from seed 1,000,000) and ``export`` (``RUN_DIR/dream.safetensors`` with its model card,
playable with ``play.py --world dream --setting checkpoint=RUN_DIR/dream.safetensors``).

A stage whose output is complete is skipped; an interrupted stage (``kill -9`` included) resumes
from its last checkpoint when the command runs again, so a rerun ends with the same outputs as
an uninterrupted run. Every stage is the project's own command (``python -m trainer <stage>``,
``world.record``, ``trainer.evaluate``, ``trainer.export``), printed before it runs, so any stage
can also be run alone. The stage recipes are the default world's configs in ``assets/configs``;
a preset (``assets/configs/presets/NAME.yaml``) sets their sizes and lengths, ``--set`` any key.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from world.io import parse_key_values

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "assets" / "configs"
PRESETS = CONFIGS / "presets"
STAGES = ("record", "autoencoder", "idm", "teacher", "cd", "dmd", "heads", "evaluate", "export")
TRAINED = ("autoencoder", "idm", "teacher", "cd", "dmd", "heads")
TEMPLATES = {"autoencoder": "adventure_ae.yaml", "idm": "adventure_idm.yaml", "teacher": "adventure_teacher.yaml",
             "cd": "adventure_cd_frame2.yaml", "dmd": "adventure_cfpp_frame2.yaml", "heads": "adventure_heads.yaml"}


class PipelineError(RuntimeError):
    pass


def load_preset(name: str) -> dict[str, dict[str, Any]]:
    """A preset by name (``assets/configs/presets/NAME.yaml``) or a YAML file of the same form:
    ``STAGE: {key: value}`` (dotted keys for trained stages, option names for the others)."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESETS / f"{name}.yaml"
    if not path.is_file():
        valid = sorted(p.stem for p in PRESETS.glob("*.yaml"))
        raise PipelineError(f"unknown preset {name!r}; valid presets: {valid}")
    data = yaml.safe_load(path.read_text()) or {}
    bad = sorted(set(data) - set(STAGES) - {"settings"})
    if bad:
        raise PipelineError(f"preset {path}: unknown stage(s) {bad}; valid: {list(STAGES)} and 'settings' "
                            f"(world settings, e.g. resolution)")
    return {k: dict(v or {}) for k, v in data.items()}


def parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        stage, dot, rest = key.partition(".")
        if not sep or not dot or stage not in STAGES:
            raise PipelineError(f"--set {item!r}: expected STAGE.key=value with STAGE in {list(STAGES)}")
        out.setdefault(stage, {})[rest] = yaml.safe_load(value)
    return out


def _final_checkpoint(run: Path) -> bool:
    """True when the run's latest checkpoint is its final one (the stage finished)."""
    from trainer.checkpoint import latest_checkpoint

    ck = latest_checkpoint(run) if run.is_dir() else None
    if ck is None or not (ck / "meta.json").is_file():
        return False
    return bool(json.loads((ck / "meta.json").read_text()).get("final"))


class Pipeline:
    def __init__(self, world: str, out: Path, preset: dict[str, dict[str, Any]],
                 sets: dict[str, dict[str, Any]], policy: str = "explorer", seed: int = 0,
                 settings: dict[str, Any] | None = None) -> None:
        from world import make_world

        self.world, self.out, self.policy, self.seed = world, out, policy, seed
        # the world's settings (frame_skip, sticky_actions, resolution, ...): the preset's, then the command's
        self.settings = {**preset.get("settings", {}), **(settings or {})}
        self.opts = {s: {**preset.get(s, {}), **sets.get(s, {})} for s in STAGES}  # per-stage options
        w = make_world(world, **self.settings)
        self.num_actions = w.num_actions
        self.supports_state = bool(getattr(w, "supports_state", False))
        w.close()
        safe = "".join(c if c.isalnum() else "-" for c in world.replace("gym:", "")).strip("-").lower()
        self.dataset = out / "data" / f"{safe}-{policy}-v0"
        self.heldout = out / "data" / f"{safe}-{policy}-heldout-v0"  # evaluation episodes (stateless games)

    # ------------------------------------------------------------ helpers
    def _run(self, args: list[str]) -> None:
        print("pipeline: $ python " + shlex.join(args), flush=True)  # a line a shell can run as is
        r = subprocess.run([sys.executable, *args], cwd=ROOT)
        if r.returncode != 0:
            raise PipelineError(f"stage command failed (exit {r.returncode}): {' '.join(args)}; fix the cause and "
                                "run the pipeline again: finished stages are kept, this one resumes")

    def _train(self, stage: str, overrides: dict[str, Any]) -> None:
        run = self.out / stage
        if _final_checkpoint(run):
            print(f"pipeline: {stage}: complete ({run}), skipped", flush=True)
            return
        merged = {"run_dir": str(run), **overrides, **self.opts[stage]}
        args = ["-m", "trainer", stage, "--config", str(CONFIGS / TEMPLATES[stage])]
        for k, v in merged.items():
            args += ["--set", f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}"]
        self._run(args)
        if not _final_checkpoint(run):
            raise PipelineError(f"stage {stage} ended without a final checkpoint in {run}")

    def _latent(self) -> dict[str, Any]:
        from trainer.checkpoint import resolve_full

        _, cfg = resolve_full(self.out / "autoencoder")
        m = cfg["model"]
        return {"model.latent_channels": m["latent_channels"], "model.latent_size": m.get("image_size", 64) // 8}

    # ------------------------------------------------------------ stages
    def _record(self, out: Path, episodes: int, steps: int, seed: int) -> None:
        if (out / "stats.json").is_file():
            print(f"pipeline: record: complete ({out}), skipped", flush=True)
            return
        args = ["-m", "world.record", "--world", self.world, "--policy", self.policy, "--episodes",
                str(episodes), "--steps", str(steps), "--seed", str(seed), "--out", str(out), "--quiet"]
        for k, v in self.settings.items():  # recorded in the dataset: later stages read them from there
            args += ["--setting", f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}"]
        if out.exists():
            args.append("--resume")
        self._run(args)

    def record(self) -> None:
        o = {"episodes": 240, "steps": 256, **self.opts["record"]}
        self._record(self.dataset, int(o["episodes"]), int(o["steps"]), self.seed)

    def autoencoder(self) -> None:
        self._train("autoencoder", {"world": self.world, "data.dataset": str(self.dataset)})

    def idm(self) -> None:
        self._train("idm", {"world": self.world, "data.dataset": str(self.dataset),
                            "model.num_actions": self.num_actions, "model.image_size": 8 * self._latent()["model.latent_size"]})

    def teacher(self) -> None:
        self._train("teacher", {"world": self.world, "data.dataset": str(self.dataset),
                                "autoencoder": str(self.out / "autoencoder"),
                                "latent_cache_dir": str(self.out / "latents"),
                                "model.num_actions": self.num_actions, **self._latent()})

    def cd(self) -> None:
        self._train("cd", {"world": self.world, "data.dataset": str(self.dataset),
                           "teacher": str(self.out / "teacher"), "latent_cache_dir": str(self.out / "latents")})

    def dmd(self) -> None:
        self._train("dmd", {"world": self.world, "data.dataset": str(self.dataset),
                            "teacher": str(self.out / "teacher"), "generator": str(self.out / "cd"),
                            "latent_cache_dir": str(self.out / "latents")})

    def heads(self) -> None:
        self._train("heads", {"world": self.world, "datasets": [str(self.dataset)],
                              "autoencoder": str(self.out / "autoencoder"),
                              "latent_cache_dir": str(self.out / "latents"), "model.num_actions": self.num_actions,
                              **self._latent()})

    def evaluate(self) -> None:
        report = self.out / "report.json"
        if report.is_file():
            print(f"pipeline: evaluate: complete ({report}), skipped", flush=True)
            return
        o = {"episodes": 16, "long-episodes": 4, "revisit-episodes": 4, **self.opts["evaluate"]}
        from evaluation.rollouts import EVAL_SEED_BASE
        from trainer.checkpoint import resolve_full

        heldout = int(o.pop("heldout-episodes", 4 * (int(o["episodes"]) + int(o["long-episodes"]))))
        if not self.supports_state:  # nothing to replay from a seed and a state: evaluate on a recording
            steps = int({"steps": 256, **self.opts["record"]}["steps"])
            self._record(self.heldout, heldout, steps, EVAL_SEED_BASE)
            o["rollouts"] = str(self.heldout)
        sampler = resolve_full(self.out / "dmd")[1].get("sampler") or {}
        args = ["-m", "trainer.evaluate", "--checkpoint", str(self.out / "dmd"), "--world", self.world,
                "--idm", str(self.out / "idm"), "--sampler", "consistency", "--steps",
                str(sampler.get("steps", 2)), "--first-frame-steps", str(sampler.get("first_frame_steps", 0)),
                "--out", str(report)]
        for k, v in o.items():
            args += [f"--{k}", str(v)]
        self._run(args)

    def export(self) -> None:
        weights = self.out / "dream.safetensors"
        if weights.is_file() and weights.with_suffix(".yaml").is_file():
            print(f"pipeline: export: complete ({weights}), skipped", flush=True)
            return
        self._run(["-m", "trainer.export", "--run", str(self.out / "dmd"), "--name", "dream", "--force", "--out-dir",
                   str(self.out), "--eval", str(self.out / "report.json"), "--set",
                   f"heads={self.out / 'heads'}", "--command",
                   f"python -m trainer.pipeline --world {self.world} --out {self.out}"])

    def validate(self) -> None:
        """Check every trained stage's options (preset and ``--set``) against its config now, before the
        first stage runs: a typo in the teacher's options must not wait hours for the teacher to start."""
        from trainer.__main__ import build
        from trainer.config import ConfigError

        for stage in TRAINED:
            try:
                build(stage, str(CONFIGS / TEMPLATES[stage]), {"run_dir": str(self.out / stage), **self.opts[stage]})
            except ConfigError as e:
                raise PipelineError(f"the {stage} stage's options (preset or --set {stage}.KEY=VALUE) do not fit its "
                                    f"config: {e}") from None

    def run(self, until: str | None = None) -> Path:
        self.validate()
        for stage in STAGES:
            getattr(self, stage)()
            if stage == until:
                break
        return self.out / "dream.safetensors"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--world", required=True, help="a built-in world or gym:<id>")
    p.add_argument("--out", required=True, help="run folder (every stage's output lands in it)")
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--policy", default="explorer", help="recording policy")
    p.add_argument("--seed", type=int, default=0, help="first recording seed")
    p.add_argument("--set", action="append", default=[], metavar="STAGE.key=value")
    p.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                   help="a world setting, e.g. frame_skip=4 or sticky_actions=0.25 (recorded in the dataset)")
    p.add_argument("--until", choices=STAGES, help="stop after this stage")
    a = p.parse_args(argv)
    try:
        settings = parse_key_values(a.setting, "--setting", "frame_skip=2", error=PipelineError)
        pipe = Pipeline(a.world, Path(a.out).resolve(), load_preset(a.preset), parse_sets(a.set), a.policy, a.seed,
                        settings)
        out = pipe.run(a.until)
    except PipelineError as e:
        print(f"pipeline: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a bad world name or setting: say it, no traceback
        from world import WorldError

        if not isinstance(e, WorldError):
            raise
        print(f"pipeline: error: {e}", file=sys.stderr)
        return 2
    if a.until is None:
        print(f"pipeline: done: {out} (play it: python play.py --world dream --setting checkpoint={out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
