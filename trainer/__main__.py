"""Run one training stage: ``python -m trainer <stage> --config FILE [--set key=value ...]``.

Works the same under ``torchrun --nproc_per_node=N -m trainer ...`` (DDP: gloo on CPU,
NCCL on GPU). A run resumes from its latest checkpoint unless ``--fresh`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from trainer.config import ConfigError, load_config, parse_overrides, to_dict
from trainer.distributed import init_distributed, shutdown

REPO_ROOT = Path(__file__).resolve().parent.parent

# stage name -> (module, experiment config class, stage class)
STAGE_TABLE = {
    "autoencoder": ("trainer.stages.autoencoder", "AutoencoderExperiment", "AutoencoderStage"),
    "teacher": ("trainer.stages.teacher", "TeacherExperiment", "TeacherStage"),
    "idm": ("trainer.stages.idm", "IDMExperiment", "IDMStage"),
    "cd": ("trainer.stages.cd", "CDExperiment", "CDStage"),
    "ode": ("trainer.stages.ode", "ODEExperiment", "ODEStage"),
    "dmd": ("trainer.stages.dmd", "DMDExperiment", "DMDStage"),
    "heads": ("trainer.stages.heads", "HeadsExperiment", "HeadsStage"),
}
STAGES = tuple(STAGE_TABLE)


def build(stage: str, config: str, overrides: dict):
    if stage not in STAGE_TABLE:
        raise ConfigError(f"unknown stage {stage!r}; valid stages: {list(STAGES)}")
    import importlib

    module, exp_name, stage_name = STAGE_TABLE[stage]
    mod = importlib.import_module(module)
    return load_config(getattr(mod, exp_name), config, overrides), getattr(mod, stage_name)


COMMANDS_FILE = "commands.jsonl"


def record_command(run_dir: str, argv: list[str], fresh: bool = False) -> None:
    """Append this invocation to ``RUN_DIR/commands.jsonl`` (one line per start or resume), so that
    ``trainer.export`` can write the exact, pasteable commands of a run and its upstream runs."""
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    rec = {"command": shlex.join(["python", "-m", "trainer", *argv]),
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "fresh": fresh}
    with open(path / COMMANDS_FILE, "a") as f:
        f.write(json.dumps(rec) + "\n")


def user_error(e: BaseException) -> str | None:
    """The one-line message of an error the user can fix (bad data, a damaged or foreign checkpoint,
    a full or read-only disk), or None for a bug (its traceback is shown)."""
    import errno

    from trainer.checkpoint import CheckpointError
    from trainer.data import DataError
    from world.core import WorldError
    from world.dataset import DatasetError

    if isinstance(e, (DataError, DatasetError, CheckpointError, ConfigError, WorldError)):
        return str(e)
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
        from world.io import write_failure

        _kind, reason = write_failure(e, e.filename or ".", full_below=0)
        return (f"{reason}; free some space or make the run folder writable, then run the same "
                f"command again: it resumes from the last complete checkpoint")
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.split("\n")[0])
    p.add_argument("stage", help=f"one of {list(STAGES)}")
    p.add_argument("--config", required=True, help="experiment YAML (see assets/configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--fresh", action="store_true",
                   help="start over: the run folder's earlier checkpoints and metrics are moved to RUN_DIR/replaced/")
    p.add_argument("--minutes", type=float, default=0.0,
                   help="train one piece of at most this many minutes, then checkpoint and stop; the same command "
                        "continues the run (SIGTERM or Ctrl-C also checkpoint before stopping)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    try:
        # one rule for paths: --config (a command-line path) is relative to the current folder; the paths
        # inside a config and in --set (run_dir, datasets, checkpoints) are relative to the repository,
        # as in the shipped configs and model cards, wherever the command is run from
        cfg, stage_cls = build(args.stage, str(Path(args.config).resolve()), parse_overrides(args.overrides))
        if cfg.stage != args.stage:
            raise ConfigError(f"{args.config} is a {cfg.stage!r} config, not {args.stage!r}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.chdir(REPO_ROOT)
    from trainer.loop import train

    info = init_distributed(args.device)
    from world.log import get_logger, setup_logging

    setup_logging(info.rank)  # rank 0 speaks; the other ranks keep their warnings and errors
    clean = False
    try:
        if info.is_main and args.fresh:
            from trainer.checkpoint import archive_run

            moved = archive_run(cfg.run_dir)  # the earlier run is kept aside, never pruned or resumed
            if moved is not None:
                get_logger().info(f"[{cfg.stage}] --fresh: the earlier run in {cfg.run_dir} (checkpoints, metrics, config) was "
                      f"moved to {moved}; delete that folder when you no longer need it")
        if info.is_main:
            record_command(cfg.run_dir, argv, args.fresh)
        import torch

        # the model's initial weights are a function of the seed (every rank the same)
        torch.set_flush_denormal(True)  # denormals (e.g. in softmax tails) slow CPU kernels down
        torch.manual_seed(cfg.train.seed)
        if info.device.type == "cuda":  # TF32 for the fp32 parts; bf16 autocast does the rest
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        stage = stage_cls(cfg)
        config = to_dict(cfg)
        # distillation stages record the world model they make (model config, autoencoder, sampler),
        # so that their checkpoints load like a teacher's (evaluation, the dream, export)
        # (merged into the stage's own sections: a CD run's loss keeps its cfg and grid beside the shift)
        for key, value in getattr(stage, "config_extra", lambda: {})().items():
            mine = config.get(key)
            config[key] = {**mine, **value} if isinstance(mine, dict) and isinstance(value, dict) else value
        train(stage, cfg.train, cfg.run_dir, info, config, resume=not args.fresh, piece_minutes=args.minutes)
        clean = True
    except Exception as e:  # noqa: BLE001 - user errors get one line; bugs keep their traceback
        message = user_error(e)
        if message is None or os.environ.get("DREAMSTEP_DEBUG") == "1":
            raise
        print(f"error: [{cfg.stage}] {message}", file=sys.stderr)
        return 2
    finally:
        shutdown(info, clean)  # after an error, no barrier: the other ranks may never reach it
    if info.enabled:
        # A torchrun worker whose outputs are written (checkpoints are atomic, logs closed) leaves
        # without interpreter finalization: the DDP wrapper still holds the gloo process group, whose
        # C++ threads could otherwise be torn down at exit in any order and abort the process
        # ("terminate called without an active exception", about 1 launch in 30-80 here).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
