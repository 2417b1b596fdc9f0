"""Running the CLI in-process for tests, with a clean INGRESS_BOX_* environment."""

from __future__ import annotations

import os

from click.testing import CliRunner, Result

from ingress_box.cli.main import main


def run(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
    """``input`` is what the command reads from stdin (answers to its questions)."""
    # An empty INGRESS_BOX_* environment unless a test sets one: the developer's must not leak.
    clean: dict[str, str | None] = {k: None for k in os.environ if k.startswith("INGRESS_BOX_")}
    return CliRunner().invoke(main, list(args), input=input, env={**clean, **(env or {})})


def ok(*args: str, env: dict[str, str] | None = None) -> Result:
    result = run(*args, env=env)
    assert result.exit_code == 0, result.output
    return result
