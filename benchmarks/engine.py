"""Engine speed of the built-in worlds: frames per second at 64x64 on one CPU core.

    python -m benchmarks.engine --out benchmarks/results/engine.json

Each world steps under a seeded random policy (resetting on episode end); a step
includes the game logic, the OpenGL render and the readback of the frame to numpy.
The process pins itself to one core and asks Mesa's llvmpipe for a single render
thread, so the number is the one-core speed. Reports the median over repeats with
min/max.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from world.io import git_commit


def _pin_to_one_core() -> int | None:
    """Run on one core with one llvmpipe thread; must happen before the GL context exists."""
    os.environ["LP_NUM_THREADS"] = "1"
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return core
    return None


def measure_world(name: str, steps: int, repeats: int, seed: int = 0) -> dict:
    import numpy as np

    from world import make_world

    world = make_world(name)
    rng = np.random.default_rng(seed)
    world.reset(seed=seed)
    for a in rng.integers(0, world.num_actions, 200):  # warm-up
        r = world.step(int(a))
        if r.terminated or r.truncated:
            world.reset(seed=seed)
    rates = []
    for rep in range(repeats):
        actions = rng.integers(0, world.num_actions, steps).tolist()
        world.reset(seed=seed + rep)
        t0 = time.perf_counter()
        for a in actions:
            r = world.step(a)
            if r.terminated or r.truncated:
                world.reset(seed=seed + rep)
        rates.append(steps / (time.perf_counter() - t0))
    world.close()
    return {
        "fps_64": round(statistics.median(rates), 1),
        "fps_64_min": round(min(rates), 1),
        "fps_64_max": round(max(rates), 1),
        "steps_per_repeat": steps,
        "repeats": repeats,
        "frame_shape": list(world.frame_shape),
    }


def main(argv: list[str] | None = None) -> int:
    from world import list_worlds

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--worlds", nargs="*", default=None, help=f"default: all of {list_worlds()}")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--target", type=float, default=2000.0, help="frames/s each world must reach")
    args = p.parse_args(argv)
    worlds = args.worlds or list_worlds()
    unknown = sorted(set(worlds) - set(list_worlds()))
    if unknown:
        p.error(f"unknown world(s) {unknown}; built-in worlds: {list_worlds()}")
    core = _pin_to_one_core()
    results = {}
    for name in worlds:
        res = measure_world(name, args.steps, args.repeats)
        res["meets_target"] = res["fps_64"] >= args.target
        results[name] = res
        print(f"{name:>10}: {res['fps_64']:8.1f} frames/s at 64x64 "
              f"(min {res['fps_64_min']:.1f}, max {res['fps_64_max']:.1f}) "
              f"{'OK' if res['meets_target'] else 'BELOW'} target {args.target:.0f}")
    import moderngl

    from world.gl import get_context

    report = {
        "worlds": results,
        "target_fps_64": args.target,
        "provenance": {
            "command": "python -m benchmarks.engine " + " ".join(argv if argv is not None else sys.argv[1:]),
            "git_commit": (git_commit() or "unknown"),
            "cpu_core": core,
            "llvmpipe_threads": os.environ.get("LP_NUM_THREADS"),
            "gl_renderer": get_context().info.get("GL_RENDERER"),
            "moderngl": moderngl.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    ok = all(r["meets_target"] for r in results.values())
    print(f"wrote {out}: {len(results)} worlds, {'all meet' if ok else 'NOT all meet'} "
          f"{args.target:.0f} frames/s on one core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
