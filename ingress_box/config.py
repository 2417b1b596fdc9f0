"""Settings: one frozen object, read from the environment in one function.

Every setting is an ``INGRESS_BOX_*`` variable and a CLI flag of ``serve``/``worker``; the CLI
passes the flags it was given as ``overrides`` so that a flag beats the variable.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

ENV_PREFIX = "INGRESS_BOX_"
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")


class Secret:
    """A string whose repr never shows the value (after starlette.datastructures.Secret)."""

    def __init__(self, value: str) -> None:
        self._value = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}('**********')"

    def __str__(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    db_path: Path = Path("./data/ingress-box.db")
    host: str = "127.0.0.1"
    port: int = 8080
    admin_token: Secret | None = None
    public_url: str | None = None
    max_body_bytes: int = 262_144
    max_header_bytes: int = 32768
    synchronous: str = "FULL"
    busy_timeout_seconds: float = 5.0
    rate_limit: float = 0.0
    retry_max_attempts: int = 8
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 3600.0
    delivery_timeout_seconds: float = 10.0
    lease_seconds: float = 60.0
    workers: int = 4
    run_worker: bool = True
    plugins_dir: Path | None = None
    dedup_retention_days: float = 7.0
    payload_retention_days: float = 1.0
    dlq_retention_days: float = 90.0
    rotation_grace_hours: float = 24.0
    metrics_public: bool = False
    log_format: str = "text"
    rejections_kept: int = 50

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _parse(name: str, raw: str, kind: Any) -> Any:
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind is Path:
            return Path(raw)
        if kind is Secret:
            return Secret(raw)
        return kind(raw)
    except ValueError as exc:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}: cannot read {raw!r}") from exc


# How each field is parsed from text; Optional fields list their inner type.
_KINDS: dict[str, Any] = {
    "db_path": Path,
    "host": str,
    "port": int,
    "admin_token": Secret,
    "public_url": str,
    "max_body_bytes": int,
    "max_header_bytes": int,
    "synchronous": str,
    "busy_timeout_seconds": float,
    "rate_limit": float,
    "retry_max_attempts": int,
    "retry_base_seconds": float,
    "retry_max_seconds": float,
    "delivery_timeout_seconds": float,
    "lease_seconds": float,
    "workers": int,
    "run_worker": bool,
    "plugins_dir": Path,
    "dedup_retention_days": float,
    "payload_retention_days": float,
    "dlq_retention_days": float,
    "rotation_grace_hours": float,
    "metrics_public": bool,
    "log_format": str,
    "rejections_kept": int,
}

# Variables whose name is not simply the upper-cased field name.
_ENV_NAMES = {"db_path": "DB"}


def env_name(field_name: str) -> str:
    return ENV_PREFIX + _ENV_NAMES.get(field_name, field_name.upper())


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from ``environ`` (default: the process environment) and explicit overrides.

    Overrides whose value is None are ignored, so a CLI can pass every flag through.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, kind in _KINDS.items():
        raw = environ.get(env_name(name))
        if raw is not None and raw != "":
            values[name] = _parse(name, raw, kind)
    for name, value in overrides.items():
        if name not in _KINDS:
            raise ConfigError(f"unknown setting {name!r}")
        if value is not None:
            if isinstance(value, str) and _KINDS[name] is not str:
                value = _parse(name, value, _KINDS[name])
            values[name] = value
    if "synchronous" in values:
        values["synchronous"] = str(values["synchronous"]).upper()
    settings = Settings(**values)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    problems = []
    if s.synchronous.upper() not in SYNCHRONOUS_MODES:
        problems.append(f"{env_name('synchronous')} must be one of {', '.join(SYNCHRONOUS_MODES)}")
    if not 0 < s.port < 65536:
        problems.append(f"{env_name('port')} must be a TCP port")
    if s.max_body_bytes < 0:
        problems.append(f"{env_name('max_body_bytes')} must be >= 0")
    if s.workers < 1:
        problems.append(f"{env_name('workers')} must be >= 1")
    if s.retry_max_attempts < 1:
        problems.append(f"{env_name('retry_max_attempts')} must be >= 1")
    if s.rate_limit < 0:
        problems.append(f"{env_name('rate_limit')} must be >= 0")
    if s.lease_seconds <= s.delivery_timeout_seconds:
        # A lease that ends before a slow attempt does lets a second worker deliver it again.
        problems.append(
            f"{env_name('lease_seconds')} must be longer than "
            f"{env_name('delivery_timeout_seconds')}"
        )
    if s.rejections_kept < 0:
        problems.append(f"{env_name('rejections_kept')} must be >= 0")
    if s.public_url is not None:
        parts = urlsplit(s.public_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problems.append(
                f"{env_name('public_url')} must be an http(s) URL with a host, "
                "e.g. https://hooks.example.com"
            )
    if s.log_format not in ("text", "json"):
        problems.append(f"{env_name('log_format')} must be text or json")
    for name in (
        "retry_base_seconds",
        "retry_max_seconds",
        "delivery_timeout_seconds",
        "lease_seconds",
        "busy_timeout_seconds",
    ):
        if getattr(s, name) <= 0:
            problems.append(f"{env_name(name)} must be > 0")
    if problems:
        raise ConfigError("; ".join(problems))
