"""The log handler serve uses: cheap lines, written together, none lost at a stop."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fake_target import FakeTarget
from live import free_port
from serving import BoxProcess
from signers import sign_generic
from waiting import eventually

from ingress_box import logs

SPLIT_SECRET = "split-deployment-secret"


@pytest.fixture
def stream() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def logger(stream: io.StringIO) -> Iterator[logging.Logger]:
    """A logger of its own writing through a BufferedHandler into ``stream``."""
    handler = logs.BufferedHandler(stream)
    handler.setFormatter(logs.TextFormatter())
    log = logging.getLogger("ingress_box.test_logs")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield log
    finally:
        log.removeHandler(handler)
        log.propagate = True
        handler.close()


def test_an_info_line_is_written_without_a_flush(
    logger: logging.Logger, stream: io.StringIO
) -> None:
    """The writer thread writes what gathered in its window."""
    logger.info("request", extra={"fields": {"status": 202}})
    line = eventually(stream.getvalue, 2.0, "the line to be written")
    assert line.endswith(" INFO ingress_box.test_logs: request status=202\n"), line


def test_a_warning_is_written_before_the_call_returns(
    logger: logging.Logger, stream: io.StringIO
) -> None:
    """Warnings and errors are not held back: they are the lines someone is waiting for."""
    logger.info("first")
    logger.warning("second")
    lines = stream.getvalue().splitlines()
    assert lines[-2].endswith(": first") and lines[-1].endswith(": second"), lines


def test_lines_from_four_threads_are_each_written_once_and_whole(
    logger: logging.Logger, stream: io.StringIO
) -> None:
    """No handler lock, yet no line is lost, doubled or torn, and each thread's stay in order."""

    def run(thread: int) -> None:
        for i in range(2000):
            logger.info("attempt", extra={"fields": {"thread": thread, "n": i}})

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logger.handlers[0].flush()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 8000
    for thread in range(4):
        mine = [line for line in lines if f" thread={thread} " in line]
        assert [line.rsplit("n=", 1)[1] for line in mine] == [str(i) for i in range(2000)]


def test_the_text_line_is_logging_s_format_with_the_fields() -> None:
    """The cheap path writes what ``logging.Formatter(TEXT_FORMAT)`` would, then the fields."""
    record = logging.LogRecord("ingress_box.x", logging.INFO, "f.py", 1, "took %s", ("a\nb",), None)
    record.fields = {"plugin": "generic", "error": None, "ms": 1.5}
    expected = logging.Formatter(logs.TEXT_FORMAT).format(record).replace("\n", "\\n")
    assert logs.TextFormatter().format(record) == f"{expected} plugin=generic ms=1.5"


def test_a_json_line_has_the_epoch_time_and_the_same_moment_in_iso_8601_utc() -> None:
    """``timestamp`` is ``time`` as ISO 8601 UTC to the millisecond, also past a second."""
    formatter = logs.JsonFormatter()
    for created in (1_700_000_000.25, 1_700_000_000.999, 1_700_000_001.0):
        record = logging.LogRecord("ingress_box.x", logging.INFO, "f.py", 1, "hi", None, None)
        record.created, record.msecs = created, (created % 1) * 1000
        line = json.loads(formatter.format(record))
        assert line["time"] == created
        expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        assert line["timestamp"] == expected.replace("+00:00", "Z")


def test_a_traceback_keeps_its_lines_and_the_fields_stay_escaped() -> None:
    """Only the slow path (an exception) writes more than one line, and only the traceback."""
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "ingress_box.x", logging.ERROR, "f.py", 1, "failed", None, sys.exc_info()
        )
    record.fields = {"error": "a\nb"}
    line = logs.TextFormatter().format(record)
    assert "Traceback" in line and "ValueError: boom" in line
    assert line.endswith(" error=a\\nb")


def _serve_one_request(tmp_path: Path, **env_extra: str) -> str:
    """Start ``serve``, send it one request (to an unknown instance: 404), stop it with
    SIGTERM, and return what it wrote to stderr."""
    port = free_port()
    err = tmp_path / "serve.err"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGRESS_BOX_")}
    with err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ingress_box", "serve"],
            env={
                **env,
                "INGRESS_BOX_DB": str(tmp_path / "box.db"),
                "INGRESS_BOX_HOST": "127.0.0.1",
                "INGRESS_BOX_PORT": str(port),
                "INGRESS_BOX_ADMIN_TOKEN": "sigterm-test-token-0123",
                **env_extra,
            },
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            assert proc.poll() is None, err.read_text()
            try:
                return httpx.get(url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        eventually(healthy, 20, "serve to answer /healthz")
        answer = httpx.post(url + "/ingress/generic/nobody/events", content=b"{}")
        assert answer.status_code == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    return err.read_text()


def test_serve_writes_its_last_request_line_when_stopped_by_sigterm(tmp_path: Path) -> None:
    """The lines still in the buffer at a SIGTERM are written before the process exits."""
    written = _serve_one_request(tmp_path)
    requests = [line for line in written.splitlines() if ": request " in line]
    assert len(requests) == 1, written
    assert "instance=nobody" in requests[0] and "status=404" in requests[0]


def test_log_level_warning_drops_the_request_lines_and_keeps_warnings(tmp_path: Path) -> None:
    """``INGRESS_BOX_LOG_LEVEL=warning``: no line per request (nor uvicorn's info lines), while
    a warning still gets through."""
    written = _serve_one_request(tmp_path, INGRESS_BOX_LOG_LEVEL="warning")
    assert ": request " not in written and " INFO " not in written, written
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure("text", "warning")
    try:
        delivery = logging.getLogger("ingress_box.delivery")
        assert not delivery.isEnabledFor(logging.INFO)
        assert delivery.isEnabledFor(logging.WARNING)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.fixture
def configure(
    monkeypatch: pytest.MonkeyPatch, stream: io.StringIO
) -> Iterator[Callable[[str, str], None]]:
    """``logs.configure`` as serve calls it, its handler writing into ``stream``; logging put
    back as it was after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setattr(logs, "_direct", None)

    def configure(log_format: str, log_level: str) -> None:
        logs.configure(log_format, log_level)
        handler = root.handlers[0]
        assert isinstance(handler, logs.BufferedHandler)
        handler.stream = stream

    try:
        yield configure
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _records_made(monkeypatch: pytest.MonkeyPatch) -> list[logging.LogRecord]:
    made: list[logging.LogRecord] = []
    factory = logging.getLogRecordFactory()

    def counting(*args: object, **kwargs: object) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        made.append(record)
        return record

    monkeypatch.setattr(logging, "_logRecordFactory", counting)  # what makeRecord calls
    return made


def _without_time(line: str, log_format: str) -> str:
    if log_format == "json":
        fields = json.loads(line)
        assert abs(fields.pop("time") - datetime.now(UTC).timestamp()) < 60
        assert fields.pop("timestamp").endswith("Z")
        return json.dumps(fields)
    return line.split(" ", 2)[2]  # the date and the time, then the rest


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_info_writes_the_line_logging_would_without_making_a_record(
    monkeypatch: pytest.MonkeyPatch,
    configure: Callable[[str, str], None],
    stream: io.StringIO,
    log_format: str,
) -> None:
    """The request and attempt lines skip logging's record and handler walk when serve's
    handler is the only one, and read the same as a line through logging."""
    configure(log_format, "info")
    made = _records_made(monkeypatch)
    log = logging.getLogger("ingress_box.access")
    fields = {"plugin": "generic", "status": 202, "error": None, "path": "/a\nb", "ms": 1.5}
    logs.info(log, "request", fields)
    assert made == []
    log.info("request", extra={"fields": fields})
    assert len(made) == 1
    logging.getLogger().handlers[0].flush()
    direct, through_logging = stream.getvalue().splitlines()
    assert _without_time(direct, log_format) == _without_time(through_logging, log_format)
    if log_format == "text":
        assert direct.split(" ", 2)[2] == (
            "INFO ingress_box.access: request plugin=generic status=202 path=/a\\nb ms=1.5"
        )


def test_info_gives_a_record_to_any_other_handler(
    configure: Callable[[str, str], None], stream: io.StringIO
) -> None:
    """Another handler on the way (pytest's caplog, an operator's own) gets the record with its
    fields; serve's handler still writes the line once. A filter on the logger is honoured."""
    configure("text", "info")
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    other = Keep()
    logging.getLogger().addHandler(other)
    log = logging.getLogger("ingress_box.delivery")
    logs.info(log, "attempt", {"outcome": "delivered"})
    assert [r.getMessage() for r in seen] == ["attempt"]
    assert seen[0].fields == {"outcome": "delivered"}  # type: ignore[attr-defined]
    logging.getLogger().removeHandler(other)

    def drop(record: logging.LogRecord) -> bool:
        return False

    log.addFilter(drop)
    try:
        logs.info(log, "attempt", {"outcome": "dead"})
    finally:
        log.removeFilter(drop)
    logging.getLogger().handlers[0].flush()
    assert stream.getvalue().count(": attempt ") == 1, stream.getvalue()
    assert "outcome=delivered" in stream.getvalue()


def test_info_writes_nothing_below_the_log_level(
    configure: Callable[[str, str], None], stream: io.StringIO
) -> None:
    configure("text", "warning")
    logs.info(logging.getLogger("ingress_box.access"), "request", {"status": 202})
    logging.getLogger().handlers[0].flush()
    assert stream.getvalue() == ""


def test_a_worker_process_writes_the_line_of_each_attempt(
    tmp_path: Path, target: FakeTarget
) -> None:
    """The split deployment (serve --no-run-worker beside ingress-box worker): the worker's
    log has the same attempt line serve's would."""
    db = tmp_path / "box.db"
    serve = BoxProcess(db, env={"INGRESS_BOX_RUN_WORKER": "0"}).wait_ready()
    worker = BoxProcess(db, "worker").wait_started()
    try:
        serve.add_instance(target_url=target.url, secret=SPLIT_SECRET)
        body = b'{"id": "split-1"}'
        headers = {"content-type": "application/json", **sign_generic(SPLIT_SECRET, body)}
        posted = httpx.post(
            serve.url + "/ingress/generic/main/events", content=body, headers=headers
        )
        assert posted.status_code == 202, posted.text
        eventually(lambda: len(target.received) == 1, 30, "the worker's delivery")
        line = eventually(
            lambda: next((x for x in worker.output().splitlines() if ": attempt " in x), None),
            10,
            "the worker's attempt line",
        )
    finally:
        assert worker.stop() == 0 and serve.stop() == 0
    assert "plugin=generic instance=main" in line and "outcome=delivered" in line, line
