"""Plugin manifests: the built-ins match the contract, custom folders load, bad files are named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from signers import sign_chatwoot

from ingress_box.errors import ConfigError, ManifestError
from ingress_box.plugins import (
    Ack,
    Challenge,
    Condition,
    Plugin,
    Route,
    load_manifest_file,
    load_registry,
    parse_manifest,
    plugin_to_json,
)
from ingress_box.signatures import HmacSpec, SignedRequest, verify

BUILTINS = {
    "chatwoot": ("events", "hmac"),
    "meta": ("webhook", "hmac"),
    "twilio": ("messages", "twilio"),
    "standard-webhooks": ("events", "standard-webhooks"),
    "supabase": ("events", "standard-webhooks"),
    "github": ("events", "hmac"),
    "stripe": ("events", "stripe"),
    "telegram": ("updates", "shared-secret"),
    "generic": ("events", "hmac"),
    "waha": ("events", "hmac"),
    "evolution": ("events", "shared-secret"),
    "gowa": ("events", "hmac"),
    "openwa": ("events", "hmac"),
}
CUSTOM_TOML = """
id = "acme"
name = "Acme"

[routes.hooks]
dedup = { json_pointer = "/event/id" }

[routes.hooks.verify]
scheme = "hmac"
header = "X-Acme-Signature"
"""


def route_of(plugin_id: str) -> Route:
    plugin = load_registry().get(plugin_id)
    assert plugin is not None
    return next(iter(plugin.routes.values()))


def manifest(**overrides: Any) -> dict[str, Any]:
    """A valid JSON-shaped manifest with top-level keys replaced."""
    data: dict[str, Any] = {
        "id": "acme",
        "name": "Acme",
        "routes": {"hooks": {"verify": {"scheme": "hmac", "header": "X-Sig"}}},
    }
    data.update(overrides)
    return data


def route_manifest(**route: Any) -> dict[str, Any]:
    """A valid manifest whose one route has the given keys added."""
    return manifest(routes={"hooks": {"verify": {"scheme": "hmac", "header": "X-Sig"}, **route}})


def error_of(data: object) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data, "acme.json")
    return info.value


# --- built-ins ------------------------------------------------------------------------------


def test_all_thirteen_builtins_load_sorted_by_id() -> None:
    """The registry holds exactly the contract's thirteen plugins, sorted by id."""
    assert [p.id for p in load_registry().all()] == sorted(BUILTINS)


@pytest.mark.parametrize("plugin_id", sorted(BUILTINS))
def test_builtin_has_the_contract_route_and_scheme(plugin_id: str) -> None:
    """Each built-in has its one route with the contract's verification scheme."""
    plugin = load_registry().get(plugin_id)
    assert plugin is not None
    route_name, scheme = BUILTINS[plugin_id]
    assert list(plugin.routes) == [route_name]
    assert plugin.routes[route_name].verify.scheme == scheme
    assert plugin.handler == "forward" and plugin.source == f"builtin:{plugin_id}.toml"


def test_chatwoot_signs_timestamp_dot_body() -> None:
    """chatwoot: sha256= over "{timestamp}.{body}" with a 300 s window (or the URL's secret);
    a message_created is its message id in its account, other events their delivery header."""
    route = route_of("chatwoot")
    assert route.verify == HmacSpec(
        header="x-chatwoot-signature",
        prefix="sha256=",
        template="{timestamp}.{rawBody}",
        timestamp_header="x-chatwoot-timestamp",
        tolerance_seconds=300,
        url_secret_param="secret",
    )
    assert route.dedup_headers == ()
    assert route.dedup_json_pointer == "/id"
    assert route.dedup_scope == "/account/id"
    assert route.dedup_when == Condition("/event", ("message_created",))
    assert route.dedup_fallback_headers == ("x-chatwoot-delivery",)
    assert route.conversation_pointers == ("/conversation/id",)


def test_chatwoot_manifest_verifies_a_chatwoot_request() -> None:
    """The shipped chatwoot spec accepts a request signed the way Chatwoot signs."""
    body, ts = b'{"event":"message_created"}', 1_700_000_000
    req = SignedRequest("POST", "", sign_chatwoot("k", body, at=ts), body)
    assert verify(route_of("chatwoot").verify, ["k"], req, ts).ok


def test_github_manifest_verifies_the_documented_example() -> None:
    """The shipped github spec accepts GitHub's documented example."""
    sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    req = SignedRequest("POST", "", {"x-hub-signature-256": sig}, b"Hello, World!")
    assert verify(route_of("github").verify, ["It's a Secret to Everybody"], req, 0).ok
    assert route_of("github").dedup_headers == ("x-github-delivery",)


def test_meta_has_the_challenge_body_dedup_and_200_ack() -> None:
    """meta: GET handshake, body-hash dedup, sender then status recipient, 200 ack."""
    route = route_of("meta")
    assert route.challenge == Challenge() and route.dedup_body and route.ack == Ack(status=200)
    assert route.conversation_pointers == (
        "/entry/0/changes/0/value/messages/0/from",
        "/entry/0/changes/0/value/statuses/0/recipient_id",
    )
    assert route.methods is not None and "GET" in route.methods


def test_twilio_acks_with_empty_twiml() -> None:
    """twilio: 200 text/xml empty Response, idempotency-token dedup, From as conversation."""
    route = route_of("twilio")
    assert route.ack == Ack(
        200, b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>', "text/xml"
    )
    assert route.dedup_headers == ("i-twilio-idempotency-token",) and not route.dedup_body
    assert route.conversation_form_fields == ("From",)


def test_standard_webhooks_dedups_on_webhook_id_or_svix_id() -> None:
    """standard-webhooks dedups on webhook-id, then svix-id."""
    assert route_of("standard-webhooks").dedup_headers == ("webhook-id", "svix-id")


def test_supabase_dedups_on_the_body() -> None:
    """supabase re-mints webhook-id on retries, so it dedups on the body hash."""
    route = route_of("supabase")
    assert route.dedup_body and route.dedup_headers == ()


def test_stripe_dedups_on_the_event_id() -> None:
    """stripe dedups on the JSON pointer /id."""
    assert route_of("stripe").dedup_json_pointer == "/id"


def test_telegram_uses_the_secret_token_header() -> None:
    """telegram: shared-secret header, /update_id dedup, chat id conversation."""
    route = route_of("telegram")
    assert getattr(route.verify, "header", None) == "x-telegram-bot-api-secret-token"
    assert route.dedup_json_pointer == "/update_id"
    assert route.conversation_pointers == ("/message/chat/id",)


def test_generic_uses_x_signature_x_delivery_and_x_conversation() -> None:
    """generic: X-Signature sha256= (or sha512= over the id too), X-Delivery dedup,
    X-Conversation header."""
    route = route_of("generic")
    signed_id = HmacSpec(
        header="x-signature",
        algorithm="sha512",
        prefix="sha512=",
        template="{id}\n{rawBody}",
        id_header="x-delivery",
    )
    assert route.verify == HmacSpec(header="x-signature", prefix="sha256=", variant=signed_id)
    assert route.dedup_headers == ("x-delivery",)
    assert route.conversation_headers == ("x-conversation",)


def test_every_builtin_says_where_its_url_goes() -> None:
    """Each built-in's setup lines name its ingress URL, with the instance's URL put in."""
    for plugin in load_registry().all():
        url = f"https://box.example/ingress/{plugin.id}/main/x"
        lines = plugin.setup_for(url)
        assert lines and any(url in line for line in lines), plugin.id
        assert not any("{url}" in line for line in lines), plugin.id


def test_setup_must_be_a_list_of_strings() -> None:
    """A setup that is not a list of strings names the field."""
    verify = {"scheme": "hmac", "header": "X-Sig"}
    data = {"id": "x", "name": "X", "setup": "paste it", "routes": {"r": {"verify": verify}}}
    with pytest.raises(ManifestError, match="setup"):
        parse_manifest(data, "x.toml")


def test_plugin_to_json_shape() -> None:
    """plugin_to_json lists id, name, description, handler, where the provider's secret is,
    and each route's summary."""
    plugin = load_registry().get("meta")
    assert plugin is not None
    data = plugin_to_json(plugin)
    assert set(data) == {
        "id",
        "name",
        "description",
        "handler",
        "secret_issued_by_provider",
        "secret_from_provider",
        "routes",
    }
    assert data["secret_issued_by_provider"] is True
    assert "App secret" in data["secret_from_provider"]
    assert data["routes"] == [
        {
            "name": "webhook",
            "scheme": "hmac",
            "methods": ["GET", "POST"],
            "challenge": True,
            "max_body_bytes": None,
            "dedup": {
                "headers": [],
                "json_pointer": None,
                "body": True,
                "scope_json_pointer": None,
                "when": None,
                "fallback_headers": [],
            },
            "redact_json_pointers": [],
            "event_type": {
                "headers": [],
                "json_pointers": ["/entry/0/changes/0/field"],
                "json_keys": [],
                "form_fields": [],
            },
            "conversation": {
                "headers": [],
                "form_fields": [],
                "json_pointers": list(route_of("meta").conversation_pointers),
                "avoid_suffixes": [],
            },
        }
    ]
    json.dumps(data)


# --- custom plugins -------------------------------------------------------------------------


def test_custom_toml_plugin_loads_from_the_plugins_dir(tmp_path: Path) -> None:
    """A .toml file in the plugins folder adds a plugin next to the built-ins."""
    (tmp_path / "acme.toml").write_text(CUSTOM_TOML)
    plugin = load_registry(tmp_path).get("acme")
    assert isinstance(plugin, Plugin) and plugin.source == str(tmp_path / "acme.toml")
    assert plugin.routes["hooks"].dedup_json_pointer == "/event/id"


def test_custom_json_plugin_loads_from_the_plugins_dir(tmp_path: Path) -> None:
    """A .json file with the same structure loads too."""
    data = route_manifest(
        ack={"status": 200, "body": "ok", "content_type": "text/plain"},
        max_body_bytes=0,
        methods=["post"],
    )
    (tmp_path / "acme.json").write_text(json.dumps(data))
    route = load_manifest_file(tmp_path / "acme.json").routes["hooks"]
    assert route.ack == Ack(200, b"ok", "text/plain")
    assert route.max_body_bytes == 0 and route.methods == ("POST",)


def test_other_files_in_the_plugins_dir_are_ignored(tmp_path: Path) -> None:
    """README files and editor dotfiles are not manifests."""
    (tmp_path / "README.md").write_text("# my plugins")
    (tmp_path / ".acme.toml").write_text("not = [toml")
    assert len(load_registry(tmp_path).all()) == len(BUILTINS)


def test_custom_plugin_may_not_reuse_a_builtin_id(tmp_path: Path) -> None:
    """A custom manifest with a built-in id fails, naming the file and the id field."""
    (tmp_path / "mine.toml").write_text(CUSTOM_TOML.replace('"acme"', '"github"'))
    with pytest.raises(ManifestError) as info:
        load_registry(tmp_path)
    assert (info.value.file, info.value.field) == (str(tmp_path / "mine.toml"), "id")


def test_two_custom_plugins_may_not_share_an_id(tmp_path: Path) -> None:
    """The second file with the same id fails."""
    (tmp_path / "a.toml").write_text(CUSTOM_TOML)
    (tmp_path / "b.json").write_text(json.dumps(manifest()))
    with pytest.raises(ManifestError) as info:
        load_registry(tmp_path)
    assert info.value.file == str(tmp_path / "b.json") and "a.toml" in info.value.problem


def test_missing_plugins_dir_is_a_config_error(tmp_path: Path) -> None:
    """A plugins folder that does not exist fails start-up."""
    with pytest.raises(ConfigError):
        load_registry(tmp_path / "nope")


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    """A file that is not TOML fails with its path."""
    (tmp_path / "broken.toml").write_text('id = "x\n')
    with pytest.raises(ManifestError) as info:
        load_registry(tmp_path)
    assert info.value.file == str(tmp_path / "broken.toml")


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (manifest(colour="red"), "colour"),
        (manifest(id="Bad Id"), "id"),
        (manifest(id=7), "id"),
        (manifest(name=""), "name"),
        (manifest(handler="not a handler!"), "handler"),
        (manifest(routes={}), "routes"),
        (manifest(routes={"Bad/Route": {}}), "routes.Bad/Route"),
        (manifest(routes={"hooks": {}}), "routes.hooks.verify"),
        (route_manifest(retries=3), "routes.hooks.retries"),
        (route_manifest(methods="POST"), "routes.hooks.methods"),
        (route_manifest(methods=[]), "routes.hooks.methods"),
        (route_manifest(max_body_bytes=-1), "routes.hooks.max_body_bytes"),
        (route_manifest(max_body_bytes="1MB"), "routes.hooks.max_body_bytes"),
        (route_manifest(ack={"status": 302}), "routes.hooks.ack.status"),
        (route_manifest(ack={"status": 204, "body": "x"}), "routes.hooks.ack.body"),
        (route_manifest(ack={"code": 200}), "routes.hooks.ack.code"),
        (route_manifest(dedup={"json_pointer": "id"}), "routes.hooks.dedup.json_pointer"),
        (route_manifest(dedup={"json_pointer": "/a~2b"}), "routes.hooks.dedup.json_pointer"),
        (route_manifest(dedup={"header": "X-A", "headers": ["X-B"]}), "routes.hooks.dedup.headers"),
        (route_manifest(dedup={"header": "bad header"}), "routes.hooks.dedup.header"),
        (route_manifest(dedup={"body": True, "header": "X-A"}), "routes.hooks.dedup.body"),
        (
            route_manifest(conversation={"json_pointers": ["a/b"]}),
            "routes.hooks.conversation.json_pointers",
        ),
        (route_manifest(conversation={"headers": "X-Conv"}), "routes.hooks.conversation.headers"),
        (route_manifest(challenge=True), "routes.hooks.challenge"),
        (route_manifest(challenge={"token": "x"}), "routes.hooks.challenge.token"),
    ],
)
def test_bad_manifest_names_the_field(data: dict[str, Any], field: str) -> None:
    """Unknown keys, wrong types and bad values fail with the dotted field name."""
    error = error_of(data)
    assert (error.file, error.field) == ("acme.json", field)


@pytest.mark.parametrize(
    ("verify_table", "key"),
    [
        ({"header": "X-Sig"}, "scheme"),
        ({"scheme": "rot13"}, "scheme"),
        ({"scheme": "hmac"}, "header"),
        ({"scheme": "hmac", "header": "X-Sig", "colour": "red"}, "colour"),
        ({"scheme": "hmac", "header": "X-Sig", "algorithm": "md5"}, "algorithm"),
        ({"scheme": "hmac-sha256", "header": "X-Sig", "algorithm": "sha1"}, "algorithm"),
        ({"scheme": "hmac", "header": "X-Sig", "encoding": "HEX"}, "encoding"),
        (
            {
                "scheme": "hmac",
                "header": "X-Sig",
                "timestamp_header": "X-Ts",
                "tolerance_seconds": "300",
            },
            "tolerance_seconds",
        ),
        (
            {
                "scheme": "hmac",
                "header": "X-Sig",
                "timestamp_header": "X-Ts",
                "tolerance_seconds": 0,
            },
            "tolerance_seconds",
        ),
        (
            {
                "scheme": "hmac",
                "header": "X-Sig",
                "timestamp_header": "X-Ts",
                "tolerance_seconds": True,
            },
            "tolerance_seconds",
        ),
        ({"scheme": "hmac", "header": "X-Sig", "tolerance_seconds": 60}, "tolerance_seconds"),
        ({"scheme": "hmac", "header": "X-Sig", "template": "{timestamp}.{rawBody}"}, "template"),
        ({"scheme": "hmac", "header": "X-Sig", "template": "{id}.{rawBody}"}, "template"),
        ({"scheme": "hmac", "header": "X-Sig", "template": "{timestamp}"}, "template"),
        ({"scheme": "hmac", "header": "X-Sig", "template": "{rawbody}"}, "template"),
        ({"scheme": "hmac", "header": "X-Sig", "multiple": "yes"}, "multiple"),
        ({"scheme": "shared-secret"}, "header"),
        ({"scheme": "stripe", "header": "X-Sig"}, "header"),
        ({"scheme": "twilio", "tolerance_seconds": 300}, "tolerance_seconds"),
        ({"scheme": "none"}, "allow_unsigned"),
        ({"scheme": "none", "allow_unsigned": "true"}, "allow_unsigned"),
    ],
)
def test_bad_verify_table_names_the_field(verify_table: dict[str, Any], key: str) -> None:
    """Verification params are checked strictly, and the error names routes.<r>.verify.<key>."""
    error = error_of(manifest(routes={"hooks": {"verify": verify_table}}))
    assert error.field == f"routes.hooks.verify.{key}"


def test_bad_toml_value_in_a_file_names_file_and_field(tmp_path: Path) -> None:
    """A wrong type in a TOML file names both the file and the dotted field."""
    path = tmp_path / "acme.toml"
    path.write_text(CUSTOM_TOML + 'timestamp_header = "X-Ts"\ntolerance_seconds = "300"\n')
    with pytest.raises(ManifestError) as info:
        load_manifest_file(path)
    assert str(info.value).startswith(f"{path}: routes.hooks.verify.tolerance_seconds: ")


def test_header_names_are_stored_lower_case() -> None:
    """Header names from the manifest are lower-cased for lookup."""
    plugin = parse_manifest(
        route_manifest(dedup={"headers": ["X-One", "X-Two"]}, conversation={"headers": ["X-Conv"]}),
        "acme.json",
    )
    route = plugin.routes["hooks"]
    assert route.dedup_headers == ("x-one", "x-two") and route.conversation_headers == ("x-conv",)
    assert getattr(route.verify, "header", None) == "x-sig"


def test_route_defaults_when_optional_tables_are_absent() -> None:
    """No dedup, conversation, ack, challenge, cap or methods means the pipeline's defaults."""
    route = parse_manifest(manifest(), "acme.json").routes["hooks"]
    assert (route.dedup_headers, route.dedup_json_pointer, route.dedup_body) == ((), None, False)
    assert route.ack == Ack() and route.challenge is None
    assert route.max_body_bytes is None and route.methods is None


def test_challenge_param_names_can_be_overridden() -> None:
    """A challenge table may rename the handshake params."""
    route = parse_manifest(route_manifest(challenge={"token_param": "token"}), "a.json")
    assert route.routes["hooks"].challenge == Challenge(token_param="token")


def test_empty_json_pointer_is_accepted() -> None:
    """The empty pointer (the whole document) is a valid JSON pointer."""
    route = parse_manifest(route_manifest(conversation={"json_pointers": [""]}), "a.json")
    assert route.routes["hooks"].conversation_pointers == ("",)


def test_unsigned_route_with_allow_unsigned_loads() -> None:
    """scheme none with allow_unsigned = true is a valid route."""
    plugin = parse_manifest(
        manifest(routes={"hooks": {"verify": {"scheme": "none", "allow_unsigned": True}}}), "a.json"
    )
    assert plugin.routes["hooks"].verify.scheme == "none"
