"""``ingress-box deliveries list`` with the new filters, and ``deliveries export``."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from clirun import ok, run
from conftest import T0
from test_search import add, indexed

from ingress_box.config import DatabaseUrl
from ingress_box.store import Database

pytestmark = pytest.mark.both_stores


def listed(db_path: Path | DatabaseUrl, *flags: str) -> list[str]:
    out = ok("deliveries", "list", "--db", str(db_path), "--json", *flags).stdout
    return [item["id"] for item in json.loads(out)["items"]]


def test_list_shows_the_event_type_column(db_path: Path | DatabaseUrl, db: Database) -> None:
    """The table has an EVENT column with each delivery's type."""
    add(db, 1, event_type="order.created")
    out = ok("deliveries", "list", "--db", str(db_path)).stdout
    header, row = out.splitlines()[:2]
    assert header.split()[4] == "EVENT"
    assert "order.created" in row.split()


def test_list_filters_on_event_type_time_and_words(
    db_path: Path | DatabaseUrl, db: Database
) -> None:
    """--event-type, --since/--until (unix seconds or ISO 8601) and --search narrow the list."""
    early = add(db, 1, b'{"text": "capybara"}', at=T0, event_type="a")
    late = add(db, 2, b'{"text": "capybara"}', at=T0 + 100, event_type="b")
    other = add(db, 3, b'{"text": "tapir"}', at=T0 + 100, event_type="b")
    indexed(db)
    assert listed(db_path, "--event-type", "a") == [early]
    assert listed(db_path, "--since", str(T0 + 50)) == [other, late]
    until = datetime.fromtimestamp(T0 + 50, UTC).isoformat()
    assert listed(db_path, "--until", until) == [early]
    assert listed(db_path, "--search", "capybara", "--since", str(T0 + 50)) == [late]


def test_a_bad_time_is_one_line_and_exit_2(db_path: Path | DatabaseUrl, db: Database) -> None:
    """A --since that is neither form is the caller's mistake, said in one line."""
    result = run("deliveries", "list", "--db", str(db_path), "--since", "last tuesday")
    assert result.exit_code == 2
    assert "since must be unix seconds or ISO 8601" in result.output
    assert "Traceback" not in result.output


def test_export_csv_matches_the_list(db_path: Path | DatabaseUrl, db: Database) -> None:
    """deliveries export --format csv writes a header row and the listed deliveries."""
    for n in range(3):
        add(db, n, conversation=f"chat-{n}")
    out = ok("deliveries", "export", "--format", "csv", "--db", str(db_path)).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["id"] for r in rows] == listed(db_path)
    assert [r["conversation"] for r in rows] == ["chat-2", "chat-1", "chat-0"]


def test_export_json_takes_the_filters(db_path: Path | DatabaseUrl, db: Database) -> None:
    """deliveries export --format json with filters writes a JSON array of those only."""
    add(db, 1, instance="a")
    wanted = add(db, 2, instance="b")
    out = ok(
        "deliveries", "export", "--format", "json", "--instance", "b", "--db", str(db_path)
    ).stdout
    assert [item["id"] for item in json.loads(out)] == [wanted]


def test_export_needs_a_format(db_path: Path | DatabaseUrl, db: Database) -> None:
    """Without --format the command says so (exit 2)."""
    assert run("deliveries", "export", "--db", str(db_path)).exit_code == 2


def test_plugins_show_says_where_the_event_type_is() -> None:
    """plugins show prints a route's event type source (GitHub: its event header)."""
    out = ok("plugins", "show", "github").stdout
    assert '  event type: {"form_fields": [], "headers": ["x-github-event"]' in out
