"""The operator's CLI: where the printed URLs come from, secrets a provider issues, plugins,
``instances show``/``set``, backups into folders, confirmations and one-line errors."""

from __future__ import annotations

import json
import os
import select
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from clirun import ok, run
from conftest import MakeDeadLetters

from ingress_box.config import DatabaseUrl
from ingress_box.plugins import load_registry
from ingress_box.store import open_database

pytestmark = pytest.mark.both_stores

ROOT = Path(__file__).resolve().parent.parent
PROVIDER_SECRETS = ("meta", "twilio", "stripe", "chatwoot", "supabase")


def added(
    db_path: Path | DatabaseUrl, *args: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    result = ok("instances", "add", "--db", str(db_path), "--json", *args, env=env)
    data: dict[str, Any] = json.loads(result.stdout)
    return data


# -- the ingress URL follows serve's address -----------------------------------------------------


def test_instances_add_prints_the_port_serve_uses(db_path: Path | DatabaseUrl) -> None:
    """INGRESS_BOX_PORT (or --port, which beats it) is the port of the printed ingress URL."""
    from_env = added(db_path, "generic", "a", env={"INGRESS_BOX_PORT": "9000"})
    assert from_env["ingress_url"] == "http://127.0.0.1:9000/ingress/generic/a/events"
    from_flag = added(db_path, "generic", "b", "--port", "9100", env={"INGRESS_BOX_PORT": "9000"})
    assert from_flag["ingress_url"] == "http://127.0.0.1:9100/ingress/generic/b/events"


def test_instances_add_names_a_wildcard_host_as_localhost(db_path: Path | DatabaseUrl) -> None:
    """serve on 0.0.0.0 (the image) is reached at localhost, which the URL says."""
    data = added(db_path, "generic", "a", "--host", "0.0.0.0", "--port", "8081")
    assert data["ingress_url"] == "http://localhost:8081/ingress/generic/a/events"


def test_the_public_url_flag_beats_host_and_port(db_path: Path | DatabaseUrl) -> None:
    """--public-url is the base of every printed URL, in add, list and show."""
    base = ("--public-url", "https://hooks.example.com/")
    assert added(db_path, "generic", "a", *base)["ingress_url"] == (
        "https://hooks.example.com/ingress/generic/a/events"
    )
    listed = json.loads(ok("instances", "list", "--db", str(db_path), "--json", *base).stdout)
    assert listed["items"][0]["ingress_urls"] == {
        "events": "https://hooks.example.com/ingress/generic/a/events"
    }
    shown = ok("instances", "show", "generic", "a", "--db", str(db_path), *base).stdout
    assert "https://hooks.example.com/ingress/generic/a/events (events)" in shown


# -- secrets the provider issues -----------------------------------------------------------------


def test_the_plugins_whose_provider_issues_the_secret_say_where_it_is() -> None:
    """Meta, Twilio, Stripe, Chatwoot and Supabase (only they) say where their secret is."""
    issued = {p.id for p in load_registry().all() if p.secret_issued_by_provider}
    assert issued == set(PROVIDER_SECRETS)


@pytest.mark.parametrize("plugin", PROVIDER_SECRETS)
def test_a_provider_issued_secret_is_required(db_path: Path | DatabaseUrl, plugin: str) -> None:
    """Without --secret the add is refused in one line saying where the secret is; exit 2."""
    result = run(
        "instances", "add", plugin, "main", "--db", str(db_path), "--target-url", "http://t/"
    )
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1
    where = load_registry().get(plugin)
    assert where is not None and where.secret_from_provider in result.stderr
    assert "--secret" in result.stderr
    assert not isinstance(db_path, Path) or not db_path.exists()  # nothing made


def test_generate_secret_makes_one_anyway(db_path: Path | DatabaseUrl) -> None:
    """--generate-secret creates the instance with a generated secret, without a warning."""
    result = ok(
        "instances", "add", "meta", "main", "--db", str(db_path), "--generate-secret",
        "--target-url", "http://127.0.0.1:9/hook",
    )  # fmt: skip
    assert "secret:" in result.stdout and "Warning" not in result.stderr


def test_a_given_secret_is_kept(db_path: Path | DatabaseUrl) -> None:
    """--secret is the instance's secret, and nothing is warned about."""
    result = run(
        "instances", "add", "stripe", "main", "--db", str(db_path), "--json",
        "--secret", "whsec_abc", "--target-url", "http://127.0.0.1:9/hook",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["secret"] == "whsec_abc" and data["warnings"] == []
    assert "Warning" not in result.stderr


def test_an_instance_without_a_target_is_made_but_warned_about(db_path: Path | DatabaseUrl) -> None:
    """forward with no target_url: created, with a warning on stderr and in the JSON."""
    result = run("instances", "add", "generic", "main", "--db", str(db_path), "--json")
    assert result.exit_code == 0, result.output
    assert "Warning: no target_url" in result.stderr
    assert json.loads(result.stdout)["warnings"] == [
        "no target_url: every delivery fails until one is set"
    ]


def test_an_unknown_plugin_lists_the_known_ones(db_path: Path | DatabaseUrl) -> None:
    """The one-line error names every loaded plugin."""
    result = run("instances", "add", "nope", "main", "--db", str(db_path))
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert "'nope'" in result.stderr
    for plugin in load_registry().all():
        assert plugin.id in result.stderr


# -- plugins -----------------------------------------------------------------------------------


def test_plugins_lists_routes_schemes_and_who_issues_the_secret() -> None:
    """One row per plugin: id, routes, verification, whether the provider issues the secret."""
    rows = {line.split()[0]: line.split() for line in ok("plugins").stdout.splitlines()[1:]}
    assert rows["meta"][:4] == ["meta", "webhook", "hmac", "yes"]
    assert rows["telegram"][:4] == ["telegram", "updates", "shared-secret", "no"]
    assert set(rows) == {p.id for p in load_registry().all()}


def test_plugins_json_is_what_the_admin_api_lists() -> None:
    """--json gives GET /admin/plugins' items."""
    items = json.loads(ok("plugins", "--json").stdout)["items"]
    twilio = next(i for i in items if i["id"] == "twilio")
    assert twilio["secret_issued_by_provider"] is True
    assert [r["name"] for r in twilio["routes"]] == ["messages"]
    assert twilio["routes"][0]["scheme"] == "twilio"


def test_plugins_show_describes_each_route(tmp_path: Path) -> None:
    """plugins show ID prints its routes; a plugin of the plugins folder is shown too."""
    (tmp_path / "acme.toml").write_text(
        'id = "acme"\nname = "Acme"\n[routes.hooks]\nmethods = ["POST"]\n'
        '[routes.hooks.verify]\nscheme = "hmac"\nheader = "X-Acme"\n'
    )
    out = ok("plugins", "show", "acme", "--plugins-dir", str(tmp_path)).stdout
    assert "route hooks: POST, verified by hmac" in out and "generated by the box" in out
    data = json.loads(ok("plugins", "show", "meta", "--json").stdout)
    assert data["id"] == "meta" and data["routes"][0]["challenge"] is True


def test_plugins_show_says_what_to_paste_where() -> None:
    """plugins show prints the provider's setup lines with the URL's shape in them."""
    out = ok("plugins", "show", "stripe").stdout
    setup = out[out.index("setup:") :]
    assert "Developers, Webhooks" in setup and "https://HOST/ingress/stripe/ID/events" in setup
    assert "whsec_" in setup


def test_plugins_show_of_an_unknown_id_lists_the_known_ones() -> None:
    """An unknown id is a one-line error (exit 2) naming the valid ids."""
    result = run("plugins", "show", "nope")
    assert result.exit_code == 2 and "generic" in result.stderr and "meta" in result.stderr


def test_a_manifest_nested_too_deeply_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """A plugin file that makes the parser recurse past its limit is named in one line."""
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    result = run("plugins", "--plugins-dir", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"Error: {tmp_path / 'deep.json'}: (document): cannot parse: nested too deeply"
    ]


# -- instances show and set ----------------------------------------------------------------------


def test_instances_show_masks_the_verify_token_unless_asked(db_path: Path | DatabaseUrl) -> None:
    """show masks the verify token; --reveal-verify-token prints it as it was made."""
    made = added(db_path, "meta", "main", "--secret", "app-secret", "--target-url", "http://t/")
    args = ("instances", "show", "meta", "main", "--db", str(db_path), "--json")
    masked = json.loads(ok(*args).stdout)
    assert masked["verify_token"] != made["verify_token"]
    assert made["verify_token"] not in json.dumps(masked)
    revealed = json.loads(ok(*args, "--reveal-verify-token").stdout)
    assert revealed["verify_token"] == made["verify_token"]
    assert "app-secret" not in json.dumps(revealed)  # the signing secret stays masked


def test_instances_show_of_an_unknown_instance_exits_1(db_path: Path | DatabaseUrl) -> None:
    """A missing instance is a one-line failure."""
    added(db_path, "generic", "main")
    result = run("instances", "show", "generic", "nope", "--db", str(db_path))
    assert result.exit_code == 1 and "no instance generic/nope" in result.stderr


def test_instances_set_changes_what_patch_changes(db_path: Path | DatabaseUrl) -> None:
    """set changes target, enabled, lane policy and session, and --json shows the result."""
    added(db_path, "generic", "main", "--target-url", "http://127.0.0.1:9/a")
    changed = json.loads(
        ok(
            "instances", "set", "generic", "main", "--db", str(db_path), "--json",
            "--target-url", "http://127.0.0.1:9/b", "--disabled", "--lane-policy", "strict",
            "--session", "s1",
        ).stdout
    )  # fmt: skip
    assert (changed["target_url"], changed["enabled"]) == ("http://127.0.0.1:9/b", False)
    assert (changed["lane_policy"], changed["session"]) == ("strict", "s1")
    listed = json.loads(ok("instances", "list", "--db", str(db_path), "--json").stdout)
    assert listed["items"][0]["enabled"] is False
    again = ok("instances", "set", "generic", "main", "--db", str(db_path), "--enabled").stdout
    assert "enabled:           yes" in again


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--handler", "builtins:print"], "handler"),
        (["--target-url", "ftp://x/"], "target_url"),
        (["--config", "[1]"], "config"),
        ([], "nothing to change"),
    ],
)
def test_instances_set_refuses_what_the_admin_api_refuses(
    db_path: Path | DatabaseUrl, args: list[str], named: str
) -> None:
    """The checks are instance_rules': a bad value is one line, exit 2, nothing changed."""
    added(db_path, "generic", "main", "--target-url", "http://127.0.0.1:9/a")
    result = run("instances", "set", "generic", "main", "--db", str(db_path), *args)
    assert result.exit_code == 2 and named in result.stderr, result.output
    shown = json.loads(
        ok("instances", "show", "generic", "main", "--db", str(db_path), "--json").stdout
    )
    assert shown["target_url"] == "http://127.0.0.1:9/a" and shown["handler"] == "forward"


def test_instances_set_of_an_unknown_instance_exits_1(db_path: Path | DatabaseUrl) -> None:
    """Changing a missing instance fails in one line and creates nothing."""
    added(db_path, "generic", "main")
    result = run("instances", "set", "generic", "nope", "--db", str(db_path), "--disabled")
    assert result.exit_code == 1 and "no instance generic/nope" in result.stderr


# -- backups into folders ------------------------------------------------------------------------


def test_backup_into_a_missing_folder_makes_it_and_a_file_in_it(tmp_path: Path) -> None:
    """PATH ending in / is a folder: made when missing, with a dated file inside."""
    db_path = tmp_path / "cli.db"  # a backup is of a SQLite file
    added(db_path, "generic", "main")
    folder = tmp_path / "backups" / "daily"
    data = json.loads(ok("backup", f"{folder}/", "--db", str(db_path), "--json").stdout)
    written = Path(data["path"])
    assert folder.is_dir() and written.parent == folder and written.name.endswith(".db")
    with sqlite3.connect(written) as copy:
        assert copy.execute("SELECT count(*) FROM instances").fetchone() == (1,)


def test_backup_of_a_missing_database_makes_no_folder(tmp_path: Path) -> None:
    """Nothing to back up: exit 1, and the folder is not made."""
    result = run("backup", f"{tmp_path / 'out'}/", "--db", str(tmp_path / "none.db"))
    assert result.exit_code == 1 and not (tmp_path / "out").exists()


# -- JSON, confirmations and errors --------------------------------------------------------------


def test_destructive_commands_answer_json(
    db_path: Path | DatabaseUrl, make_dead_letters: MakeDeadLetters
) -> None:
    """dlq discard, instances remove and admin-token reset take --json (and never prompt
    when stdin is not a terminal)."""
    added(db_path, "generic", "main")
    db = open_database(db_path).open()
    try:
        (letter,) = make_dead_letters(db, 1)
    finally:
        db.close()
    discarded = json.loads(ok("dlq", "discard", letter, "--db", str(db_path), "--json").stdout)
    assert discarded == {"discarded": letter}
    removed = json.loads(
        ok("instances", "remove", "generic", "main", "--db", str(db_path), "--json").stdout
    )
    assert removed == {"removed": {"plugin": "generic", "instance": "main"}}
    reset = json.loads(ok("admin-token", "reset", "--db", str(db_path), "--json").stdout)
    assert reset["admin_token"].startswith("ibx_")


def test_an_error_is_not_coloured_when_stderr_is_not_a_terminal(
    db_path: Path | DatabaseUrl,
) -> None:
    """Scripts and logs get plain text."""
    result = run("instances", "show", "generic", "nope", "--db", str(db_path))
    assert result.exit_code == 1 and "\x1b[" not in result.stderr


def _at_terminal(args: list[str], answer: bytes) -> tuple[int, str]:
    """Run the program on a pseudo-terminal (stdin, stdout, stderr); answer its prompt."""
    leader, follower = os.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGRESS_BOX_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "ingress_box", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**env, "PYTHONPATH": str(ROOT), "TERM": "xterm"},
        cwd=ROOT,
    )
    os.close(follower)
    seen = b""
    try:
        while process.poll() is None or select.select([leader], [], [], 0)[0]:
            ready, _, _ = select.select([leader], [], [], 30)
            assert ready, f"no output within 30 s: {seen!r}"
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the follower closed: the program ended
                break
            if not chunk:
                break
            seen += chunk
            if answer and b"[y/N]" in seen:
                os.write(leader, answer)
                answer = b""
        process.wait(timeout=30)
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, seen.decode(errors="replace")


def test_a_person_at_a_terminal_is_asked_before_a_discard(
    db_path: Path | DatabaseUrl, make_dead_letters: MakeDeadLetters
) -> None:
    """At a terminal, dlq discard asks; "n" keeps the dead letter and exits 1."""
    db = open_database(db_path).open()
    try:
        (letter,) = make_dead_letters(db, 1)
    finally:
        db.close()
    status, seen = _at_terminal(["dlq", "discard", letter, "--db", str(db_path)], b"n\n")
    assert status == 1 and f"Discard {letter} for good?" in seen, seen
    listed = json.loads(ok("dlq", "list", "--db", str(db_path), "--json").stdout)["items"]
    assert [item["id"] for item in listed] == [letter]
    status, seen = _at_terminal(["dlq", "discard", letter, "--db", str(db_path), "-y"], b"")
    assert status == 0 and "[y/N]" not in seen, seen
    assert json.loads(ok("dlq", "list", "--db", str(db_path), "--json").stdout)["items"] == []


def test_an_error_is_red_at_a_terminal(db_path: Path | DatabaseUrl) -> None:
    """A failure on a terminal's stderr is coloured."""
    added(db_path, "generic", "main")
    status, seen = _at_terminal(["instances", "show", "generic", "nope", "--db", str(db_path)], b"")
    assert status == 1 and "\x1b[31mError: no instance generic/nope" in seen, seen
