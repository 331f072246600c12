"""The package layering (pyproject.toml's import-linter contracts) and no private names across packages."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("model", "world", "window", "agent_env", "evaluation", "trainer", "benchmarks")


def test_the_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "lint-imports is missing: install the dev extra (pip install -e '.[dev]')"
    r = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def private_imports_across_packages() -> list[str]:
    """``from other_package.module import _name`` anywhere in our packages, tests and scripts."""
    bad = []
    files = [p for pkg in (*PACKAGES, "tests") for p in (ROOT / pkg).rglob("*.py")] + list(ROOT.glob("*.py"))
    for path in files:
        here = path.relative_to(ROOT).parts[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                top = node.module.split(".")[0]
                if top in PACKAGES and top != here:
                    bad += [f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import {a.name}"
                            for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    return bad


def test_no_private_name_crosses_a_package():
    assert private_imports_across_packages() == []
