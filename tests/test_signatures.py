"""The verifiers, checked against hand-built signatures and the providers' own libraries."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest
import standardwebhooks
import stripe
import svix.webhooks
from hypothesis import given, settings
from hypothesis import strategies as st
from signers import sign_stripe
from twilio.request_validator import RequestValidator

from ingress_box.errors import ManifestError
from ingress_box.signatures import (
    HmacSpec,
    NoneSpec,
    SignedRequest,
    StandardWebhooksSpec,
    Verdict,
    VerifySpec,
    generate_secret,
    parse_verify_spec,
    verify,
)

NOW = 1_700_000_000
SECRET = "s3cret"
BODY = b'{"event":"message_created","id":1}'
URL = "https://box.example.com/ingress/twilio/main/messages"
WHSEC = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def spec_of(**table: Any) -> VerifySpec:
    return parse_verify_spec(table, "test.toml", "routes.r.verify")


def request(headers: Mapping[str, str], body: bytes = BODY, url: str = URL) -> SignedRequest:
    return SignedRequest("POST", url, {k.lower(): v for k, v in headers.items()}, body)


def hex_sig(secret: str, message: bytes, prefix: str = "sha256=") -> str:
    return prefix + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


SIMPLE = spec_of(scheme="hmac", header="X-Sig", prefix="sha256=")
STAMPED = spec_of(
    scheme="hmac",
    header="X-Sig",
    prefix="sha256=",
    template="{timestamp}.{rawBody}",
    timestamp_header="X-Ts",
)


def stamped(body: bytes, ts: int = NOW, secret: str = SECRET) -> SignedRequest:
    return request({"X-Sig": hex_sig(secret, f"{ts}.".encode() + body), "X-Ts": str(ts)}, body)


# --- hmac -----------------------------------------------------------------------------------


def test_hmac_accepts_a_signature_over_the_raw_body() -> None:
    """A correct sha256= signature over the exact body passes."""
    assert verify(SIMPLE, [SECRET], request({"X-Sig": hex_sig(SECRET, BODY)}), NOW) == Verdict(
        True, "ok"
    )


def test_hmac_rejects_a_tampered_body() -> None:
    """One changed byte in the body fails the signature."""
    verdict = verify(SIMPLE, [SECRET], request({"X-Sig": hex_sig(SECRET, BODY)}, BODY + b" "), NOW)
    assert verdict == Verdict(False, "bad_signature")


def test_hmac_rejects_a_wrong_secret() -> None:
    """A signature made with another secret fails."""
    assert not verify(SIMPLE, ["other"], request({"X-Sig": hex_sig(SECRET, BODY)}), NOW).ok


def test_hmac_verifies_dollar_sequences_verbatim() -> None:
    """A body holding $&, $1, \\1 or \\g<0> is signed byte for byte, never read as a pattern."""
    body = b'{"a":"$& $1 $$ $` $\' \\1 \\g<0>"}'
    assert verify(STAMPED, [SECRET], stamped(body), NOW).ok


def test_hmac_template_is_substituted_in_one_pass() -> None:
    """A body holding {timestamp} or {id} is not substituted again."""
    body = b'{"note":"{timestamp} and {id} and {rawBody}"}'
    assert verify(STAMPED, [SECRET], stamped(body), NOW).ok


def test_hmac_signs_bytes_that_are_not_utf8() -> None:
    """A binary body is signed as bytes, never decoded."""
    body = b"\xff\xfe\x00binary"
    assert verify(SIMPLE, [SECRET], request({"X-Sig": hex_sig(SECRET, body)}, body), NOW).ok


def test_hmac_uses_the_secret_as_utf8_text() -> None:
    """A non-ASCII secret is keyed by its UTF-8 bytes."""
    secret = "clé-ünïcode"
    mac = hmac.new(secret.encode("utf-8"), BODY, hashlib.sha256).hexdigest()
    assert verify(SIMPLE, [secret], request({"X-Sig": "sha256=" + mac}), NOW).ok


def test_hmac_hex_is_compared_exactly_so_uppercase_fails() -> None:
    """Hex is lowercase and compared exactly: the uppercase form of a good signature fails."""
    upper = "sha256=" + hex_sig(SECRET, BODY, prefix="").upper()
    assert verify(SIMPLE, [SECRET], request({"X-Sig": upper}), NOW).reason == "bad_signature"


def test_hmac_signature_of_a_different_length_fails() -> None:
    """A truncated or extended signature fails instead of raising."""
    good = hex_sig(SECRET, BODY)
    for sig in (good[:-1], good + "0", "sha256="):
        assert verify(SIMPLE, [SECRET], request({"X-Sig": sig}), NOW).reason == "bad_signature"


def test_hmac_prefix_is_required_when_declared() -> None:
    """A right digest without the declared sha256= prefix fails."""
    bare = hex_sig(SECRET, BODY, prefix="")
    for sig in (bare, "sha512=" + bare):
        assert verify(SIMPLE, [SECRET], request({"X-Sig": sig}), NOW).reason == "bad_signature"


def test_hmac_missing_signature_header_is_reported() -> None:
    """No signature header gives missing_signature."""
    assert verify(SIMPLE, [SECRET], request({}), NOW).reason == "missing_signature"


def test_hmac_declared_timestamp_header_defaults_to_300_seconds() -> None:
    """A timestamp header without a tolerance gets 300 s, never zero."""
    assert isinstance(STAMPED, HmacSpec) and STAMPED.tolerance_seconds == 300


def test_hmac_timestamp_at_the_tolerance_passes() -> None:
    """A timestamp exactly 300 s old (or ahead) still passes."""
    assert verify(STAMPED, [SECRET], stamped(BODY, NOW - 300), NOW).ok
    assert verify(STAMPED, [SECRET], stamped(BODY, NOW + 300), NOW).ok


def test_hmac_timestamp_past_the_tolerance_is_stale() -> None:
    """A correctly signed request 301 s old is stale."""
    verdict = verify(STAMPED, [SECRET], stamped(BODY, NOW - 301), NOW)
    assert verdict.reason == "stale_timestamp"


def test_hmac_missing_timestamp_is_reported() -> None:
    """A declared timestamp header that is absent gives missing_timestamp."""
    verdict = verify(STAMPED, [SECRET], request({"X-Sig": hex_sig(SECRET, BODY)}), NOW)
    assert verdict.reason == "missing_timestamp"


def test_hmac_non_integer_timestamp_is_reported() -> None:
    """A timestamp that is not plain digits gives bad_timestamp."""
    for ts in ("12.5", "1_000", " 17", "abc", "-5"):
        verdict = verify(STAMPED, [SECRET], request({"X-Sig": "sha256=00", "X-Ts": ts}), NOW)
        assert verdict.reason == "bad_timestamp", ts


def test_hmac_id_header_is_substituted_for_id() -> None:
    """{id} takes the declared id header's value."""
    spec = spec_of(scheme="hmac", header="X-Sig", template="{id}:{rawBody}", id_header="X-Id")
    sig = hmac.new(SECRET.encode(), b"evt_9:" + BODY, hashlib.sha256).hexdigest()
    assert verify(spec, [SECRET], request({"X-Sig": sig, "X-Id": "evt_9"}), NOW).ok
    assert not verify(spec, [SECRET], request({"X-Sig": sig, "X-Id": "evt_8"}), NOW).ok


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha512"])
def test_hmac_base64_encoding_works_with_each_algorithm(algorithm: str) -> None:
    """base64 digests of sha1, sha256 and sha512 verify."""
    spec = spec_of(scheme="hmac", header="X-Sig", algorithm=algorithm, encoding="base64")
    sig = base64.b64encode(hmac.new(SECRET.encode(), BODY, algorithm).digest()).decode()
    assert verify(spec, [SECRET], request({"X-Sig": sig}), NOW).ok


def test_hmac_multiple_candidates_pass_when_one_matches() -> None:
    """With multiple = true, any one comma- or space-separated candidate may match."""
    spec = spec_of(scheme="hmac", header="X-Sig", prefix="sha256=", multiple=True)
    header = f"sha256=bogus, {hex_sig(SECRET, BODY)} sha256=other"
    assert verify(spec, [SECRET], request({"X-Sig": header}), NOW).ok


def test_hmac_single_candidate_is_the_default() -> None:
    """Without multiple = true, a list of candidates is one (wrong) signature."""
    header = f"sha256=bogus,{hex_sig(SECRET, BODY)}"
    assert not verify(SIMPLE, [SECRET], request({"X-Sig": header}), NOW).ok


def test_hmac_sha256_alias_means_hmac_with_sha256() -> None:
    """scheme = "hmac-sha256" parses to the hmac scheme with sha256."""
    spec = spec_of(scheme="hmac-sha256", header="X-Sig")
    assert isinstance(spec, HmacSpec) and (spec.scheme, spec.algorithm) == ("hmac", "sha256")


def test_github_documented_example_verifies() -> None:
    """GitHub's documented secret, payload and signature pass."""
    spec = spec_of(scheme="hmac", header="X-Hub-Signature-256", prefix="sha256=")
    sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    req = request({"X-Hub-Signature-256": sig}, b"Hello, World!")
    assert verify(spec, ["It's a Secret to Everybody"], req, NOW).ok


def test_previous_secret_still_verifies_during_rotation() -> None:
    """Any of the valid secrets may match: the previous one works in the grace window."""
    req = request({"X-Sig": hex_sig("old-secret", BODY)})
    assert verify(SIMPLE, ["new-secret", "old-secret"], req, NOW).ok


# --- every scheme ---------------------------------------------------------------------------

ALL_SIGNED = {
    "hmac": SIMPLE,
    "hmac-timestamped": STAMPED,
    "shared-secret": spec_of(scheme="shared-secret", header="X-Token"),
    "standard-webhooks": spec_of(scheme="standard-webhooks"),
    "stripe": spec_of(scheme="stripe"),
    "twilio": spec_of(scheme="twilio"),
}


@pytest.mark.parametrize("secrets", [[], [""], ["", "  "]])
@pytest.mark.parametrize("name", sorted(ALL_SIGNED))
def test_empty_secret_fails_closed_for_every_scheme(name: str, secrets: list[str]) -> None:
    """No usable secret means no_secret, whatever the request carries."""
    headers = {"X-Sig": hex_sig("", BODY), "X-Token": "", "X-Ts": str(NOW)}
    verdict = verify(ALL_SIGNED[name], secrets, request(headers), NOW)
    assert verdict == Verdict(False, "no_secret")


def test_unsigned_route_is_refused_unless_allowed() -> None:
    """scheme none passes only with allow_unsigned."""
    assert verify(NoneSpec(allow_unsigned=False), [], request({}), NOW).reason == (
        "unsigned_not_allowed"
    )


def test_unsigned_route_passes_when_allowed() -> None:
    """scheme none with allow_unsigned = true passes without a secret."""
    assert verify(spec_of(scheme="none", allow_unsigned=True), [], request({}), NOW).ok


def test_unsigned_scheme_without_allow_unsigned_is_a_manifest_error() -> None:
    """A manifest saying scheme = "none" without allow_unsigned = true is rejected."""
    with pytest.raises(ManifestError) as info:
        spec_of(scheme="none")
    assert info.value.field == "routes.r.verify.allow_unsigned"


@pytest.mark.parametrize("spec", list(ALL_SIGNED.values()), ids=sorted(ALL_SIGNED))
def test_generated_secret_is_long_and_random(spec: VerifySpec) -> None:
    """generate_secret gives a fresh secret of at least 32 characters each call."""
    first, second = generate_secret(spec), generate_secret(spec)
    assert first != second and len(first) >= 32


# --- shared-secret --------------------------------------------------------------------------

TOKEN = ALL_SIGNED["shared-secret"]


def test_shared_secret_accepts_the_exact_secret() -> None:
    """The header equal to the secret passes."""
    assert verify(TOKEN, [SECRET], request({"X-Token": SECRET}), NOW).ok


def test_shared_secret_rejects_another_value() -> None:
    """A different or longer value fails."""
    for value in ("nope", SECRET + "x", SECRET[:-1]):
        assert verify(TOKEN, [SECRET], request({"X-Token": value}), NOW).reason == "bad_signature"


# --- standard-webhooks ----------------------------------------------------------------------

SW = ALL_SIGNED["standard-webhooks"]


def sw_headers(
    secret: str = WHSEC,
    msg_id: str = "msg_1",
    ts: int = NOW,
    body: bytes = BODY,
    prefix: str = "webhook-",
) -> dict[str, str]:
    stamp = datetime.fromtimestamp(ts, tz=UTC)
    signature = standardwebhooks.Webhook(secret).sign(msg_id, stamp, body.decode())
    return {prefix + "id": msg_id, prefix + "timestamp": str(ts), prefix + "signature": signature}


def test_standard_webhooks_accepts_the_oracle_signature() -> None:
    """A request signed by the standardwebhooks library passes."""
    assert verify(SW, [WHSEC], request(sw_headers()), NOW).ok


def test_standard_webhooks_rejects_a_tampered_body() -> None:
    """A changed body fails."""
    assert verify(SW, [WHSEC], request(sw_headers(), BODY + b" "), NOW).reason == "bad_signature"


def test_standard_webhooks_rejects_a_wrong_secret() -> None:
    """Another key fails."""
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    assert not verify(SW, [other], request(sw_headers()), NOW).ok


def test_standard_webhooks_accepts_svix_header_names() -> None:
    """svix-id / svix-timestamp / svix-signature, signed by the svix library, pass."""
    stamp = datetime.fromtimestamp(NOW, tz=UTC)
    signature = svix.webhooks.Webhook(WHSEC).sign("msg_2", stamp, BODY.decode())
    headers = {"svix-id": "msg_2", "svix-timestamp": str(NOW), "svix-signature": signature}
    assert verify(SW, [WHSEC], request(headers), NOW).ok


def test_standard_webhooks_bogus_candidate_before_a_good_one_passes() -> None:
    """Any one matching v1 candidate passes, even after a bogus one."""
    headers = sw_headers()
    headers["webhook-signature"] = "v1,deadbeef= v1,!!notbase64 " + headers["webhook-signature"]
    assert verify(SW, [WHSEC], request(headers), NOW).ok


def test_standard_webhooks_ignores_other_signature_versions() -> None:
    """A correct digest labelled v2 does not count."""
    headers = sw_headers()
    headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v2,")
    assert verify(SW, [WHSEC], request(headers), NOW).reason == "bad_signature"


@pytest.mark.parametrize("secret", ["whsec_", "v1,whsec_", "v1,", "whsec_!!!"])
def test_standard_webhooks_empty_or_unreadable_key_fails_closed(secret: str) -> None:
    """A secret that decodes to no key fails closed, never as an HMAC with an empty key."""
    empty_key_sig = base64.b64encode(
        hmac.new(b"", f"msg_1.{NOW}.".encode() + BODY, hashlib.sha256).digest()
    ).decode()
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(NOW),
        "webhook-signature": "v1," + empty_key_sig,
    }
    assert verify(SW, [secret], request(headers), NOW).reason == "no_secret"


def test_standard_webhooks_accepts_a_v1_prefixed_secret() -> None:
    """A secret given as v1,whsec_... (Supabase's form) works."""
    assert verify(SW, ["v1," + WHSEC], request(sw_headers()), NOW).ok


def test_standard_webhooks_timestamp_at_tolerance_passes() -> None:
    """Exactly 300 s old passes."""
    assert verify(SW, [WHSEC], request(sw_headers(ts=NOW - 300)), NOW).ok


def test_standard_webhooks_timestamp_past_tolerance_fails() -> None:
    """301 s old (or ahead) is stale."""
    assert verify(SW, [WHSEC], request(sw_headers(ts=NOW - 301)), NOW).reason == "stale_timestamp"
    assert verify(SW, [WHSEC], request(sw_headers(ts=NOW + 301)), NOW).reason == "stale_timestamp"


def test_standard_webhooks_missing_headers_are_reported() -> None:
    """Each missing header has its own reason."""
    for name, reason in (
        ("webhook-signature", "missing_signature"),
        ("webhook-id", "missing_id"),
        ("webhook-timestamp", "missing_timestamp"),
    ):
        headers = sw_headers()
        del headers[name]
        assert verify(SW, [WHSEC], request(headers), NOW).reason == reason


def test_standard_webhooks_previous_secret_still_verifies() -> None:
    """During a rotation the old whsec_ secret still verifies."""
    new = generate_secret(SW)
    assert verify(SW, [new, WHSEC], request(sw_headers()), NOW).ok


def test_standard_webhooks_generated_secret_works_with_the_library() -> None:
    """A generated whsec_ secret is accepted by standardwebhooks and verifies its signatures."""
    secret = generate_secret(SW)
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 24
    assert verify(SW, [secret], request(sw_headers(secret=secret)), NOW).ok


def test_standard_webhooks_custom_tolerance_is_used() -> None:
    """tolerance_seconds replaces the 300 s default."""
    spec = spec_of(scheme="standard-webhooks", tolerance_seconds=10)
    assert spec == StandardWebhooksSpec(tolerance_seconds=10)
    assert not verify(spec, [WHSEC], request(sw_headers(ts=NOW - 11)), NOW).ok


# --- stripe ---------------------------------------------------------------------------------

STRIPE = ALL_SIGNED["stripe"]
STRIPE_SECRET = "whsec_test_stripe"
EVENT = json.dumps({"id": "evt_1", "object": "event", "type": "charge.succeeded"}).encode()


def stripe_header(body: bytes, ts: int, secret: str = STRIPE_SECRET) -> str:
    """The Stripe-Signature header the stripe signer sends."""
    return sign_stripe(secret, body, at=ts)["stripe-signature"]


def test_stripe_library_accepts_the_test_signer() -> None:
    """stripe's verify_header and construct_event accept what stripe_header produces."""
    now = int(time.time())
    header = stripe_header(EVENT, now)
    assert stripe.WebhookSignature.verify_header(EVENT.decode(), header, STRIPE_SECRET, 300)
    assert stripe.Webhook.construct_event(EVENT, header, STRIPE_SECRET).id == "evt_1"
    assert verify(STRIPE, [STRIPE_SECRET], request({"Stripe-Signature": header}, EVENT), now).ok


def test_stripe_accepts_the_library_header() -> None:
    """A header from stripe's generate_signature_header passes."""
    header = stripe.WebhookSignature.generate_signature_header(EVENT.decode(), STRIPE_SECRET, NOW)
    assert verify(STRIPE, [STRIPE_SECRET], request({"Stripe-Signature": header}, EVENT), NOW).ok


def test_stripe_any_of_several_v1_signatures_passes_and_v0_is_ignored() -> None:
    """Several v1 entries may be present (secret roll); v0 is never checked."""
    good = stripe_header(EVENT, NOW).split(",")[1]
    header = f"t={NOW},v1={'0' * 64},{good},v0={'f' * 64}"
    assert verify(STRIPE, [STRIPE_SECRET], request({"Stripe-Signature": header}, EVENT), NOW).ok


def test_stripe_v0_alone_fails() -> None:
    """A correct digest labelled v0 is not accepted."""
    header = stripe_header(EVENT, NOW).replace("v1=", "v0=")
    verdict = verify(STRIPE, [STRIPE_SECRET], request({"Stripe-Signature": header}, EVENT), NOW)
    assert verdict.reason == "missing_signature"


def test_stripe_rejects_a_tampered_body() -> None:
    """A changed body fails."""
    header = stripe_header(EVENT, NOW)
    verdict = verify(
        STRIPE, [STRIPE_SECRET], request({"Stripe-Signature": header}, EVENT + b" "), NOW
    )
    assert verdict.reason == "bad_signature"


def test_stripe_rejects_a_wrong_secret() -> None:
    """Another signing secret fails."""
    header = stripe_header(EVENT, NOW, "whsec_other")
    assert not verify(STRIPE, [STRIPE_SECRET], request({"Stripe-Signature": header}, EVENT), NOW).ok


def test_stripe_stale_timestamp_fails() -> None:
    """301 s old is stale; 300 s passes."""
    old, edge = stripe_header(EVENT, NOW - 301), stripe_header(EVENT, NOW - 300)
    assert (
        verify(STRIPE, [STRIPE_SECRET], request({"Stripe-Signature": old}, EVENT), NOW).reason
        == "stale_timestamp"
    )
    assert verify(STRIPE, [STRIPE_SECRET], request({"Stripe-Signature": edge}, EVENT), NOW).ok


def test_stripe_header_without_timestamp_is_reported() -> None:
    """No t= entry gives missing_timestamp."""
    header = stripe_header(EVENT, NOW).split(",", 1)[1]
    verdict = verify(STRIPE, [STRIPE_SECRET], request({"Stripe-Signature": header}, EVENT), NOW)
    assert verdict.reason == "missing_timestamp"


# --- twilio ---------------------------------------------------------------------------------

TWILIO = ALL_SIGNED["twilio"]
AUTH_TOKEN = "12345678901234567890123456789012"
PARAMS = {"From": "+15551234567", "To": "+15557654321", "Body": "héllo & $1 {timestamp} +x"}
FORM = urlencode(PARAMS).encode()


def twilio_request(url: str, body: bytes, signature: str) -> SignedRequest:
    return request(
        {"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"},
        body,
        url,
    )


def test_twilio_accepts_the_library_signature() -> None:
    """A form POST signed by twilio's RequestValidator passes."""
    signature = RequestValidator(AUTH_TOKEN).compute_signature(URL, PARAMS)
    assert RequestValidator(AUTH_TOKEN).validate(URL, PARAMS, signature)
    assert verify(TWILIO, [AUTH_TOKEN], twilio_request(URL, FORM, signature), NOW).ok


def test_twilio_rejects_a_tampered_param() -> None:
    """A changed form value fails."""
    signature = RequestValidator(AUTH_TOKEN).compute_signature(URL, PARAMS)
    body = urlencode({**PARAMS, "Body": "changed"}).encode()
    assert (
        verify(TWILIO, [AUTH_TOKEN], twilio_request(URL, body, signature), NOW).reason
        == "bad_signature"
    )


def test_twilio_rejects_a_wrong_auth_token() -> None:
    """A signature under another auth token fails."""
    signature = RequestValidator("another-token").compute_signature(URL, PARAMS)
    assert not verify(TWILIO, [AUTH_TOKEN], twilio_request(URL, FORM, signature), NOW).ok


def test_twilio_repeated_params_are_all_signed_sorted() -> None:
    """Repeated names contribute every value, sorted, as Twilio's validator does."""

    class MultiDict(dict[str, list[str]]):
        def getall(self, name: str) -> list[str]:
            return self[name]

    params = MultiDict({"MediaUrl": ["https://b.example/2", "https://a.example/1"], "From": ["+1"]})
    signature = RequestValidator(AUTH_TOKEN).compute_signature(URL, params)
    body = b"MediaUrl=https%3A%2F%2Fb.example%2F2&From=%2B1&MediaUrl=https%3A%2F%2Fa.example%2F1"
    assert verify(TWILIO, [AUTH_TOKEN], twilio_request(URL, body, signature), NOW).ok


def test_twilio_identical_repeated_params_match_the_python_validator() -> None:
    """A name=value pair sent twice verifies as the Python validator signs it (once)."""

    class MultiDict(dict[str, list[str]]):
        def getall(self, name: str) -> list[str]:
            return self[name]

    signature = RequestValidator(AUTH_TOKEN).compute_signature(URL, MultiDict({"Tag": ["a", "a"]}))
    assert verify(TWILIO, [AUTH_TOKEN], twilio_request(URL, b"Tag=a&Tag=a", signature), NOW).ok


def test_twilio_behind_a_proxy_verifies_against_the_public_url() -> None:
    """The URL Twilio called (the public one) verifies; the internal one the proxy used does not."""
    signature = RequestValidator(AUTH_TOKEN).compute_signature(URL, PARAMS)
    internal = "http://10.0.0.5:8080/ingress/twilio/main/messages"
    assert verify(TWILIO, [AUTH_TOKEN], twilio_request(URL, FORM, signature), NOW).ok
    assert not verify(TWILIO, [AUTH_TOKEN], twilio_request(internal, FORM, signature), NOW).ok


def test_twilio_signature_over_the_url_with_default_port_passes() -> None:
    """Twilio may sign https://host:443/...; the URL without the port still verifies."""
    with_port = URL.replace(".com/", ".com:443/")
    signature = RequestValidator(AUTH_TOKEN).compute_signature(with_port, PARAMS)
    assert verify(TWILIO, [AUTH_TOKEN], twilio_request(URL, FORM, signature), NOW).ok


def test_twilio_signature_over_the_url_without_port_passes() -> None:
    """A public URL configured with :443 verifies a signature made without it."""
    signature = RequestValidator(AUTH_TOKEN).compute_signature(URL, PARAMS)
    with_port = URL.replace(".com/", ".com:443/")
    assert verify(TWILIO, [AUTH_TOKEN], twilio_request(with_port, FORM, signature), NOW).ok


def test_twilio_json_body_is_checked_through_body_sha256() -> None:
    """A JSON body verifies by the URL signature plus the bodySHA256 query hash."""
    body = b'{"MessageSid":"SM1","Body":"hi"}'
    url = f"{URL}?bodySHA256={hashlib.sha256(body).hexdigest()}"
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, {})
    assert RequestValidator(AUTH_TOKEN).validate(url, body.decode(), signature)
    assert verify(TWILIO, [AUTH_TOKEN], twilio_request(url, body, signature), NOW).ok


def test_twilio_json_body_tampered_fails_its_hash() -> None:
    """A changed JSON body fails even though the URL signature holds."""
    body = b'{"MessageSid":"SM1","Body":"hi"}'
    url = f"{URL}?bodySHA256={hashlib.sha256(body).hexdigest()}"
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, {})
    verdict = verify(TWILIO, [AUTH_TOKEN], twilio_request(url, body + b" ", signature), NOW)
    assert verdict.reason == "bad_body_hash"


def test_twilio_unusable_url_is_reported() -> None:
    """A URL that is not http(s) gives bad_url."""
    for url in ("not a url", "ftp://x/y", "https://host:99999/p", "https://[::1/p"):
        assert verify(TWILIO, [AUTH_TOKEN], twilio_request(url, FORM, "sig"), NOW).reason == (
            "bad_url"
        ), url


def test_twilio_missing_signature_is_reported() -> None:
    """No X-Twilio-Signature gives missing_signature."""
    assert verify(TWILIO, [AUTH_TOKEN], request({}, FORM), NOW).reason == "missing_signature"


# --- robustness -----------------------------------------------------------------------------

HEADER_NAMES = [
    "x-sig",
    "x-ts",
    "x-token",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "svix-signature",
    "stripe-signature",
    "x-twilio-signature",
    "x-twilio-webhooks-signature-settings",
]
SPECS = [
    *ALL_SIGNED.values(),
    spec_of(scheme="none", allow_unsigned=True),
    spec_of(
        scheme="hmac",
        header="X-Sig",
        template="{id}{timestamp}{rawBody}",
        id_header="X-Id",
        timestamp_header="X-Ts",
        multiple=True,
        encoding="base64",
    ),
]


@settings(max_examples=300, deadline=None)
@given(
    spec=st.sampled_from(SPECS),
    headers=st.dictionaries(
        st.sampled_from(HEADER_NAMES) | st.text(max_size=8),
        st.text(max_size=80) | st.from_regex(r"(t=\d+,)?v1[=,][\w=+/]*"),
    ),
    body=st.binary(max_size=200),
    secrets=st.lists(st.text(max_size=40), max_size=3),
    url=st.text(max_size=60) | st.just(URL + "?bodySHA256=00"),
    now=st.floats(allow_nan=True),
)
def test_verify_never_raises(
    spec: VerifySpec, headers: dict[str, str], body: bytes, secrets: list[str], url: str, now: float
) -> None:
    """Arbitrary headers, bodies, secrets, URLs and clocks give a Verdict, never an exception."""
    verdict = verify(spec, secrets, SignedRequest("POST", url, headers, body), now)
    assert isinstance(verdict, Verdict) and isinstance(verdict.reason, str)
