"""The admin API described as an OpenAPI 3.1 document, served at ``GET /admin/openapi.json``.

Written as data, one entry per path and method, beside the schemas of what they take and
answer. A test walks the admin routes of the app and fails when a route or method is missing
here or this names one that does not exist, and checks each request body's fields against what
:mod:`ingress_box.instance_rules` and :mod:`ingress_box.mapping_rules` accept.
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..listing import FORMATS as EXPORT_FORMATS
from ..listing import MAX_ROWS as MAX_EXPORT_ROWS
from ..listing import MAX_SEARCH_CHARS
from ..store.deliveries import STATES as DELIVERY_STATES
from ..store.instances import INSTANCE_ID, LANE_POLICIES
from ..store.mappings import STATES as MAPPING_STATES
from ..store.pages import MAX_LIMIT

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema) -> Schema:
    return {"content": {"application/json": {"schema": schema}}}


def _answer(description: str, schema: Schema | None = None) -> Schema:
    return {"description": description, **(_json(schema) if schema is not None else {})}


def _nullable(kind: str, **more: Any) -> Schema:
    return {"type": [kind, "null"], **more}


def _object(required: tuple[str, ...] = (), **properties: Schema) -> Schema:
    return {"type": "object", "required": list(required), "properties": properties}


def _page(item: str) -> Schema:
    return _object(
        ("items", "next_cursor"),
        items={"type": "array", "items": _ref(item)},
        next_cursor=_nullable("string", description="pass as ?cursor= for the next page"),
    )


TEXT: Schema = {"type": "string", "minLength": 1}
TIME: Schema = {"type": "number", "description": "seconds since the epoch (UTC)"}
MAYBE_TIME = _nullable("number", description="seconds since the epoch (UTC)")
MASKED: Schema = _nullable("string", description="masked: only the last characters show")

SCHEMAS: dict[str, Schema] = {
    "Error": _object(
        ("error",),
        error=_object(
            ("code", "message"),
            code={"type": "string", "examples": ["invalid_input", "not_found"]},
            message={"type": "string"},
        ),
    ),
    "Plugin": _object(
        ("id", "name", "routes"),
        id={"type": "string"},
        name={"type": "string"},
        description={"type": "string"},
        handler={"type": "string"},
        secret_issued_by_provider={"type": "boolean"},
        secret_from_provider=_nullable("string", description="where the provider shows it"),
        routes={
            "type": "array",
            "items": _object(
                ("name", "scheme"),
                name={"type": "string"},
                scheme={"type": "string"},
                methods=_nullable("array", items={"type": "string"}),
                challenge={"type": "boolean"},
                max_body_bytes=_nullable("integer"),
                dedup={"type": "object"},
                conversation={"type": "object"},
                event_type=_nullable("object"),
            ),
        },
    ),
    "Instance": _object(
        ("plugin", "instance", "enabled", "handler", "lane_policy"),
        plugin={"type": "string"},
        instance={"type": "string"},
        enabled={"type": "boolean"},
        handler={"type": "string"},
        target_url=_nullable("string", description="its password masked"),
        session=_nullable("string"),
        lane_policy={"enum": list(LANE_POLICIES)},
        config={"type": "object"},
        secret=MASKED,
        outbound_secret=MASKED,
        verify_token=MASKED,
        previous_secret=MASKED,
        previous_secret_until=MAYBE_TIME,
        created_at=TIME,
        updated_at=TIME,
        health=_ref("Health"),
    ),
    "Health": _object(
        (
            "state",
            "last_success_at",
            "last_failure_at",
            "failing_since",
            "consecutive_failures",
            "pending",
            "dead_letters_open",
        ),
        state={"enum": ["ok", "failing", "idle", "disabled"]},
        reason=_nullable("string", description="why, in a few words (null when ok)"),
        problems={"type": "array", "items": {"type": "string"}, "examples": [["no target_url"]]},
        last_error=_nullable("string"),
        last_success_at=MAYBE_TIME,
        last_failure_at=MAYBE_TIME,
        failing_since=MAYBE_TIME,
        consecutive_failures={"type": "integer"},
        pending={"type": "integer"},
        dead_letters_open={"type": "integer"},
    ),
    "TestResult": _object(
        ("delivery", "outcome", "status_code", "error", "duration_ms"),
        delivery={"type": "string", "description": "the test event's delivery id"},
        outcome={"enum": ["delivered", "retry", "dead", None]},
        status_code=_nullable("integer"),
        error=_nullable("string"),
        duration_ms=_nullable("number"),
    ),
    "InstanceCreate": _object(
        ("plugin", "instance"),
        plugin={"type": "string", "description": "a plugin id (GET /admin/plugins)"},
        instance={"type": "string", "pattern": f"^{INSTANCE_ID.pattern}$"},
        target_url={**_nullable("string"), "format": "uri"},
        secret={**TEXT, "description": "the provider's secret; generated when not given"},
        verify_token={**TEXT, "description": "a GET challenge's token; generated if not given"},
        session=_nullable("string"),
        config={"type": "object"},
        lane_policy={"enum": list(LANE_POLICIES)},
        handler={"type": "string"},
        enabled={"type": "boolean"},
    ),
    "InstanceCreated": {
        "allOf": [
            _ref("Instance"),
            _object(
                ("secret", "verify_token", "outbound_secret", "ingress_url", "warnings"),
                secret={"type": "string", "description": "shown this once"},
                verify_token={"type": "string", "description": "shown this once"},
                outbound_secret={"type": "string", "description": "whsec_..., shown this once"},
                ingress_url=_nullable("string"),
                ingress_urls={"type": "object", "additionalProperties": {"type": "string"}},
                warnings={
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "what will not work as it is (a generated secret the "
                    "provider never uses, no target_url)",
                },
            ),
        ]
    },
    "InstancePatch": _object(
        target_url=_nullable("string"),
        session=_nullable("string"),
        config={"type": "object"},
        lane_policy={"enum": list(LANE_POLICIES)},
        handler={"type": "string"},
        verify_token=_nullable("string"),
        enabled={"type": "boolean"},
    ),
    "Rotate": _object(
        secret={**TEXT, "description": "the new secret; generated when not given"},
        grace_seconds={
            "type": "number",
            "minimum": 0,
            "description": "how long the old secret keeps verifying (default: the rotation grace)",
        },
    ),
    "Rotated": {
        "allOf": [
            _ref("Instance"),
            _object(
                ("secret", "previous_secret_valid_until"),
                secret={"type": "string", "description": "shown this once"},
                previous_secret_valid_until=MAYBE_TIME,
            ),
        ]
    },
    "Rejection": _object(
        ("received_at", "route", "status", "reason"),
        received_at=TIME,
        route={"type": "string"},
        status={"type": "integer"},
        reason={"type": "string"},
    ),
    "Kept": _object(
        ("id", "received_at", "route", "status", "reason"),
        id={"type": "integer", "description": "pass to .../rejections/{id}/admit"},
        received_at=TIME,
        route={"type": "string"},
        status={"type": "integer"},
        reason={"type": "string"},
    ),
    "Rejections": _object(
        ("items", "next_cursor", "recent"),
        items={
            "type": "array",
            "items": _ref("Kept"),
            "description": "the quarantine: refusals a right secret could undo, on disk",
        },
        next_cursor=_nullable("string", description="pass as ?cursor= for the next page"),
        recent={
            "type": "array",
            "items": _ref("Rejection"),
            "description": "the latest refusals for any reason (this process's memory)",
        },
    ),
    "KeptDetail": {
        **_object(
            ("id", "received_at", "route", "status", "reason", "method", "subpath", "headers"),
            id={"type": "integer"},
            received_at=TIME,
            route={"type": "string"},
            status={"type": "integer"},
            reason={"type": "string"},
            method={"type": "string"},
            subpath={"type": "string"},
            headers={"type": "object", "additionalProperties": {"type": "string"}},
            body={"type": "string", "description": "when the body is UTF-8"},
            body_base64={"type": "string", "description": "when it is not"},
        ),
    },
    "Admitted": _object(
        ("admitted", "duplicate", "delivery"),
        admitted={"const": True},
        duplicate={"type": "boolean", "description": "already accepted: no second delivery"},
        delivery=_ref("Delivery"),
    ),
    "BridgeNew": _object(
        ("id", "gateway", "chatwoot"),
        id={"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
        gateway=_object(
            ("kind", "url", "session"),
            kind={"enum": ["waha", "evolution", "gowa", "openwa"]},
            url={"type": "string", "description": "the gateway's API base URL"},
            api_key={"type": "string", "description": "its API key (a secret)"},
            session={"type": "string", "description": "WAHA session, Evolution instance, ..."},
            secret={"type": "string", "description": "its webhook secret (generated if absent)"},
        ),
        chatwoot=_object(
            ("url", "account_id", "inbox_id", "api_token"),
            url={"type": "string"},
            account_id={"type": "integer"},
            inbox_id={"type": "integer", "description": "the API inbox"},
            api_token={"type": "string", "description": "a user's or agent bot's token"},
            secret={"type": "string", "description": "its webhooks' secret (generated if absent)"},
        ),
        options={"type": "object", "description": 'e.g. {"groups": "skip"}'},
    ),
    "Bridge": {
        "type": "object",
        "required": ["id", "gateway", "chatwoot", "gateway_ingress_url", "chatwoot_ingress_url"],
        "description": "secrets masked; on create, gateway.secret and chatwoot.secret in full",
        "properties": {
            "id": {"type": "string"},
            "gateway": {"type": "object"},
            "chatwoot": {"type": "object"},
            "options": {"type": "object"},
            "created_at": TIME,
            "gateway_ingress_url": {"type": "string"},
            "chatwoot_ingress_url": {"type": "string"},
            "instances": {"type": "array", "items": {"type": "object"}},
            "mappings": {"type": "integer", "description": "conversation mappings of the bridge"},
            "setup": {
                "type": "array",
                "items": {"type": "string"},
                "description": "on create: what to paste where",
            },
        },
    },
    "Replay": _object(
        ("since",),
        since={
            "type": ["number", "string"],
            "description": "received at or after: unix seconds or ISO 8601 (UTC if no offset)",
        },
        until={"type": ["number", "string"], "description": "received before"},
        plugin={"type": "string"},
        instance={"type": "string"},
        state={"enum": ["delivered", "dead"]},
        limit={"type": "integer", "minimum": 1},
    ),
    "Replaying": _object(("id", "state"), id={"type": "string"}, state={"const": "pending"}),
    "Replayed": _object(
        ("replayed", "remaining", "pruned"),
        replayed={"type": "integer"},
        remaining={"type": "integer", "description": "left in the range (past the limit)"},
        pruned={"type": "integer", "description": "skipped: their body was dropped"},
    ),
    "Unmatched": _object(
        ("items", "next_cursor"),
        items={
            "type": "array",
            "items": _object(
                ("prefix", "count"), prefix={"type": "string"}, count={"type": "integer"}
            ),
        },
        next_cursor={"type": "null"},
    ),
    "Delivery": _object(
        ("id", "plugin", "instance", "route", "state", "attempts", "received_at"),
        id={"type": "string", "description": "the webhook-id targets get"},
        plugin={"type": "string"},
        instance={"type": "string"},
        route={"type": "string"},
        event_type=_nullable("string", description="where the plugin knows one"),
        provider_delivery_id={"type": "string"},
        conversation=_nullable("string"),
        state={"enum": list(DELIVERY_STATES)},
        attempts={"type": "integer"},
        received_at=TIME,
        delivered_at=MAYBE_TIME,
        last_error=_nullable("string"),
        note=_nullable("string"),
        content_type=_nullable("string"),
        size={"type": "integer"},
        next_attempt_at=MAYBE_TIME,
        leased={"type": "boolean"},
        parked={"type": "boolean"},
    ),
    "DeliveryDetail": {
        "allOf": [
            _ref("Delivery"),
            _object(
                ("headers", "body_pruned", "attempt_log"),
                headers={"type": "object", "additionalProperties": {"type": "string"}},
                body_pruned={"type": "boolean"},
                body={"type": "string", "description": "when the body is UTF-8"},
                body_base64={"type": "string", "description": "when it is not"},
                attempt_log={
                    "type": "array",
                    "items": _object(
                        ("attempt", "started_at", "outcome"),
                        attempt={"type": "integer"},
                        started_at=TIME,
                        duration_ms={"type": "number"},
                        outcome={"type": "string"},
                        status_code=_nullable("integer"),
                        error=_nullable("string"),
                        response=_nullable(
                            "string", description="the start of the answer's body (1 KiB)"
                        ),
                    ),
                },
            ),
        ]
    },
    "DeadLetter": _object(
        ("id", "delivery", "plugin", "instance", "attempts", "created_at"),
        id={"type": "string"},
        delivery={"type": "string", "description": "the delivery's id"},
        plugin={"type": "string"},
        instance={"type": "string"},
        attempts={"type": "integer"},
        last_error=_nullable("string"),
        created_at=TIME,
        route={"type": "string"},
        conversation=_nullable("string"),
        provider_delivery_id={"type": "string"},
    ),
    "Redrive": _object(
        plugin={"type": "string"},
        instance={"type": "string"},
        ids={"type": "array", "items": {"type": "string"}, "maxItems": MAX_LIMIT},
        limit={"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100},
    ),
    "Redriven": _object(
        ("redriven", "remaining"), redriven={"type": "integer"}, remaining={"type": "integer"}
    ),
    "Mapping": _object(
        ("id", "plugin", "instance", "session", "chat", "conversation", "state"),
        id={"type": "integer"},
        plugin={"type": "string"},
        instance={"type": "string"},
        session={"type": "string"},
        chat={"type": "string"},
        conversation={"type": "string"},
        state={"enum": list(MAPPING_STATES)},
        metadata={"type": "object"},
        created_at=TIME,
        updated_at=TIME,
    ),
    "MappingUpsert": _object(
        ("plugin", "instance", "session", "chat", "conversation"),
        plugin={"type": "string"},
        instance={"type": "string"},
        session=TEXT,
        chat=TEXT,
        conversation=TEXT,
        state={"enum": list(MAPPING_STATES), "default": "bot"},
        metadata={"type": "object"},
    ),
    "MappingUpserted": {
        "allOf": [
            _ref("Mapping"),
            _object(
                ("created",),
                created={"type": "boolean", "description": "false: converged on the row there"},
            ),
        ]
    },
    "MappingState": _object(
        ("state",), state={"enum": list(MAPPING_STATES)}, metadata={"type": "object"}
    ),
}

# Every admin answer may be one of these (the guard runs before the route).
GUARD = {
    "401": _answer("no or a wrong admin token", _ref("Error")),
    "429": _answer("too many wrong tokens from this address (Retry-After)", _ref("Error")),
}


def _query(name: str, description: str, schema: Schema | None = None) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _path(*names: str, kind: str = "string") -> list[Schema]:
    return [{"name": n, "in": "path", "required": True, "schema": {"type": kind}} for n in names]


PAGE = [
    _query("limit", "at most this many items", {"type": "integer", "minimum": 1}),
    _query("cursor", "next_cursor of the previous page"),
]
KEY = _path("plugin", "instance")


_MOMENT = "unix seconds or ISO 8601 (2026-12-01T10:00:00Z; UTC without an offset)"
DELIVERY_FILTERS = [
    _query("plugin", "only this plugin's"),
    _query("instance", "only this instance's"),
    _query("state", "only in this state", {"enum": list(DELIVERY_STATES)}),
    _query("event_type", "only events of this type", {"type": "string", "maxLength": 128}),
    _query("since", f"received at or after this: {_MOMENT}"),
    _query("until", f"received before this: {_MOMENT}"),
    _query(
        "q",
        "words the body holds, in this order (a phrase, never query syntax); only bodies "
        "still kept that are UTF-8 text",
        {"type": "string", "maxLength": MAX_SEARCH_CHARS},
    ),
]


def _op(
    summary: str,
    answers: dict[str, Schema],
    *,
    parameters: list[Schema] | None = None,
    body: str | None = None,
    errors: tuple[str, ...] = (),
) -> Schema:
    described = {
        "400": "invalid input (a bad field, id or filter)",
        "404": "no such item",
        "409": "it exists, the mapping conflicts with another chat, or the delivery is still "
        "pending or its body was pruned",
        "503": "storage cannot commit now (Retry-After)",
    }
    responses = {**answers, **{e: _answer(described[e], _ref("Error")) for e in errors}, **GUARD}
    op: Schema = {"summary": summary, "responses": responses}
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {"required": True, **_json(_ref(body))}
    return op


NO_CONTENT = {"204": _answer("done")}

PATHS: dict[str, dict[str, Schema]] = {
    "/admin/openapi.json": {
        "get": _op("this document", {"200": _answer("OpenAPI 3.1", {"type": "object"})}),
    },
    "/admin/plugins": {
        "get": _op(
            "the loaded plugins and their routes",
            {"200": _answer("one page, all of them", _page("Plugin"))},
        ),
    },
    "/admin/instances": {
        "get": _op(
            "instances (secrets masked)",
            {"200": _answer("a page", _page("Instance"))},
            parameters=[_query("plugin", "only this plugin's"), *PAGE],
            errors=("400",),
        ),
        "post": _op(
            "create an instance; its secrets are shown this once",
            {"201": _answer("created", _ref("InstanceCreated"))},
            body="InstanceCreate",
            errors=("400", "409", "503"),
        ),
    },
    "/admin/instances/{plugin}/{instance}": {
        "get": _op(
            "one instance (secrets masked)",
            {"200": _answer("the instance", _ref("Instance"))},
            parameters=KEY,
            errors=("404",),
        ),
        "patch": _op(
            "change an instance (secrets change through rotate-secret)",
            {"200": _answer("changed", _ref("Instance"))},
            parameters=KEY,
            body="InstancePatch",
            errors=("400", "404", "503"),
        ),
        "delete": _op(
            "delete an instance: its ingress URL answers 404",
            NO_CONTENT,
            parameters=KEY,
            errors=("404", "503"),
        ),
    },
    "/admin/instances/{plugin}/{instance}/test": {
        "post": _op(
            "send a test event through the outbox and answer its first attempt's outcome",
            {
                "200": _answer("the first attempt ended", _ref("TestResult")),
                "202": _answer("sent; its first attempt has not ended yet", _ref("TestResult")),
                "409": _answer("no_target: the instance has nowhere to deliver", _ref("Error")),
            },
            parameters=KEY,
            errors=("404", "503"),
        ),
    },
    "/admin/instances/{plugin}/{instance}/rotate-secret": {
        "post": _op(
            "a new secret; the previous one verifies for a grace window",
            {"200": _answer("rotated", _ref("Rotated"))},
            parameters=KEY,
            body="Rotate",
            errors=("400", "404", "503"),
        ),
    },
    "/admin/instances/{plugin}/{instance}/rejections": {
        "get": _op(
            "the kept refusals (quarantine), newest first, and the latest refusals of any kind",
            {"200": _answer("a page", _ref("Rejections"))},
            parameters=[*KEY, *PAGE],
            errors=("400", "404"),
        ),
    },
    "/admin/instances/{plugin}/{instance}/rejections/{id}": {
        "get": _op(
            "one kept request, its credentials masked",
            {"200": _answer("the kept request", _ref("KeptDetail"))},
            parameters=[*KEY, *_path("id", kind="integer")],
            errors=("404",),
        ),
    },
    "/admin/instances/{plugin}/{instance}/rejections/{id}/admit": {
        "post": _op(
            "verify a kept request again with the secrets of now; accept it if it passes",
            {
                "200": _answer("admitted", _ref("Admitted")),
                "409": _answer("still_rejected: it does not verify now", _ref("Error")),
            },
            parameters=[*KEY, *_path("id", kind="integer")],
            errors=("404", "503"),
        ),
    },
    "/admin/bridges": {
        "get": _op("every bridge, secrets masked", {"200": _answer("all", _page("Bridge"))}),
        "post": _op(
            "a bridge and its two instances; secrets shown this once",
            {"201": _answer("created", _ref("Bridge"))},
            body="BridgeNew",
            errors=("400", "409", "503"),
        ),
    },
    "/admin/bridges/{id}": {
        "get": _op(
            "one bridge, its instances' URLs and mapping count",
            {"200": _answer("the bridge", _ref("Bridge"))},
            parameters=_path("id"),
            errors=("404",),
        ),
        "delete": _op(
            "remove the bridge and its two instances",
            NO_CONTENT,
            parameters=_path("id"),
            errors=("404", "503"),
        ),
    },
    "/admin/unmatched": {
        "get": _op(
            "calls to ingress URLs that named nothing, per prefix, most first",
            {"200": _answer("every prefix counted since start-up", _ref("Unmatched"))},
        ),
    },
    "/admin/deliveries": {
        "get": _op(
            "deliveries, newest first",
            {"200": _answer("a page", _page("Delivery"))},
            parameters=[*DELIVERY_FILTERS, *PAGE],
            errors=("400",),
        ),
    },
    "/admin/deliveries/export": {
        "get": _op(
            "the deliveries the filters select, newest first, as a file (the list's fields)",
            {
                "200": {
                    "description": (
                        f"CSV with a header row, or a JSON array; at most {MAX_EXPORT_ROWS} rows"
                    ),
                    "content": {
                        "text/csv": {"schema": {"type": "string"}},
                        "application/json": {
                            "schema": {"type": "array", "items": _ref("Delivery")}
                        },
                    },
                }
            },
            parameters=[
                {
                    "name": "format",
                    "in": "query",
                    "required": True,
                    "schema": {"enum": list(EXPORT_FORMATS)},
                },
                *DELIVERY_FILTERS,
                _query(
                    "limit",
                    "at most this many",
                    {"type": "integer", "minimum": 1, "maximum": MAX_EXPORT_ROWS},
                ),
            ],
            errors=("400",),
        ),
    },
    "/admin/deliveries/{id}/replay": {
        "post": _op(
            "send a delivered or dead delivery again, same webhook-id, to the back of its lane",
            {"202": _answer("back in the outbox", _ref("Replaying"))},
            parameters=_path("id"),
            errors=("404", "409", "503"),
        ),
    },
    "/admin/replay": {
        "post": _op(
            "send the deliveries received in a time range again, oldest first, in batches",
            {"200": _answer("replayed, remaining, pruned", _ref("Replayed"))},
            body="Replay",
            errors=("400", "503"),
        ),
    },
    "/admin/deliveries/{id}": {
        "get": _op(
            "one delivery with its headers, body and every attempt",
            {"200": _answer("the delivery", _ref("DeliveryDetail"))},
            parameters=_path("id"),
            errors=("404",),
        ),
    },
    "/admin/dlq": {
        "get": _op(
            "open dead letters",
            {"200": _answer("a page", _page("DeadLetter"))},
            parameters=[
                _query("plugin", "only this plugin's"),
                _query("instance", "only this instance's"),
                *PAGE,
            ],
            errors=("400",),
        ),
    },
    "/admin/dlq/redrive": {
        "post": _op(
            "put dead letters back in the outbox, by ids or filters, in bounded batches",
            {"200": _answer("how many were redriven, and how many match still", _ref("Redriven"))},
            body="Redrive",
            errors=("400", "503"),
        ),
    },
    "/admin/dlq/{id}": {
        "delete": _op(
            "discard one dead letter",
            NO_CONTENT,
            parameters=_path("id"),
            errors=("404", "503"),
        ),
    },
    "/admin/mappings": {
        "get": _op(
            "conversation mappings",
            {"200": _answer("a page", _page("Mapping"))},
            parameters=[
                *(
                    _query(name, f"only this {name}")
                    for name in ("plugin", "instance", "session", "chat", "conversation")
                ),
                _query("state", "only in this state", {"enum": list(MAPPING_STATES)}),
                *PAGE,
            ],
            errors=("400",),
        ),
        "put": _op(
            "upsert a mapping on (session, chat, plugin, instance)",
            {"200": _answer("made or converged", _ref("MappingUpserted"))},
            body="MappingUpsert",
            errors=("400", "409", "503"),
        ),
    },
    "/admin/mappings/{id}": {
        "get": _op(
            "one mapping",
            {"200": _answer("the mapping", _ref("Mapping"))},
            parameters=_path("id", kind="integer"),
            errors=("404",),
        ),
        "patch": _op(
            "change its handover state",
            {"200": _answer("changed", _ref("Mapping"))},
            parameters=_path("id", kind="integer"),
            body="MappingState",
            errors=("400", "404", "503"),
        ),
        "delete": _op(
            "delete a mapping, freeing its conversation",
            NO_CONTENT,
            parameters=_path("id", kind="integer"),
            errors=("404", "503"),
        ),
    },
}


def document() -> Schema:
    """The whole OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ingress-box admin API",
            "version": __version__,
            "description": "JSON in and out; every error is "
            '{"error": {"code": "...", "message": "..."}}.',
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"adminToken": []}],
        "paths": PATHS,
    }
