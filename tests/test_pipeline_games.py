"""trainer.pipeline end to end on games nobody trained on (its own file, so that its slow cases spread over the workers)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.test_pipeline import ENV, TINY
from tests.trainer_helpers import ROOT


@pytest.mark.parametrize("world, settings, actions", [  # (Pong's 6 actions: as Breakout's, another count)
    ("gym:ALE/Breakout-v5", ["--setting", "env_kwargs={full_action_space: true}"], 18),
    ("maze3d", [], 5),
])
def test_the_tiny_pipeline_runs_to_the_end_on_games_nobody_trained_on(tmp_path, world, settings, actions):
    """Other action counts (Atari's full 18, maze3d's 5) and other worlds: every stage sizes itself from
    the game."""
    if world.startswith("gym:ALE"):
        pytest.importorskip("ale_py")
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "trainer.pipeline", "--world", world, "--out", str(out), "--preset", TINY,
                        "--set", "record.episodes=4", "--set", "record.steps=24", "--set", "evaluate.episodes=1",
                        *settings], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    import yaml

    card = yaml.safe_load((out / "dream.yaml").read_text())
    assert card["config"]["model"]["num_actions"] == actions
    heads = json.loads(next((out / "heads" / "checkpoints").glob("step_*/meta.json")).read_text())
    assert heads["config"]["model"]["num_actions"] == actions
    if actions != 18:  # one game is enough to show the result plays (test_pipeline plays the default one)
        return
    # the result plays: a few dreamed frames headless
    p = subprocess.run([sys.executable, "play.py", "--headless", "--checkpoint", str(out), "--frames", "3",
                        "--out", str(tmp_path / "dream.mp4")], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "dream.mp4").stat().st_size > 0
