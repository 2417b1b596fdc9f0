"""``ingress-box health``: exit 0 when this box is healthy, 1 when not; the Docker image's
HEALTHCHECK, for a ``serve`` container and a ``worker``-only one alike.

It asks ``/readyz`` where ``serve`` listens (``--host``/``--port``); when nothing listens
there, the process is a ``worker`` and its heartbeat file (:mod:`ingress_box.heartbeat`) must be
younger than ``--max-age-seconds``. ``--of serve`` or ``--of worker`` checks only that one.
"""

from __future__ import annotations

import time
from typing import Any

import click
import httpx

from .. import heartbeat
from ..config import Settings, load_settings
from .common import FiniteFloat, command_options

PROBE_SECONDS = 4.0  # under the image's HEALTHCHECK --timeout=5s
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}


def _readyz(settings: Settings) -> tuple[bool, str] | None:
    """serve's answer, or None when nothing listens there."""
    host = _WILDCARDS.get(settings.host, settings.host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    url = f"http://{host}:{settings.port}/readyz"
    try:
        answer = httpx.get(url, timeout=PROBE_SECONDS)
    except httpx.ConnectError:
        return None
    except httpx.HTTPError as exc:  # it listens but does not answer in time
        return False, f"serve at {url} did not answer: {exc}"
    return answer.status_code == 200, f"serve at {url} answers {answer.status_code}"


def _worker(settings: Settings, max_age: float) -> tuple[bool, str]:
    path = heartbeat.path_for(settings.db_path)
    age = heartbeat.age(path, time.time())
    if age is None:
        return False, f"no serve listening and no worker heartbeat ({path})"
    return age <= max_age, f"worker heartbeat {age:.0f}s old (at most {max_age:.0f}s)"


@click.command("health")
@click.option(
    "--of",
    "which",
    type=click.Choice(["auto", "serve", "worker"]),
    default="auto",
    show_default=True,
    help="auto: serve's /readyz, or the worker's heartbeat when nothing listens",
)
@click.option(
    "--max-age-seconds",
    type=FiniteFloat(min=1),
    default=heartbeat.MAX_AGE_SECONDS,
    show_default=True,
    help="a worker heartbeat older than this is unhealthy",
)
@command_options("health")
def health_command(which: str, max_age_seconds: float, **flags: Any) -> None:
    """Exit 0 if serve answers /readyz (or, without serve, the worker beats), else 1."""
    settings = load_settings(**flags)
    found = _readyz(settings) if which != "worker" else None
    if found is None:
        if which == "serve":
            found = False, f"no serve listening on {settings.host}:{settings.port}"
        else:
            found = _worker(settings, max_age_seconds)
    healthy, detail = found
    click.echo(f"{'ok' if healthy else 'fail'}: {detail}", err=not healthy)
    if not healthy:
        raise SystemExit(1)
