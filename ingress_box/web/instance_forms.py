"""The dashboard's instance forms, read into the terms of :mod:`ingress_box.instance_rules`.

A form sends every field as text, blank when left empty; the admin API's JSON leaves a field
out instead. This module only bridges the two (blank means "not given" on create and "none" on
edit, a checkbox means true when sent): whether the values are valid is for instance_rules to
say, so the dashboard, the API and the CLI refuse the same things with the same words.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InvalidInput
from ..store.instances import Instance

CREATE_TEXT = ("target_url", "secret", "session", "lane_policy")
HOURS = 3600


def _given(form: Mapping[str, str], name: str) -> str | None:
    value = form.get(name, "").strip()
    return value or None


def creation(form: Mapping[str, str]) -> tuple[str, str, dict[str, object]]:
    """The plugin, the instance id and the create fields of a "New instance" form."""
    fields: dict[str, object] = {
        name: value for name in CREATE_TEXT if (value := _given(form, name)) is not None
    }
    return form.get("plugin", ""), form.get("instance", "").strip(), fields


def edits(form: Mapping[str, str], inst: Instance) -> dict[str, object]:
    """The PATCH fields of an instance's edit form.

    The form shows the target URL masked (its password never reaches a page), so the masked
    text sent back unchanged means "keep it", not a new URL with ``****`` for a password.
    """
    fields: dict[str, object] = {
        "session": _given(form, "session"),
        "lane_policy": form.get("lane_policy", ""),
        "enabled": form.get("enabled") == "on",
    }
    target = _given(form, "target_url")
    if target is None or target != inst.shown_target_url:
        fields["target_url"] = target
    return fields


def grace_seconds(form: Mapping[str, str], default_hours: float) -> Any:
    """The rotation form's grace, given in hours (blank: the default)."""
    text = _given(form, "grace_hours")
    if text is None:
        return default_hours * HOURS
    try:
        return float(text) * HOURS
    except ValueError as exc:
        raise InvalidInput("the grace must be a number of hours >= 0") from exc
