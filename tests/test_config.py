"""Settings: read once from the environment, flags win, nonsense fails at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingress_box.config import Secret, load_settings
from ingress_box.errors import ConfigError


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
            "INGRESS_BOX_ADMIN_TOKEN": "tok",
        }
    )
    assert (s.db_path, s.port, s.synchronous, s.workers) == (Path("/tmp/x.db"), 9000, "NORMAL", 16)
    assert s.metrics_public is True
    assert s.admin_token == Secret("tok")


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
