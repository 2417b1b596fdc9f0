"""The dashboard under ``/admin/ui``: server-rendered pages over the same store calls as the API.

A login with the admin token starts a session (:mod:`ingress_box.web.logins`); every other page
needs it, and every form carries the session's CSRF token. Pages are Jinja2 templates with
autoescaping; one CSS file and one small script (the overview's live charts) are served from the
package, so nothing is built and nothing is fetched from elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from .. import forward, instance_health, instance_rules, listing, mapping_rules, probe, quarantine
from ..delivery import Target
from ..errors import (
    AlreadyExists,
    InvalidInput,
    NoTarget,
    NotFound,
    NotReplayable,
    PermanentFailure,
    StillRejected,
    StorageUnavailable,
)
from ..store import activity
from ..store import bridges as store_bridges
from ..store import dead_letters as store_dead_letters
from ..store import deliveries as store_deliveries
from ..store import instances as store_instances
from ..store import mappings as store_mappings
from ..store import probes as store_probes
from ..store import rejections as store_rejections
from ..store import replay as store_replay
from . import deliveries, instance_forms, sparklines, templating
from .box import Box, box_of
from .kit import base_url, error_response, known
from .logins import Login, Logins

PREFIX = "/admin/ui"
COOKIE = "ingress_box_session"
HERE = Path(__file__).parent
MAX_FORM_BYTES = 64 * 1024  # the dashboard's forms are a few short fields
PAGE_SIZE = 50
# The deliveries page's filters, as the list API names them (ingress_box.listing reads them).
_LIST_FILTERS = ("q", "state", "plugin", "instance", "event_type", "since", "until")
BODY_SHOWN = 16 * 1024  # characters of a body shown on a delivery page
KEPT_SHOWN = 200  # the newest kept (admissible) requests on the rejections page
PARKED_SHOWN = 5  # parked lanes flagged on the overview (the lanes page lists them all)
# Only our own pages may be the target of the login's redirect (no open redirect).
SAFE_NEXT = re.compile(r"/admin/ui/[A-Za-z0-9_./?=&%-]*")
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; "
        "img-src 'self'; connect-src 'self'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


@dataclass
class Visit:
    """One request to a guarded page: the box, the session and the submitted form."""

    request: Request
    box: Box
    login: Login
    form: dict[str, str]

    def query(self, name: str) -> str | None:
        return self.request.query_params.get(name) or None


Page = Callable[[Visit], Awaitable[Response]]


# -- request plumbing ------------------------------------------------------------------------


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form, read up to a cap (anything else reads as empty, so fails its checks)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != (
        "application/x-www-form-urlencoded"
    ):
        return {}
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            raise InvalidInput("the form is too large")
        chunks.append(chunk)
    return dict(parse_qsl(b"".join(chunks).decode("utf-8", "replace"), keep_blank_values=True))


def _redirect(path: str, **query: str | None) -> Response:
    args = {k: v for k, v in query.items() if v}
    return RedirectResponse(path + ("?" + urlencode(args) if args else ""), status_code=303)


def instance_path(plugin_id: str, instance_id: str) -> str:
    return f"{PREFIX}/instances/{quote(plugin_id, safe='')}/{quote(instance_id, safe='')}"


async def _instance_of(visit: Visit) -> store_instances.Instance:
    plugin_id, instance_id = (
        visit.request.path_params["plugin"],
        visit.request.path_params["instance"],
    )
    inst = await store_instances.aget(visit.box.db, plugin_id, instance_id)
    if inst is None:
        raise NotFound(f"no instance {plugin_id}/{instance_id}")
    return inst


async def _redirect_to_overview(request: Request) -> Response:
    return RedirectResponse(PREFIX + "/", status_code=307)


class Dashboard:
    def __init__(self) -> None:
        self.logins = Logins()
        self.templates = Jinja2Templates(
            env=templating.environment(
                {
                    "prefix": PREFIX,
                    "states": store_deliveries.STATES,
                    "width": sparklines.WIDTH,
                    "height": sparklines.HEIGHT,
                    "instance_path": instance_path,
                }
            )
        )

    def render(
        self, request: Request, name: str, login: Login | None, status: int = 200, **context: Any
    ) -> Response:
        context.update(login=login, flash=login.take_flash() if login else None)
        context.setdefault("now", box_of(request).clock())
        response = self.templates.TemplateResponse(request, name, context, status_code=status)
        response.headers.update(SECURITY_HEADERS)
        return response

    def guard(self, page: Page) -> Callable[[Request], Awaitable[Response]]:
        """The endpoint for ``page``: a session, a CSRF-checked form for POST, errors as pages."""

        async def endpoint(request: Request) -> Response:
            box = box_of(request)
            login = self.logins.get(request.cookies.get(COOKIE), box.clock())
            if login is None:
                if request.url.path.startswith(PREFIX + "/api/"):
                    return error_response(401, "unauthorized", "log in first")
                wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return _redirect(
                    PREFIX + "/login", next=wanted if request.method == "GET" else None
                )
            try:
                form = await _form(request) if request.method == "POST" else {}
                if request.method == "POST" and not login.csrf_ok(form.get("csrf")):
                    return self.render(
                        request,
                        "error.html",
                        login,
                        403,
                        message="The form's CSRF token is missing or wrong: "
                        "reload the page and try again.",
                    )
                return await page(Visit(request, box, login, form))
            except NotFound as exc:
                return self.render(request, "error.html", login, 404, message=str(exc))
            except InvalidInput as exc:
                return self.render(request, "error.html", login, 400, message=str(exc))
            except StorageUnavailable as exc:
                response = self.render(request, "error.html", login, 503, message=str(exc))
                response.headers["retry-after"] = str(exc.retry_after)
                return response

        return endpoint

    # -- login ---------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        box = box_of(request)
        if self.logins.get(request.cookies.get(COOKIE), box.clock()) is not None:
            return _redirect(PREFIX + "/")
        return self.render(
            request, "login.html", None, next=request.query_params.get("next"), error=None
        )

    async def login(self, request: Request) -> Response:
        box = box_of(request)
        try:
            form = await _form(request)
        except InvalidInput:  # an oversized form holds no token worth reading
            form = {}
        wanted = form.get("next", "")
        wanted = wanted if SAFE_NEXT.fullmatch(wanted) else PREFIX + "/"
        verdict = box.auth.attempt(
            "Bearer " + form.get("token", ""),
            request.client.host if request.client else None,
            box.clock(),
            "dashboard",
        )
        if verdict.retry_after:
            response = self.render(
                request,
                "login.html",
                None,
                429,
                next=wanted,
                error="Too many wrong tokens from this address: "
                f"try again in {verdict.retry_after} s.",
            )
            response.headers["retry-after"] = str(verdict.retry_after)
            return response
        if not verdict.ok:
            return self.render(
                request, "login.html", None, 401, next=wanted, error="That is not the admin token."
            )
        self.logins.end(request.cookies.get(COOKIE))
        session_id, _ = self.logins.start(box.clock())
        response = _redirect(wanted)
        response.set_cookie(
            COOKIE,
            session_id,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, visit: Visit) -> Response:
        self.logins.end(visit.request.cookies.get(COOKIE))
        response = _redirect(PREFIX + "/login")
        response.delete_cookie(
            COOKIE,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=visit.request.url.scheme == "https",
        )
        return response

    # -- overview --------------------------------------------------------------------------

    @staticmethod
    async def _overview_data(box: Box) -> dict[str, Any]:
        now = box.clock()
        act = await activity.aactivity(box.db, now)
        return {
            "now": now,
            "stats": {
                "outbox_depth": act.backlog.depth,
                "pending": act.pending,
                "parked": act.backlog.parked,
                "oldest_pending_age": templating.age(act.backlog.oldest_pending_age),
                "dead_open": act.backlog.dead_open,
                "received_hour": sum(act.received),
                "delivered_hour": sum(act.delivered),
                "dead_hour": sum(act.dead),
                "worker": "running"
                if box.worker is not None and box.worker.alive()
                else "not running in this process",
            },
            "charts": {
                "throughput": sparklines.chart(
                    {"received": act.received, "delivered": act.delivered}
                ),
                "backlog": sparklines.chart({"backlog": act.backlog_per_minute()}),
            },
        }

    async def overview(self, visit: Visit) -> Response:
        box = visit.box
        data = await self._overview_data(box)
        page = await store_instances.alist_page(box.db, None, None, PAGE_SIZE)
        healths = await instance_health.aof(box.db, page.items, data["now"])
        # The failing ones first: they are what a glance at the overview is for.
        order = {state: i for i, state in enumerate(("failing", "ok", "idle", "disabled"))}
        listed = sorted(healths.items(), key=lambda kv: (order[kv[1].state], kv[0]))
        # Parked lanes come first in this listing, so the first few hold any there are.
        lanes = await activity.awaiting_lanes(box.db, PARKED_SHOWN)
        return self.render(
            visit.request,
            "overview.html",
            visit.login,
            healths=listed,
            parked_lanes=[lane.to_json() for lane in lanes if lane.parked],
            more_instances=page.next_cursor is not None,
            **data,
        )

    async def overview_json(self, visit: Visit) -> Response:
        return JSONResponse(
            await self._overview_data(visit.box), headers={"cache-control": "no-store"}
        )

    # -- instances, deliveries, lanes, rejections ------------------------------------------

    async def instances(self, visit: Visit) -> Response:
        return await self._instances_page(visit)

    async def _instances_page(
        self, visit: Visit, status: int = 200, error: str | None = None
    ) -> Response:
        box = visit.box
        page = await store_instances.alist_page(
            box.db, visit.query("plugin"), visit.query("cursor"), PAGE_SIZE
        )
        base = base_url(visit.request, box)
        healths = await instance_health.aof(box.db, page.items, box.clock())
        rows = [
            (
                inst,
                instance_rules.ingress_urls(box.registry, inst, base),
                healths[inst.plugin_id, inst.instance_id],
            )
            for inst in page.items
        ]
        return self.render(
            visit.request,
            "instances.html",
            visit.login,
            status,
            rows=rows,
            next_cursor=page.next_cursor,
            plugins=box.registry.all(),
            lane_policies=store_instances.LANE_POLICIES,
            form=visit.form,
            error=error,
        )

    async def create_instance(self, visit: Visit) -> Response:
        """The "New instance" form: made by the API's rules; its secrets shown on this page only."""
        box = visit.box
        plugin_id, instance_id, fields = instance_forms.creation(visit.form)
        try:
            inst, shown = instance_rules.new_instance(
                box.registry, plugin_id, instance_id, fields, box.clock()
            )
            created = instance_rules.created_json(
                box.registry,
                inst,
                shown,
                base_url(visit.request, box),
                secret_given="secret" in fields,
            )
            # Rendered before the commit, as the API's answer is: no 500 after it.
            page = self.render(
                visit.request,
                "secrets.html",
                visit.login,
                201,
                inst=inst,
                heading="Instance created",
                shown=created,
                urls=created["ingress_urls"],
                warnings=created["warnings"],
                setup=_setup(box, inst, created["ingress_urls"]),
            )
            await box.db.awrite(store_instances.insert(inst))
        except (InvalidInput, AlreadyExists) as exc:
            return await self._instances_page(visit, _status(exc), str(exc))
        return page

    async def bridges(self, visit: Visit) -> Response:
        db = visit.box.db
        bridges = await store_bridges.aevery(db)
        counts = await store_bridges.amapping_counts(db)
        sides = await store_bridges.asides(db)
        rows = [
            (b, counts.get(b.id, 0), [(pair, sides.get(pair)) for pair in b.instances])
            for b in bridges
        ]
        return self.render(visit.request, "bridges.html", visit.login, rows=rows)

    async def instance(self, visit: Visit) -> Response:
        return await self._instance_page(visit, await _instance_of(visit))

    async def _instance_page(
        self,
        visit: Visit,
        inst: store_instances.Instance,
        status: int = 200,
        error: str | None = None,
    ) -> Response:
        box = visit.box
        (found,) = (await instance_health.aof(box.db, [inst], box.clock())).values()
        urls = instance_rules.ingress_urls(box.registry, inst, base_url(visit.request, box))
        return self.render(
            visit.request,
            "instance.html",
            visit.login,
            status,
            inst=inst,
            health=found,
            urls=urls,
            setup=_setup(box, inst, urls),
            lane_policies=store_instances.LANE_POLICIES,
            grace_hours=box.settings.rotation_grace_hours,
            error=error,
        )

    async def edit_instance(self, visit: Visit) -> Response:
        box = visit.box
        inst = await _instance_of(visit)
        try:
            changes = instance_rules.changes(box.registry, instance_forms.edits(visit.form, inst))
        except InvalidInput as exc:
            return await self._instance_page(visit, inst, _status(exc), str(exc))
        await box.db.awrite(
            store_instances.update(inst.plugin_id, inst.instance_id, box.clock(), **changes)
        )
        visit.login.flash = "Saved."
        return _redirect(instance_path(inst.plugin_id, inst.instance_id))

    async def rotate_secret(self, visit: Visit) -> Response:
        """Rotate by the API's rules; the new secret is shown on this page only."""
        box = visit.box
        inst = await _instance_of(visit)
        try:
            grace = instance_forms.grace_seconds(visit.form, box.settings.rotation_grace_hours)
            secret = visit.form.get("secret", "").strip() or None
            op, new_secret = instance_rules.rotation(box.registry, inst, secret, grace, box.clock())
        except InvalidInput as exc:
            return await self._instance_page(visit, inst, _status(exc), str(exc))
        rotated = await box.db.awrite(op)
        return self.render(
            visit.request,
            "secrets.html",
            visit.login,
            inst=rotated,
            heading="Secret rotated",
            shown={"secret": new_secret},
            previous_until=rotated.previous_secret_until,
            urls={},
            warnings=[],
            setup=[],
        )

    async def confirm_delete(self, visit: Visit) -> Response:
        inst = await _instance_of(visit)
        return self.render(visit.request, "delete_instance.html", visit.login, inst=inst)

    async def delete_instance(self, visit: Visit) -> Response:
        box = visit.box
        inst = await _instance_of(visit)
        await box.db.awrite(store_instances.delete(inst.plugin_id, inst.instance_id))
        box.ingress.forget(inst.plugin_id, inst.instance_id)
        visit.login.flash = f"Deleted {inst.plugin_id}/{inst.instance_id}."
        return _redirect(PREFIX + "/instances")

    async def send_test(self, visit: Visit) -> Response:
        """The "Send test event" button: send, wait for the first attempt, say how it went."""
        box = visit.box
        inst = await _instance_of(visit)
        page = instance_path(inst.plugin_id, inst.instance_id)
        try:
            event = probe.new_event(inst, box.clock())
        except NoTarget as exc:
            visit.login.flash = str(exc)
            return _redirect(page)
        await box.db.awrite(store_probes.insert(event))
        box.wake_worker()
        attempt = await probe.await_first_attempt(
            box.db, event.id, probe.wait_seconds(box.settings)
        )
        if attempt is None:
            visit.login.flash = f"Test event {event.id} sent; its first attempt has not ended yet."
        else:
            status = f" (HTTP {attempt.status_code})" if attempt.status_code else ""
            error = f": {attempt.error}" if attempt.error else ""
            visit.login.flash = (
                f"Test event {event.id}: {attempt.outcome}{status} "
                f"in {attempt.duration_ms:.0f} ms{error}"
            )
        return _redirect(page)

    async def deliveries(self, visit: Visit) -> Response:
        db = visit.box.db
        filters = listing.filters_of(visit.request.query_params)
        # The inputs as typed (a time stays as the operator wrote it), for the form and links.
        shown = {name: visit.query(name) for name in _LIST_FILTERS}
        search, listed, next_cursor = filters.search, None, None
        if search:  # an id first: a pasted webhook-id or provider id opens its delivery
            found = await activity.afind(db, search, PAGE_SIZE)
            if len(found) == 1:
                return _redirect(f"{PREFIX}/deliveries/{quote(found[0], safe='')}")
            if found:
                listed = await store_deliveries.aitems(db, found)
        if listed is None:  # else words of the bodies, with the other filters
            page = await store_deliveries.alist_page(db, filters, visit.query("cursor"), PAGE_SIZE)
            listed, next_cursor = page.items, page.next_cursor
        items = [d.to_json() for d in listed]
        given = {k: v for k, v in shown.items() if v}
        return self.render(
            visit.request,
            "deliveries.html",
            visit.login,
            items=items,
            filters=shown,
            search=search or "",
            next_cursor=next_cursor,
            plugins=[p.id for p in visit.box.registry.all()],
            next_query=urlencode({**given, "cursor": next_cursor or ""}),
            export_query=urlencode(given),
            export_max=listing.MAX_ROWS,
        )

    async def deliveries_export(self, visit: Visit) -> Response:
        return await deliveries.export_response(visit.box.db, visit.request.query_params)

    async def delivery(self, visit: Visit) -> Response:
        detail = await store_deliveries.aget(visit.box.db, visit.request.path_params["id"])
        found = detail.to_json()
        body, encoding = found.get("body"), "text"
        if body is None and "body_base64" in found:
            body, encoding = found["body_base64"], "base64"
        shown = body[:BODY_SHOWN] if body is not None else None
        truncated = body is not None and len(body) > BODY_SHOWN
        curl, curl_note = await _curl(visit.box, detail)
        return self.render(
            visit.request,
            "delivery.html",
            visit.login,
            d=found,
            headers=sorted(found["headers"].items()),
            body=shown,
            encoding=encoding,
            truncated=truncated,
            pretty=templating.pretty_json(shown, BODY_SHOWN),
            curl=curl,
            curl_note=curl_note,
        )

    async def replay(self, visit: Visit) -> Response:
        box, delivery_id = visit.box, visit.request.path_params["id"]
        try:
            await box.db.awrite(store_replay.replay(delivery_id, box.clock()))
            box.wake_worker()
            d = (await store_deliveries.aget(box.db, delivery_id)).delivery
            warning = await _no_target_warning(box, {(d.plugin_id, d.instance_id)})
            visit.login.flash = f"Replaying {delivery_id}: it is back in the outbox.{warning}"
        except NotReplayable as exc:
            visit.login.flash = str(exc)
        return _redirect(f"{PREFIX}/deliveries/{quote(delivery_id, safe='')}")

    async def lanes(self, visit: Visit) -> Response:
        lanes = await activity.awaiting_lanes(visit.box.db, PAGE_SIZE * 4)
        return self.render(
            visit.request, "lanes.html", visit.login, lanes=[lane.to_json() for lane in lanes]
        )

    async def rejections(self, visit: Visit) -> Response:
        box = visit.box
        page = await store_instances.alist_page(box.db, None, None, 1000)
        kept: dict[tuple[str, str], list[store_rejections.Listed]] = {}
        for row in await store_rejections.anewest(box.db, KEPT_SHOWN):
            kept.setdefault((row.plugin_id, row.instance_id), []).append(row)
        groups = [
            (
                inst,
                box.ingress.rejections_json(inst.plugin_id, inst.instance_id),
                kept.get((inst.plugin_id, inst.instance_id), []),
            )
            for inst in page.items
        ]
        groups = [(inst, items, held) for inst, items, held in groups if items or held]
        reasons: dict[str, int] = {}
        for _, items, _ in groups:
            for item in items:
                reasons[item["reason"]] = reasons.get(item["reason"], 0) + 1
        return self.render(
            visit.request,
            "rejections.html",
            visit.login,
            groups=groups,
            reasons=sorted(reasons.items(), key=lambda kv: -kv[1]),
        )

    async def admit(self, visit: Visit) -> Response:
        box, where = visit.box, visit.request.path_params
        kept = await quarantine.find(box.db, where["plugin"], where["instance"], where["id"])
        try:
            answer = await quarantine.admit(box.ingress, kept)
        except StillRejected as exc:
            visit.login.flash = f"Still rejected: {exc.reason}."
            return _redirect(PREFIX + "/rejections")
        if answer.outcome == "accepted":
            visit.login.flash = f"Admitted as delivery {answer.delivery_id}."
        elif answer.outcome == "duplicate":
            visit.login.flash = f"Already accepted as delivery {answer.delivery_id}: admitted."
        else:
            visit.login.flash = f"Not admitted now: {answer.outcome} ({answer.status})."
        return _redirect(PREFIX + "/rejections")

    # -- dead letters ----------------------------------------------------------------------

    async def dead_letters(self, visit: Visit) -> Response:
        selection = store_dead_letters.Selection(visit.query("plugin"), visit.query("instance"))
        page = await store_dead_letters.alist_page(
            visit.box.db, selection, visit.query("cursor"), PAGE_SIZE
        )
        filters = {"plugin": selection.plugin_id, "instance": selection.instance_id}
        return self.render(
            visit.request,
            "dlq.html",
            visit.login,
            items=[x.to_json() for x in page.items],
            filters=filters,
            next_cursor=page.next_cursor,
            next_query=urlencode(
                {**{k: v for k, v in filters.items() if v}, "cursor": page.next_cursor or ""}
            ),
        )

    async def redrive(self, visit: Visit) -> Response:
        box, form = visit.box, visit.form
        plugin, instance = form.get("plugin") or None, form.get("instance") or None
        one = form.get("id") or None
        if one is not None:
            selection = store_dead_letters.Selection(ids=[one])
        else:
            selection = store_dead_letters.Selection(plugin, instance)
        # One bounded batch per click; the flash says how many remain for another click.
        batch = 1 if one else store_dead_letters.MAX_REDRIVE_BATCH
        # Whose they are, read first: the warning below is about their instances.
        found = await store_dead_letters.alist_page(box.db, selection, None, batch)
        redriven, remaining = await store_dead_letters.aredrive(box.db, selection, batch, box.clock)
        if redriven:
            box.wake_worker()
        owners = {(x.plugin_id, x.instance_id) for x in found.items}
        warning = await _no_target_warning(box, owners) if redriven else ""
        visit.login.flash = (
            f"Redriven {redriven}.{warning}"
            if one
            else f"Redriven {redriven}; {remaining} still open in this filter.{warning}"
        )
        return _redirect(PREFIX + "/dlq", plugin=plugin, instance=instance)

    async def confirm_discard(self, visit: Visit) -> Response:
        """Discarding cannot be undone: the Discard button leads here first."""
        dead_letter_id = visit.request.path_params["id"]
        selection = store_dead_letters.Selection(ids=[dead_letter_id])
        found = await store_dead_letters.alist_page(visit.box.db, selection, None, 1)
        if not found.items:
            raise NotFound(f"no open dead letter {dead_letter_id}")
        filters = {"plugin": visit.query("plugin"), "instance": visit.query("instance")}
        return self.render(
            visit.request,
            "discard.html",
            visit.login,
            x=found.items[0].to_json(),
            filters=filters,
        )

    async def discard(self, visit: Visit) -> Response:
        dead_letter_id = visit.request.path_params["id"]
        try:
            await visit.box.db.awrite(store_dead_letters.discard(dead_letter_id))
            visit.login.flash = f"Discarded {dead_letter_id}."
        except NotFound as exc:
            visit.login.flash = str(exc)
        return _redirect(
            PREFIX + "/dlq", plugin=visit.form.get("plugin"), instance=visit.form.get("instance")
        )


def _status(exc: Exception) -> int:
    """The HTTP status of the error table's row for ``exc`` (a form re-shown with its message)."""
    found = known(exc)
    assert found is not None, exc  # only errors of the table are caught to be shown
    return found[0]


def _setup(box: Box, inst: store_instances.Instance, urls: dict[str, str]) -> list[str]:
    """The plugin's onboarding lines with this instance's (first) ingress URL."""
    plugin = box.registry.get(inst.plugin_id)
    if plugin is None or not urls:
        return []
    return plugin.setup_for(next(iter(urls.values())))


async def _no_target_warning(box: Box, owners: set[tuple[str, str]]) -> str:
    """A sentence for the flash when deliveries were just sent back to instances that have
    nowhere to send them (they would die again at once without a word), else ""."""
    stuck = []
    for plugin_id, instance_id in sorted(owners):
        inst = await store_instances.aget(box.db, plugin_id, instance_id)
        if inst is not None and instance_health.problems(inst):
            stuck.append(f"{plugin_id}/{instance_id}")
    if not stuck:
        return ""
    return (
        f" Warning: no target_url on {', '.join(stuck)}, so it fails again at once:"
        " set one on the instance's page."
    )


async def _curl(box: Box, detail: store_deliveries.DeliveryDetail) -> tuple[str | None, str]:
    """The request ``forward`` would make for this delivery now, as a curl command, or why
    there is none."""
    d = detail.delivery
    inst = await store_instances.aget(box.db, d.plugin_id, d.instance_id)
    if inst is None:
        return None, "Its instance no longer exists."
    if inst.handler != "forward":
        return None, f"Its instance's handler is {inst.handler}, not forward."
    if not inst.target_url:
        return None, "Its instance has no target_url."
    mapping = None
    if d.conversation is not None:
        found = await store_mappings.alist_page(
            box.db,
            store_mappings.Filter(d.plugin_id, d.instance_id, conversation=d.conversation),
            limit=1,
        )
        mapping = found.items[0] if found.items else None
    # What the next attempt sends: a pending delivery's next try, else a replay's first.
    event = detail.event(d.attempts + 1 if d.state == "pending" else 1)
    try:
        curl = forward.as_curl(
            event,
            Target(inst.target_url, inst.outbound_secret, inst.config),
            mapping_rules.enrichment_headers(mapping),
            int(box.clock()),
            pruned=detail.body is None,
            inline_limit=BODY_SHOWN,
        )
    except PermanentFailure as exc:  # what the attempt would end with, too
        return None, f"It cannot be sent as it stands: {exc.error}"
    return curl, ""


def routes() -> list[BaseRoute]:
    """The dashboard's routes with their full paths; place them before the ``/admin`` mount.

    ``/admin/ui`` itself is a route here too: otherwise the ``/admin`` mount would take it.
    """
    ui = Dashboard()
    pages = [
        Route("/", ui.guard(ui.overview)),
        Route("/api/overview", ui.guard(ui.overview_json)),
        Route("/instances", ui.guard(ui.instances), methods=["GET"]),
        Route("/instances", ui.guard(ui.create_instance), methods=["POST"]),
        Route("/bridges", ui.guard(ui.bridges)),
        Route("/instances/{plugin}/{instance}", ui.guard(ui.instance)),
        Route("/instances/{plugin}/{instance}/test", ui.guard(ui.send_test), methods=["POST"]),
        Route("/instances/{plugin}/{instance}/edit", ui.guard(ui.edit_instance), methods=["POST"]),
        Route(
            "/instances/{plugin}/{instance}/rotate-secret",
            ui.guard(ui.rotate_secret),
            methods=["POST"],
        ),
        Route(
            "/instances/{plugin}/{instance}/delete", ui.guard(ui.confirm_delete), methods=["GET"]
        ),
        Route(
            "/instances/{plugin}/{instance}/delete",
            ui.guard(ui.delete_instance),
            methods=["POST"],
        ),
        Route("/deliveries", ui.guard(ui.deliveries)),
        Route("/deliveries/export", ui.guard(ui.deliveries_export)),  # before {id}
        Route("/deliveries/{id}", ui.guard(ui.delivery)),
        Route("/deliveries/{id}/replay", ui.guard(ui.replay), methods=["POST"]),
        Route("/lanes", ui.guard(ui.lanes)),
        Route("/dlq", ui.guard(ui.dead_letters)),
        Route("/dlq/redrive", ui.guard(ui.redrive), methods=["POST"]),
        Route("/dlq/{id}/discard", ui.guard(ui.confirm_discard), methods=["GET"]),
        Route("/dlq/{id}/discard", ui.guard(ui.discard), methods=["POST"]),
        Route("/rejections", ui.guard(ui.rejections)),
        Route("/rejections/{plugin}/{instance}/{id}/admit", ui.guard(ui.admit), methods=["POST"]),
        Route("/login", ui.login_form, methods=["GET"]),
        Route("/login", ui.login, methods=["POST"]),
        Route("/logout", ui.guard(ui.logout), methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=HERE / "static")),
    ]
    return [Route(PREFIX, _redirect_to_overview), Mount(PREFIX, routes=pages)]
