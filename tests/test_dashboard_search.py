"""The dashboard's deliveries list: the event type column, the time and type filters, search by
words of the body, and the export links that carry the filters."""

from __future__ import annotations

import csv
import html
import io
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import T0
from starlette.testclient import TestClient
from test_dashboard import UI, log_in
from test_search import add, indexed

from ingress_box.web.box import Box

pytestmark = pytest.mark.both_stores


@pytest.fixture
def ui(client: TestClient) -> TestClient:
    assert log_in(client).status_code == 303
    return client


def rows_of(page: str) -> list[str]:
    return re.findall(r'<tr data-delivery="([^"]+)"', page)


def export_links(page: str) -> dict[str, str]:
    """The page's export links by their text, unescaped."""
    found = re.findall(r'<a href="([^"]*/deliveries/export\?[^"]*)"[^>]*>(Export \w+)</a>', page)
    return {text: html.unescape(href) for href, text in found}


def test_the_list_has_an_event_type_column(ui: TestClient, box: Box) -> None:
    """Each row shows its delivery's event type."""
    add(box.db, 1, event_type="invoice.paid")
    page = ui.get(f"{UI}/deliveries").text
    assert "<th>event type</th>" in page
    assert '<td data-label="event type" class="wrap">invoice.paid</td>' in page


def test_the_search_box_finds_words_of_a_body(ui: TestClient, box: Box) -> None:
    """Words that are no id search the kept bodies, with the other filters."""
    wanted = add(box.db, 1, b'{"text": "pangolin"}', instance="a")
    add(box.db, 2, b'{"text": "pangolin"}', instance="b")
    add(box.db, 3, b'{"text": "other"}', instance="a")
    indexed(box.db)
    page = ui.get(f"{UI}/deliveries", params={"q": "pangolin", "instance": "a"}).text
    assert rows_of(page) == [wanted]
    assert 'name="q" value="pangolin"' in page


def test_an_id_in_the_search_box_still_opens_its_delivery(ui: TestClient, box: Box) -> None:
    """A provider delivery id goes straight to that delivery, as before."""
    wanted = add(box.db, 1)
    answer = ui.get(f"{UI}/deliveries", params={"q": "evt-1"}, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == f"{UI}/deliveries/{wanted}"


def test_the_time_and_type_filters_narrow_the_list(ui: TestClient, box: Box) -> None:
    """since, until and event_type inputs filter like the API's parameters, and are kept."""
    add(box.db, 1, at=T0, event_type="x")
    wanted = add(box.db, 2, at=T0 + 100, event_type="x")
    add(box.db, 3, at=T0 + 100, event_type="y")
    add(box.db, 4, at=T0 + 300, event_type="x")
    params = {"since": "2023-11-14T22:14:00Z", "until": str(T0 + 200), "event_type": "x"}
    page = ui.get(f"{UI}/deliveries", params=params).text
    assert rows_of(page) == [wanted]
    assert 'name="since" value="2023-11-14T22:14:00Z"' in page


def test_a_bad_time_is_an_error_page(ui: TestClient) -> None:
    """A since that is neither unix seconds nor ISO 8601 answers 400 with the reason."""
    answer = ui.get(f"{UI}/deliveries", params={"since": "tomorrow-ish"})
    assert answer.status_code == 400
    assert "since must be unix seconds or ISO 8601" in html.unescape(answer.text)


def test_the_export_links_carry_the_filters(ui: TestClient, box: Box) -> None:
    """Export CSV and Export JSON link to the same filters as the page shows."""
    params = {"q": "words here", "state": "pending", "since": "2023-11-14", "event_type": "x"}
    links = export_links(ui.get(f"{UI}/deliveries", params=params).text)
    assert set(links) == {"Export CSV", "Export JSON"}
    for text, fmt in (("Export CSV", "csv"), ("Export JSON", "json")):
        query = parse_qs(urlsplit(links[text]).query)
        assert query == {"format": [fmt], **{k: [v] for k, v in params.items()}}


def test_an_export_link_downloads_the_filtered_list(ui: TestClient, box: Box) -> None:
    """Following the page's CSV link (session, no bearer token) downloads its rows."""
    add(box.db, 1, instance="a")
    wanted = add(box.db, 2, instance="b")
    links = export_links(ui.get(f"{UI}/deliveries", params={"instance": "b"}).text)
    answer = ui.get(links["Export CSV"])
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    assert [r["id"] for r in csv.DictReader(io.StringIO(answer.text))] == [wanted]


def test_the_export_needs_a_session(client: TestClient) -> None:
    """Without a login the export redirects to the login page, like every page."""
    answer = client.get(f"{UI}/deliveries/export?format=csv", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith(f"{UI}/login")
