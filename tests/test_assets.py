"""The shipped weights stay within their budget and each has a model card that names its provenance."""

from __future__ import annotations

from pathlib import Path

import yaml

SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "checkpoints"
BUDGET_BYTES = 120 * 10**6


def test_shipped_checkpoints_fit_the_budget_and_have_cards():
    files = sorted(SHIPPED.glob("*.safetensors"))
    assert files, "no shipped checkpoints"
    total = sum(f.stat().st_size for f in files)
    assert total <= BUDGET_BYTES, f"assets/checkpoints holds {total / 1e6:.1f} MB, over the 120 MB budget"
    for f in files:
        card_file = f.with_suffix(".yaml")
        assert card_file.is_file(), f"{f.name} has no model card"
        card = yaml.safe_load(card_file.read_text())
        assert card["weights"] == f.name and card["dtype"] in ("fp16", "bf16"), f.name
        for key in ("config", "steps", "wall_time_s", "git_commit", "command"):
            assert card.get(key) is not None, f"{card_file.name} lacks {key}"
    for card_file in SHIPPED.glob("*.yaml"):  # no card without its weights
        assert card_file.with_suffix(".safetensors").is_file(), f"{card_file.name} has no weights"
