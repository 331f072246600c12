"""The ``dreamstep`` command: one entry point for the user commands, each the same as its ``python -m`` form.

    dreamstep play [--world maze3d ...]          python play.py
    dreamstep record ...                         python -m world.record
    dreamstep train STAGE --config FILE ...      python -m trainer
    dreamstep evaluate ...                       python -m evaluation (= python -m trainer.evaluate)
    dreamstep curve ...                          python -m evaluation.curve
    dreamstep export ...                         python -m trainer.export
    dreamstep pipeline ...                       python -m trainer.pipeline
    dreamstep sweep ...                          python -m trainer.sweep
    dreamstep ppo ...                            python -m agent_env.ppo
    dreamstep bench NAME ...                     python -m benchmarks.NAME

``dreamstep COMMAND --help`` shows that command's own options.
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Sequence

COMMANDS = {"play": "play", "record": "world.record", "train": "trainer", "evaluate": "evaluation",
            "curve": "evaluation.curve", "export": "trainer.export", "pipeline": "trainer.pipeline",
            "sweep": "trainer.sweep", "ppo": "agent_env.ppo"}
BENCHMARKS = ("dream", "compare", "roofline", "engine", "stage2", "gpu", "rl")


def _usage() -> str:
    return __doc__.split("\n\n")[1] if __doc__ else ""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: dreamstep COMMAND [ARGS...]\n\n" + _usage())
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    if cmd == "bench":
        if not rest or rest[0] not in BENCHMARKS:
            got = f"got {rest[0]!r}" if rest else "none given"
            print(f"error: dreamstep bench needs one of {list(BENCHMARKS)} ({got})", file=sys.stderr)
            return 2
        module, prog, rest = f"benchmarks.{rest[0]}", f"dreamstep bench {rest[0]}", rest[1:]
    elif cmd in COMMANDS:
        module, prog = COMMANDS[cmd], f"dreamstep {cmd}"
    else:
        print(f"error: unknown command {cmd!r}; valid commands: {[*COMMANDS, 'bench']}", file=sys.stderr)
        return 2
    saved = sys.argv
    sys.argv = [prog, *rest]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:  # the module's own exit status
        code = e.code
        if isinstance(code, str):  # SystemExit("message"): Python prints it and exits with 1
            print(code, file=sys.stderr)
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved
    return 0


def play_main() -> None:
    """``dreamstep-play``: the same as ``dreamstep play``."""
    raise SystemExit(main(["play", *sys.argv[1:]]))


if __name__ == "__main__":
    raise SystemExit(main())
