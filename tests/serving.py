"""``ingress-box serve`` (or ``worker``) as a real child process, for tests about processes,
signals and sockets. Always on 127.0.0.1, on a free port, with its output in a log file."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import httpx
from live import free_port
from waiting import eventually

ADMIN_TOKEN = "serving-test-admin-token"


class BoxProcess:
    """One ``ingress-box`` process on the database file ``db``.

    The environment is the test's minus every ``INGRESS_BOX_*`` variable, plus the database,
    the address, the admin token and ``env``. ``nofile`` sets the child's open-files limit;
    ``port`` (default: a free one) lets a restarted box answer where its clients still post.
    An ``INGRESS_BOX_DB`` in ``env`` (a PostgreSQL URL) replaces the file; ``db`` then only
    names the folder the log goes to. ``prelude`` is Python the child runs before the CLI (a
    test's change to a module's constant).
    """

    def __init__(
        self,
        db: Path,
        command: str = "serve",
        *,
        token: str = ADMIN_TOKEN,
        nofile: tuple[int, int] | None = None,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        prelude: str | None = None,
    ) -> None:
        self.db = db
        self.token = token
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("INGRESS_BOX_")}
        environ = {
            **clean,
            "INGRESS_BOX_DB": str(db),
            "INGRESS_BOX_HOST": "127.0.0.1",
            "INGRESS_BOX_PORT": str(self.port),
            "INGRESS_BOX_ADMIN_TOKEN": token,
            **(env or {}),
        }
        self.log = db.with_name(f"{command}-{self.port}.log")

        def limit_files() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        program = ["-m", "ingress_box"]
        if prelude is not None:
            program = [
                "-c",
                f"{prelude}\nimport runpy\nrunpy.run_module('ingress_box', run_name='__main__')",
            ]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *program, command],
                env=environ,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=limit_files if nofile is not None else None,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def _alive(self) -> None:
        if self.proc.poll() is not None:  # it died: say why at once
            raise AssertionError(f"exited {self.proc.returncode}: {self.output()}")

    def wait_ready(self, timeout: float = 30) -> Self:
        """Wait until ``serve`` answers ``/healthz``."""

        def healthy() -> bool:
            self._alive()
            try:
                return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        eventually(healthy, timeout, f"serve on port {self.port} to answer /healthz")
        return self

    def wait_started(self, timeout: float = 30) -> Self:
        """Wait until a ``worker`` says it started (it has no HTTP port to ask)."""

        def started() -> bool:
            self._alive()
            return " started on " in self.output()

        eventually(started, timeout, "the worker to start")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the process and wait for its exit status; past ``timeout`` it is killed and
        the timeout raised, so a process that ignores SIGTERM fails its test loudly."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL if still running (a test's clean-up)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return httpx.request(method, self.url + path, headers=headers, **kwargs)

    def add_instance(
        self, plugin: str = "generic", instance: str = "main", **fields: object
    ) -> dict[str, Any]:
        """Create an instance through the admin API; the answer (secrets shown once)."""
        response = self.admin(
            "POST", "/admin/instances", json={"plugin": plugin, "instance": instance, **fields}
        )
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created
