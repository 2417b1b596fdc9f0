"""Settings: read once from the environment, flags win, nonsense fails at start-up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from clirun import run
from conftest import MakeDeadLetters
from live import free_port

from ingress_box.cli.main import main
from ingress_box.config import Secret, declarations, for_command, load_settings
from ingress_box.errors import ConfigError
from ingress_box.store import Database


def test_defaults_follow_the_contract() -> None:
    """With no variables set, the CONTRACT's defaults apply."""
    s = load_settings({})
    assert (s.db_path, s.host, s.port) == (Path("./data/ingress-box.db"), "127.0.0.1", 8080)
    assert (s.max_body_bytes, s.synchronous, s.rate_limit) == (262_144, "FULL", 0.0)
    assert (s.retry_max_attempts, s.retry_base_seconds, s.retry_max_seconds) == (8, 5.0, 3600.0)
    assert (s.delivery_timeout_seconds, s.lease_seconds, s.workers) == (10.0, 60.0, 4)
    assert (s.dedup_retention_days, s.dlq_retention_days) == (7.0, 90.0)


def test_environment_variables_are_read() -> None:
    """Every INGRESS_BOX_* variable lands in its field, typed."""
    s = load_settings(
        {
            "INGRESS_BOX_DB": "/tmp/x.db",
            "INGRESS_BOX_PORT": "9000",
            "INGRESS_BOX_SYNCHRONOUS": "normal",
            "INGRESS_BOX_WORKERS": "16",
            "INGRESS_BOX_METRICS_PUBLIC": "true",
            "INGRESS_BOX_ADMIN_TOKEN": "tok-0123456789abcdef",
        }
    )
    assert (s.db_path, s.port, s.synchronous, s.workers) == (Path("/tmp/x.db"), 9000, "NORMAL", 16)
    assert s.metrics_public is True
    assert s.admin_token == Secret("tok-0123456789abcdef")


def test_a_flag_beats_the_variable() -> None:
    """Overrides (the CLI's flags) win over the environment; None means not given."""
    s = load_settings({"INGRESS_BOX_PORT": "9000"}, port=9100, workers=None)
    assert (s.port, s.workers) == (9100, 4)


def test_the_admin_token_never_shows_in_a_repr() -> None:
    """Settings can be logged without leaking the token."""
    s = load_settings({"INGRESS_BOX_ADMIN_TOKEN": "very-secret-token"})
    assert "very-secret-token" not in repr(s)


@pytest.mark.parametrize(
    "environ",
    [
        {"INGRESS_BOX_PORT": "eighty"},
        {"INGRESS_BOX_PORT": "70000"},
        {"INGRESS_BOX_SYNCHRONOUS": "SOMETIMES"},
        {"INGRESS_BOX_WORKERS": "0"},
        {"INGRESS_BOX_MAX_BODY_BYTES": "-1"},
        {"INGRESS_BOX_REJECTIONS_KEPT": "-1"},
        {"INGRESS_BOX_PUBLIC_URL": "hooks.example.com"},
        {"INGRESS_BOX_PUBLIC_URL": "ftp://hooks.example.com"},
        {"INGRESS_BOX_LOG_FORMAT": "xml"},
        {"INGRESS_BOX_METRICS_PUBLIC": "maybe"},
        {"INGRESS_BOX_LEASE_SECONDS": "10"},  # not longer than the 10 s delivery timeout
    ],
)
def test_nonsense_fails_at_start_with_the_variable_named(environ: dict[str, str]) -> None:
    """A bad value is a ConfigError naming the variable, not a surprise later."""
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    assert next(iter(environ)) in str(caught.value)


# -- checked strictly: each setting's range comes from its declaration ------------------------

# What a hostile tester found accepted, each with what it did.
FOUND = [
    ("INGRESS_BOX_LEASE_SECONDS", "nan"),  # passed the lease check; one webhook POSTed 4 times
    ("INGRESS_BOX_DELIVERY_TIMEOUT_SECONDS", "nan"),  # dead-lettered everything
    ("INGRESS_BOX_DLQ_RETENTION_DAYS", "-1"),  # deleted every dead letter
    ("INGRESS_BOX_DEDUP_RETENTION_DAYS", "-5"),  # pruned fresh dedup keys
    ("INGRESS_BOX_BUSY_TIMEOUT_SECONDS", "inf"),  # a traceback
]


@pytest.mark.parametrize(("name", "raw"), FOUND)
def test_each_finding_is_a_config_error_naming_the_variable(name: str, raw: str) -> None:
    """Each value the hostile tester got through is refused, in one line naming the variable."""
    with pytest.raises(ConfigError) as caught:
        load_settings({name: raw})
    assert name in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("INGRESS_BOX_PORT", "0"),
        ("INGRESS_BOX_WORKERS", "257"),
        ("INGRESS_BOX_RETRY_MAX_ATTEMPTS", "0"),
        ("INGRESS_BOX_RETRY_BASE_SECONDS", "nan"),
        ("INGRESS_BOX_RETRY_MAX_SECONDS", "-inf"),
        ("INGRESS_BOX_RETRY_MAX_SECONDS", "0"),
        ("INGRESS_BOX_RATE_LIMIT", "inf"),
        ("INGRESS_BOX_RATE_LIMIT", "-1"),
        ("INGRESS_BOX_DELIVERY_TIMEOUT_SECONDS", "0"),
        ("INGRESS_BOX_DELIVERY_TIMEOUT_SECONDS", "601"),
        ("INGRESS_BOX_BUSY_TIMEOUT_SECONDS", "601"),
        ("INGRESS_BOX_BUSY_TIMEOUT_SECONDS", "0"),
        ("INGRESS_BOX_PAYLOAD_RETENTION_DAYS", "0"),
        ("INGRESS_BOX_DLQ_RETENTION_DAYS", "inf"),
        ("INGRESS_BOX_ROTATION_GRACE_HOURS", "-1"),
        ("INGRESS_BOX_ROTATION_GRACE_HOURS", "nan"),
        ("INGRESS_BOX_REJECTIONS_KEPT", "1000000"),
        ("INGRESS_BOX_MAX_BODY_BYTES", "2000000000"),
    ],
)
def test_out_of_range_and_non_finite_values_are_refused(name: str, raw: str) -> None:
    """Every numeric setting has a declared range; NaN and infinities are never in it."""
    with pytest.raises(ConfigError) as caught:
        load_settings({name: raw})
    assert name in str(caught.value)


def test_overrides_and_replace_are_checked_like_variables() -> None:
    """A value given in code (the CLI's flags, Settings.replace) goes through the same checks."""
    with pytest.raises(ConfigError, match="INGRESS_BOX_LEASE_SECONDS"):
        load_settings({}, lease_seconds=float("nan"))
    with pytest.raises(ConfigError, match="--dlq-retention-days"):
        load_settings({}, dlq_retention_days=-1)
    with pytest.raises(ConfigError, match="INGRESS_BOX_WORKERS"):
        load_settings({}).replace(workers=0)


def test_the_lease_rule_holds_for_small_finite_values() -> None:
    """The cross-field rule stays: a lease must outlast the delivery timeout."""
    assert load_settings({}, delivery_timeout_seconds=1, lease_seconds=2).lease_seconds == 2.0
    with pytest.raises(ConfigError, match="must be longer than"):
        load_settings({}, delivery_timeout_seconds=2, lease_seconds=2)


def test_every_problem_is_reported_on_one_line() -> None:
    """Several bad values give one line naming each of them."""
    with pytest.raises(ConfigError) as caught:
        load_settings({"INGRESS_BOX_PORT": "0", "INGRESS_BOX_WORKERS": "0"})
    message = str(caught.value)
    assert "INGRESS_BOX_PORT" in message and "INGRESS_BOX_WORKERS" in message
    assert "\n" not in message


# -- checked at start-up: the real program ----------------------------------------------------


def _program(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INGRESS_BOX_")}
    return subprocess.run(
        [sys.executable, "-m", "ingress_box", *args],
        capture_output=True,
        text=True,
        timeout=30,  # a value let through would start serve: it never ends on its own
        env={**clean, **env},
        check=False,
    )


@pytest.mark.parametrize(("name", "raw"), FOUND)
def test_serve_refuses_each_finding_with_one_line_and_exit_2(
    tmp_path: Path, name: str, raw: str
) -> None:
    """`ingress-box serve` with the variable stops before it starts: exit 2, one line, no trace."""
    db = tmp_path / "box.db"
    port = str(free_port())  # were the value let through, serve would start: not on a used port
    done = _program("serve", "--port", port, env={"INGRESS_BOX_DB": str(db), name: raw})
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1 and name in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not db.exists()


def test_a_bad_flag_of_serve_is_named_like_its_variable(tmp_path: Path) -> None:
    """A flag that used to be env-only is a flag now, and checked the same way."""
    db = tmp_path / "box.db"
    port = str(free_port())
    done = _program(
        "serve", "--db", str(db), "--port", port, "--busy-timeout-seconds", "inf", env={}
    )
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "--busy-timeout-seconds" in done.stderr
    assert not db.exists()


# -- declared once: every setting is a variable and a flag -----------------------------------


@pytest.mark.parametrize("command", ["serve", "worker", "prune"])
def test_help_shows_each_setting_with_its_variable(command: str) -> None:
    """Each setting a command takes is a flag of it, shown with its [env: ...] variable."""
    done = _program(command, "--help", env={})
    shown = " ".join(done.stdout.split())
    for d in for_command(command):
        assert f"{d.flag_name} " in shown or f"{d.flag_name}/" in shown, d.name
        assert f"[env: {d.env_name}" in shown, d.name


def test_every_setting_is_a_flag_of_serve_or_worker() -> None:
    """No setting is env-only: each is a flag of serve or worker (the ones found env-only too)."""
    for d in declarations().values():
        assert {"serve", "worker"} & set(d.commands), d.name
    serve = {d.name for d in for_command("serve")}
    assert {
        "busy_timeout_seconds",
        "payload_retention_days",
        "rotation_grace_hours",
        "metrics_public",
        "rejections_kept",
    } <= serve


def test_a_boolean_flag_beats_its_variable() -> None:
    """--no-x turns off what INGRESS_BOX_X turned on; not giving it leaves the variable's say."""
    environ = {"INGRESS_BOX_METRICS_PUBLIC": "1"}
    assert load_settings(environ, metrics_public=False).metrics_public is False
    assert load_settings(environ, metrics_public=None).metrics_public is True


def _click_command(path: str) -> click.Command:
    command: click.Command = main
    for name in path.split():
        assert isinstance(command, click.Group), path
        command = command.commands[name]
    return command


def _flags(path: str) -> set[str]:
    return {opt for p in _click_command(path).params for opt in p.opts}


def test_the_readme_lists_every_setting() -> None:
    """The README's settings table names each variable, its flag and its range; each flag a
    row names is a flag of serve that sets that row's variable, and a row that says it is a
    flag of another command too is one there."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("## Settings", 1)[1].split("\n## ", 1)[0]
    for d in declarations().values():
        assert f"`{d.env_name}`" in table, d.env_name
        assert f"`{d.flag_name}" in table, d.flag_name
    by_variable = {d.env_name: d for d in declarations().values()}
    rows = [line for line in table.splitlines() if line.startswith("| `INGRESS_BOX_")]
    assert len(rows) >= 20
    serve = _flags("serve")
    for row in rows:
        variable_cell, flag_cell, *rest = (c.strip() for c in row.strip("|").split("|"))
        variables = re.findall(r"`(INGRESS_BOX_\w+)`", variable_cell)
        flags = re.findall(r"`(--[\w-]+)", flag_cell)
        assert len(variables) == len(flags), row
        for variable, flag in zip(variables, flags, strict=True):
            assert by_variable[variable].flag_name == flag, row
            assert flag in serve, f"the README says {flag} is a flag of serve: {row}"
            for other in re.findall(r"flags? of `([a-z -]+)`", " ".join(rest)):
                assert flag in _flags(other), f"the README says {flag} is a flag of {other}"


# The click commands behind each command name a setting declares in ``commands``.
COMMANDS = {
    "serve": ["serve"],
    "worker": ["worker"],
    "prune": ["prune"],
    "doctor": ["doctor"],
    "health": ["health"],
    "instances": ["instances add", "instances list", "instances show", "instances set"],
    "bridges": ["bridges add", "bridges list", "bridges show"],
}


def test_every_setting_is_a_flag_of_each_command_it_applies_to() -> None:
    """A setting a command reads is a flag of it, named and read as its variable: e.g. the
    port of instances add's printed URL, or the busy timeout of prune's writes."""
    named = {c for d in declarations().values() for c in d.commands}
    assert named == set(COMMANDS)
    for command, paths in COMMANDS.items():
        for path in paths:
            flags = _flags(path)
            for d in for_command(command):
                assert d.flag_name in flags, f"{d.flag_name} is not a flag of {path}"
    assert {"host", "port", "public_url"} <= {d.name for d in for_command("instances")}
    assert {"synchronous", "busy_timeout_seconds"} <= {d.name for d in for_command("prune")}


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--dlq-retention-days", "-1"], "--dlq-retention-days"),
        (["--dedup-retention-days", "nan"], "--dedup-retention-days"),
        (["--payload-retention-days", "inf"], "--payload-retention-days"),
    ],
)
def test_prune_refuses_a_bad_window_and_deletes_nothing(
    tmp_path: Path, make_dead_letters: MakeDeadLetters, args: list[str], named: str
) -> None:
    """`prune --dlq-retention-days -1` used to delete every dead letter: now exit 2, one line."""
    db_path = tmp_path / "box.db"
    db = Database(db_path).open()
    try:
        make_dead_letters(db)
        result = run("prune", "--db", str(db_path), *args)
        assert result.exit_code == 2, result.output
        assert len(result.stderr.splitlines()) == 1 and named in result.stderr, result.stderr
        assert db.read("SELECT count(*) FROM dead_letters")[0][0] == 1
    finally:
        db.close()


def test_prune_refuses_a_bad_window_from_the_environment(tmp_path: Path) -> None:
    """The variable is checked as the flag is: INGRESS_BOX_DLQ_RETENTION_DAYS=-1 is exit 2."""
    Database(tmp_path / "box.db").open().close()
    result = run(
        "prune",
        "--db",
        str(tmp_path / "box.db"),
        env={"INGRESS_BOX_DLQ_RETENTION_DAYS": "-1"},
    )
    assert result.exit_code == 2 and "INGRESS_BOX_DLQ_RETENTION_DAYS" in result.stderr
