"""Settings: one frozen object, declared once, read from the environment in one function.

Each field of :class:`Settings` is declared with :func:`setting`: its default, its help text,
the commands it is a flag of, and the values it accepts. Everything else is derived from that
one declaration: how a value is parsed (the field's type), its variable (``INGRESS_BOX_<NAME>``),
its flag (``--<name>``), the CLI options of ``serve`` and ``worker``, and the checks. The CLI
passes the flags it was given as ``overrides``, so that a flag beats the variable and the
variable beats the default.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import math
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .errors import ConfigError

ENV_PREFIX = "INGRESS_BOX_"
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

T = TypeVar("T")


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


# -- the declaration --------------------------------------------------------------------------

SERVE = ("serve",)
SERVE_AND_WORKER = ("serve", "worker")
RETENTION = ("serve", "worker", "prune")  # the worker prunes hourly; `prune` does it at once
# What makes the box's URL: serve listens there, and the commands that print ingress URLs,
# or ask the running box (health), must agree with it.
ADDRESS = ("serve", "instances", "bridges", "health")
WRITER = ("serve", "worker", "prune")  # commands that write much to the file


class DatabaseUrl(str):
    """``INGRESS_BOX_DB=postgresql://user:password@host:5432/dbname``: everything is kept in
    that PostgreSQL database instead of the SQLite file."""

    SCHEMES = ("postgresql://", "postgres://")

    @classmethod
    def matches(cls, text: str) -> bool:
        return text.startswith(cls.SCHEMES)

    @classmethod
    def parse(cls, text: str) -> Path | DatabaseUrl:
        return cls(text) if cls.matches(text) else Path(text)


@dataclass(frozen=True)
class Declaration:
    """What one setting declares beyond its type; ``name``, ``kind`` and ``default`` are filled
    in from the field by :func:`declarations`."""

    help: str
    commands: tuple[str, ...]
    minimum: float | None = None  # the smallest value allowed
    above: float | None = None  # values must be greater than this
    maximum: float | None = None  # the largest value allowed
    choices: tuple[str, ...] = ()
    case_sensitive: bool = True
    check: Callable[[Any], str | None] | None = None  # returns what is wrong, if anything
    env: str | None = None  # the variable's name after the prefix, when not NAME
    flag: str | None = None  # the flag's name after "--", when not the name with dashes
    folder: bool = False  # a Path that names a folder (else a file)
    database: bool = False  # a Path, or a PostgreSQL URL (a DatabaseUrl)
    name: str = ""
    kind: type = str  # the field's type, without "| None"
    default: Any = None

    @property
    def env_name(self) -> str:
        return ENV_PREFIX + (self.env or self.name.upper())

    @property
    def flag_name(self) -> str:
        return "--" + (self.flag or self.name.replace("_", "-"))

    @property
    def label(self) -> str:
        """How an error names the setting: by its variable and by its flag."""
        return f"{self.env_name} ({self.flag_name})"

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` for this setting, or None when it is allowed."""
        if self.kind in (int, float):
            if not math.isfinite(value):
                return f"must be a finite number, not {value}"
            low_ok = (self.minimum is None or value >= self.minimum) and (
                self.above is None or value > self.above
            )
            if not low_ok or (self.maximum is not None and value > self.maximum):
                return f"must be {self.range_text()}, not {_number(value)}"
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, not {value!r}"
        return self.check(value) if self.check is not None else None

    def range_text(self) -> str:
        """The allowed range for people (errors, the README): e.g. ``> 0 and <= 600``."""
        parts = []
        if self.minimum is not None:
            parts.append(f">= {_number(self.minimum)}")
        if self.above is not None:
            parts.append(f"> {_number(self.above)}")
        if self.maximum is not None:
            parts.append(f"<= {_number(self.maximum)}")
        return " and ".join(parts) or "any finite number"


def setting(
    default: T,
    help: str,
    *,
    commands: tuple[str, ...] = SERVE_AND_WORKER,
    **declared: Any,
) -> T:
    """Declare a field of :class:`Settings`; see :class:`Declaration` for what ``declared`` may
    say. Typed as the default, so the dataclass reads as plain fields."""
    declaration = Declaration(help=help, commands=commands, **declared)
    result: T = field(default=default, metadata={"setting": declaration})
    return result


def _http_url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and parts.netloc:
        return None
    return "must be an http(s) URL with a host, e.g. https://hooks.example.com"


MIN_ADMIN_TOKEN = 16


def _strong_token(value: Secret) -> str | None:
    # Never echo the token. Whitespace could never arrive: the header and the form lose it.
    token = str(value)
    if not token:
        return None  # not given: one is generated
    if len(token) < MIN_ADMIN_TOKEN or not all("!" <= c <= "~" for c in token):
        return (
            f"must be at least {MIN_ADMIN_TOKEN} characters of visible ASCII, "
            "with no spaces (e.g. openssl rand -hex 24)"
        )
    return None


def _whsec(value: Secret) -> str | None:
    # Never echo the secret. Decoded as ingress_box.signing decodes it to sign (padding added).
    key = str(value).removeprefix("whsec_")
    try:
        decoded = base64.b64decode(key + "=" * (-len(key) % 4), validate=True)
    except ValueError:
        decoded = b""
    if not str(value).startswith("whsec_") or not decoded:
        return "must be whsec_ and a non-empty base64 key (e.g. a generated outbound secret)"
    return None


def _number(value: float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


DAY_HOURS = 24.0
CENTURY_DAYS = 36_500.0  # "keep for ever" is a long window, not a number that overflows


@dataclass(frozen=True)
class Settings:
    """Every setting, declared once. Checked whenever one is made (``replace`` too): a value
    out of its declared range is a ConfigError naming the setting, never a surprise later."""

    db_path: Path | DatabaseUrl = setting(
        Path("./data/ingress-box.db"),
        "the SQLite file, or a postgresql:// URL",
        commands=(*RETENTION, "health"),
        env="DB",
        flag="db",
        database=True,
    )
    host: str = setting("127.0.0.1", "address to listen on", commands=ADDRESS)
    port: int = setting(8080, "port to listen on", commands=ADDRESS, minimum=1, maximum=65_535)
    admin_token: Secret | None = setting(
        None,
        "bearer token of the admin API, 16+ visible characters (generated and printed once "
        "if unset)",
        commands=SERVE,
        check=_strong_token,
    )
    public_url: str | None = setting(
        None,
        "base URL providers call (Twilio signs it; shown in ingress URLs)",
        commands=("serve", "instances", "bridges", "doctor"),
        check=_http_url,
    )
    # SQLite refuses a value longer than 10^9 bytes by default, so a bigger body cannot be kept.
    max_body_bytes: int = setting(
        262_144,
        "default body cap of a route",
        commands=SERVE,
        minimum=0,
        maximum=1_000_000_000,
    )
    # The edge (CONTRACT, "Limits at the edge"): what one client may hold of memory, time and
    # file descriptors. Enforced by the server, see ingress_box.web.server.
    max_header_bytes: int = setting(
        32_768,
        "request line and headers of a request together (larger: 431); also what is stored of them",
        commands=SERVE,
        minimum=1024,
        maximum=1_048_576,
    )
    read_timeout_seconds: float = setting(
        10.0,
        "how long a client may take to send its headers, and then its body",
        commands=SERVE,
        above=0,
        maximum=600,
    )
    max_connections: int = setting(
        1000,
        "open connections; past them a new one gets a 503 at once",
        commands=SERVE,
        minimum=1,
        maximum=1_000_000,
    )
    synchronous: str = setting(
        "FULL",
        "SQLite synchronous: FULL survives power loss, NORMAL process crashes",
        choices=SYNCHRONOUS_MODES,
        case_sensitive=False,
        commands=WRITER,
    )
    busy_timeout_seconds: float = setting(
        5.0,
        "how long a write waits for SQLite's lock before a request gets a 503",
        commands=WRITER,
        above=0,
        maximum=600,
    )
    rate_limit: float = setting(
        0.0,
        "verified requests per second per instance (0: off)",
        commands=SERVE,
        minimum=0,
    )
    retry_max_attempts: int = setting(
        8, "delivery attempts before dead-lettering", minimum=1, maximum=1000
    )
    retry_base_seconds: float = setting(
        5.0, "first backoff between attempts", above=0, maximum=86_400
    )
    retry_max_seconds: float = setting(
        3600.0, "longest backoff between attempts", above=0, maximum=30 * 86_400
    )
    delivery_timeout_seconds: float = setting(
        10.0, "one forward attempt's timeout", above=0, maximum=600
    )
    lease_seconds: float = setting(
        60.0,
        "how long a claimed delivery stays leased (longer than the delivery timeout)",
        above=0,
        maximum=86_400,
    )
    workers: int = setting(4, "concurrent deliveries", minimum=1, maximum=256)
    run_worker: bool = setting(
        True,
        "deliver in this process (--no-run-worker: leave it to "
        "`ingress-box worker` processes on the same file)",
        commands=SERVE,
    )
    plugins_dir: Path | None = setting(None, "folder of plugin manifests", folder=True)
    dedup_retention_days: float = setting(
        7.0,
        "how long dedup keys are kept",
        commands=RETENTION,
        above=0,
        maximum=CENTURY_DAYS,
    )
    payload_retention_days: float = setting(
        1.0,
        "how long bodies of delivered events are kept (the dedup key stays)",
        commands=RETENTION,
        above=0,
        maximum=CENTURY_DAYS,
    )
    dlq_retention_days: float = setting(
        90.0,
        "how long dead letters are kept",
        commands=RETENTION,
        above=0,
        maximum=CENTURY_DAYS,
    )
    rotation_grace_hours: float = setting(
        24.0,
        "how long a rotated-out secret keeps verifying",
        commands=SERVE,
        minimum=0,
        maximum=365 * DAY_HOURS,
    )
    metrics_public: bool = setting(False, "serve /metrics without the admin token", commands=SERVE)
    log_format: str = setting("text", "log line format", choices=LOG_FORMATS)
    log_level: str = setting(
        "info",
        "the least severe log lines written (warning: none per request or attempt)",
        choices=LOG_LEVELS,
    )
    rejections_kept: int = setting(
        50,
        "rejected requests remembered per instance (in memory)",
        commands=SERVE,
        minimum=0,
        maximum=10_000,
    )
    quarantine_kept: int = setting(
        100,
        "requests refused for their signature or timestamp kept per instance (0: none)",
        commands=SERVE,
        minimum=0,
        maximum=10_000,
    )
    quarantine_bytes: int = setting(
        10_485_760,
        "bytes of kept refused requests, over all instances",
        commands=SERVE,
        minimum=0,
        maximum=10**10,
    )
    # Alerts are sent by the process that delivers: serve, or each worker of a split one.
    alert_url: str | None = setting(
        None,
        "where alerts about failing and recovered instances are POSTed (none: no alerts)",
        check=_http_url,
    )
    alert_secret: Secret | None = setting(
        None, "the whsec_ secret that signs alerts (Standard Webhooks)", check=_whsec
    )
    alert_after_failures: int = setting(
        5, "failed attempts in a row that make an instance.failing alert", minimum=1, maximum=1000
    )

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ConfigError("; ".join(problems))

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def listen_url(self) -> str:
        """Where serve listens, as this machine reaches it (a wildcard address as localhost)."""
        host = {"0.0.0.0": "localhost", "::": "localhost"}.get(self.host, self.host)
        if ":" in host:  # an IPv6 literal
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """Where providers reach the box: the public URL, else where serve listens."""
        return self.public_url.rstrip("/") if self.public_url else self.listen_url


@functools.cache
def declarations() -> dict[str, Declaration]:
    """Every setting by field name, in declaration order, with its name, type and default."""
    hints = typing.get_type_hints(Settings)
    found = {}
    for f in dataclasses.fields(Settings):
        kind = hints[f.name]
        # "X | None" is parsed as X; None is the default, never a value read from text.
        inner = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
        found[f.name] = dataclasses.replace(
            f.metadata["setting"], name=f.name, kind=inner[0], default=f.default
        )
    return found


def for_command(command: str) -> list[Declaration]:
    """The settings that are flags of ``command``, in declaration order."""
    return [d for d in declarations().values() if command in d.commands]


def env_name(field_name: str) -> str:
    return declarations()[field_name].env_name


def _parse(d: Declaration, raw: str) -> Any:
    try:
        if d.kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if d.database:
            return DatabaseUrl.parse(raw)
        if d.kind is str and d.choices and not d.case_sensitive:
            return next((c for c in d.choices if c.lower() == raw.lower()), raw)
        return d.kind(raw)
    except ValueError as exc:
        raise ConfigError(f"{d.label}: cannot read {raw!r}") from exc


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from ``environ`` (default: the process environment) and explicit overrides.

    Overrides whose value is None are ignored, so a CLI can pass every flag through. Every value
    is checked against its declaration: a bad one is a ConfigError naming the setting.
    """
    environ = os.environ if environ is None else environ
    known = declarations()
    values: dict[str, Any] = {}
    for name, d in known.items():
        raw = environ.get(d.env_name)
        if raw is not None and raw != "":
            values[name] = _parse(d, raw)
    for name, value in overrides.items():
        if name not in known:
            raise ConfigError(f"unknown setting {name!r}")
        if value is None:
            continue
        d = known[name]
        if isinstance(value, str):
            value = _parse(d, value)
        elif d.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        values[name] = value
    return Settings(**values)


def _problems(s: Settings) -> list[str]:
    known = declarations()
    problems, bad = [], set()
    for name, d in known.items():
        value = getattr(s, name)
        problem = None if value is None else d.problem(value)
        if problem is not None:
            problems.append(f"{d.label} {problem}")
            bad.add(name)
    if s.alert_url and not s.alert_secret and "alert_url" not in bad:
        problems.append(
            f"{known['alert_secret'].label} is required with {known['alert_url'].label}"
        )
    timing = {"lease_seconds", "delivery_timeout_seconds"}
    if not timing & bad and s.lease_seconds <= s.delivery_timeout_seconds:
        # A lease that ends before a slow attempt does lets a second worker deliver it again.
        problems.append(
            f"{known['lease_seconds'].label} must be longer than "
            f"{known['delivery_timeout_seconds'].label}"
        )
    return problems
