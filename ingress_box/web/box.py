"""``Box``: everything a request handler may need, built once per app by :mod:`ingress_box.app`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request

from ..config import Settings
from ..ingress import Ingress
from ..metrics import Metrics
from ..plugins import Registry
from ..store import Database
from .auth import AdminAuth


class WorkerHandle(Protocol):
    """What the web layer needs of the outbox worker running beside it."""

    def wake(self) -> None: ...

    def alive(self) -> bool: ...


@dataclass
class Box:
    settings: Settings
    db: Database
    registry: Registry
    ingress: Ingress
    auth: AdminAuth
    worker: WorkerHandle | None
    metrics: Metrics
    clock: Callable[[], float]
    generated_token: str | None = None

    def wake_worker(self) -> None:
        """Say new work is in the outbox (a redrive, say): the worker takes it at once."""
        if self.worker is not None:
            self.worker.wake()


def box_of(request: Request) -> Box:
    box: Box = request.app.state.box
    return box
