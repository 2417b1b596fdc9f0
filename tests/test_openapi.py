"""``GET /admin/openapi.json``: a valid OpenAPI 3.1 document naming exactly the admin routes
the app serves, whose schemas fit what the API takes and answers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from conftest import MakeDeadLetters, box_of
from openapi_spec_validator import validate
from starlette.routing import BaseRoute, Mount, Route
from starlette.testclient import TestClient

from ingress_box import instance_rules, mapping_rules
from ingress_box.app import App
from ingress_box.web import openapi

Headers = dict[str, str]
METHODS = ("get", "post", "put", "patch", "delete")


def _operations(routes: list[BaseRoute], prefix: str) -> Iterator[tuple[str, str]]:
    for route in routes:
        if isinstance(route, Mount):
            yield from _operations(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            endpoint = route.endpoint
            methods = (
                [m.lower() for m in route.methods or ()]
                if not isinstance(endpoint, type)
                else [m for m in METHODS if hasattr(endpoint, m)]
            )
            for method in methods:
                if method != "head":
                    yield prefix + route.path_format, method


def _admin_operations(app: App) -> set[tuple[str, str]]:
    """Every (path, method) the admin API mount serves (the dashboard is not the API)."""
    (admin,) = [r for r in app.starlette.routes if isinstance(r, Mount) and r.path == "/admin"]
    return set(_operations(admin.routes, "/admin"))


def test_the_document_is_valid_openapi() -> None:
    """openapi-spec-validator accepts the document."""
    validate(openapi.document())


def test_the_document_names_exactly_the_admin_routes(client: TestClient) -> None:
    """Every admin route and method is described; nothing described is missing from the app."""
    app = client.app
    assert isinstance(app, App)
    served = _admin_operations(app)
    described = {(path, method) for path, ops in openapi.PATHS.items() for method in ops}
    assert served - described == set(), "routes the document does not describe"
    assert described - served == set(), "the document names routes that do not exist"


def test_every_operation_describes_the_error_body() -> None:
    """Each operation answers 401 in the one error shape, and each 4xx/5xx uses it."""
    for path, ops in openapi.PATHS.items():
        for method, op in ops.items():
            assert "401" in op["responses"], (path, method)
            for status, answer in op["responses"].items():
                if status[0] in "45":
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (path, method)


@pytest.mark.parametrize(
    ("schema", "accepted"),
    [
        ("InstanceCreate", {"plugin", "instance", *instance_rules.CREATE_FIELDS}),
        ("InstancePatch", set(instance_rules.PATCH_FIELDS)),
        ("MappingUpsert", set(mapping_rules.UPSERT_FIELDS)),
    ],
)
def test_request_bodies_list_the_fields_the_api_accepts(schema: str, accepted: set[str]) -> None:
    """A request body's properties are the fields the API takes, no more, no fewer."""
    assert set(openapi.SCHEMAS[schema]["properties"]) == accepted


def test_the_document_is_served_with_the_admin_token(
    client: TestClient, admin_headers: Headers
) -> None:
    """GET /admin/openapi.json answers the document with the token, 401 without."""
    assert client.get("/admin/openapi.json").status_code == 401
    answer = client.get("/admin/openapi.json", headers=admin_headers)
    assert answer.status_code == 200 and answer.json() == openapi.document()


def _fits(data: Any, schema: dict[str, Any]) -> None:
    """Validate an answer against a schema of the document (its $refs resolve in it)."""
    root = {**schema, "components": {"schemas": openapi.SCHEMAS}}
    jsonschema.Draft202012Validator(root).validate(data)


def _answer_schema(path: str, method: str, status: str) -> dict[str, Any]:
    schema: dict[str, Any] = openapi.PATHS[path][method]["responses"][status]["content"][
        "application/json"
    ]["schema"]
    return schema


def test_answers_fit_their_schemas(
    client: TestClient, admin_headers: Headers, make_dead_letters: MakeDeadLetters
) -> None:
    """Real answers of the API validate against the schemas the document gives them."""
    created = client.post(
        "/admin/instances",
        headers=admin_headers,
        json={"plugin": "generic", "instance": "main", "target_url": "http://127.0.0.1:9/h"},
    )
    _fits(created.json(), _answer_schema("/admin/instances", "post", "201"))
    (letter,) = make_dead_letters(box_of(client).db, 1)
    mapping = client.put(
        "/admin/mappings",
        headers=admin_headers,
        json={"plugin": "generic", "instance": "main", "session": "s", "chat": "c",
              "conversation": "v"},
    )  # fmt: skip
    _fits(mapping.json(), _answer_schema("/admin/mappings", "put", "200"))
    delivery = client.get("/admin/deliveries", headers=admin_headers).json()["items"][0]["id"]
    item = "/admin/instances/{plugin}/{instance}"
    reads = [
        ("/admin/plugins", "/admin/plugins"),
        ("/admin/instances", "/admin/instances"),
        (item, "/admin/instances/generic/main"),
        (item + "/rejections", "/admin/instances/generic/main/rejections"),
        ("/admin/deliveries", "/admin/deliveries"),
        ("/admin/deliveries/{id}", f"/admin/deliveries/{delivery}"),
        ("/admin/dlq", "/admin/dlq"),
        ("/admin/mappings", "/admin/mappings"),
        ("/admin/mappings/{id}", f"/admin/mappings/{mapping.json()['id']}"),
    ]  # fmt: skip
    for described, real in reads:
        answer = client.get(real, headers=admin_headers)
        assert answer.status_code == 200, (real, answer.text)
        _fits(answer.json(), _answer_schema(described, "get", "200"))
    redriven = client.post("/admin/dlq/redrive", headers=admin_headers, json={"ids": [letter]})
    _fits(redriven.json(), _answer_schema("/admin/dlq/redrive", "post", "200"))
    missing = client.get("/admin/instances/generic/nope", headers=admin_headers)
    _fits(missing.json(), _answer_schema("/admin/instances/{plugin}/{instance}", "get", "404"))
