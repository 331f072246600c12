"""The ``dreamstep`` command dispatches to each command's own ``python -m`` form."""

from __future__ import annotations

import dreamstep_cli


def test_dreamstep_runs_the_commands_python_m_form(capsys):
    # trainer.evaluate's own argument check, reached through `dreamstep evaluate`
    assert dreamstep_cli.main(["evaluate", "--checkpoint", "x", "--out", "/tmp/never.json", "--episodes", "0"]) == 2
    assert "--episodes must be >= 1, got 0" in capsys.readouterr().err
    assert dreamstep_cli.main(["train", "nostage", "--config", "nofile.yaml"]) == 2
    assert "unknown stage 'nostage'" in capsys.readouterr().err


def test_dreamstep_names_what_it_does_not_know(capsys):
    assert dreamstep_cli.main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err
    assert dreamstep_cli.main(["bench", "nope"]) == 2
    assert "needs one of ['dream'" in capsys.readouterr().err
    assert dreamstep_cli.main(["--help"]) == 0
    assert "dreamstep bench NAME" in capsys.readouterr().out
