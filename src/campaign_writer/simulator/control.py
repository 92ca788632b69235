"""Control and introspection: the ``/__sim/*`` endpoints (a contract for tests and ops).

``POST /__sim/control`` takes a JSON object. Every field is optional; the answer is
``{"config": {...runtime knobs...}, "windows": [...], "done": {...}}``; an unknown
field or a bad value gets 400 ``{"errors": [...]}`` and changes nothing.

Knobs (the same names as the config keys and, with dashes, the CLI flags):

* ``profile`` (``default`` or ``strict``: no invented code in any fault, IMS token
  requests need a ``scope``, Ingest refuses collections; see :mod:`.refusals`);
* ``tps_limit`` (0: no limit), ``limiter`` (``sliding``, ``fixed``,
  ``token_bucket``), ``burst``;
* ``method_limits``: an object of SOAP method to calls per second, e.g.
  ``{"Ingest": 12, "WriteCollection": 5}``, enforced within ``tps_limit`` with the
  same limiter model; it replaces the whole table (``{}``: none); a limit that
  changes keeps its method's window history;
* ``latency_ms``, ``latency_per_record_ms``, ``latency_jitter``;
* ``max_concurrent``, ``overflow`` (``queue`` or ``reject``);
* ``fault_status`` (500, or 200 as older builds), ``session_expired_style``
  (``fault`` or ``text``);
* ``retry_after`` (bool), ``retry_after_s`` (0: computed), ``throttle_body`` (bool);
* ``ingest_collections`` (``accept``, ``refuse``, ``partial``: only the first record
  of a collection is stored; ``""``: the profile decides; ``true``/``false`` mean
  ``accept``/``refuse``), ``require_security_token`` (bool);
* ``session_timeout_s``, ``ims_token_ttl_s`` (for sessions and tokens issued next);
* shares of calls, 0..1, adding up to at most 1: ``rate_500``, ``rate_502``,
  ``rate_503``, ``rate_timeout``, ``rate_reset``, ``rate_truncate``, ``rate_html``,
  ``rate_soap``, ``rate_expire``, ``rate_revoke``; the hostile answers
  ``rate_entity``, ``rate_laughs``, ``rate_huge``, ``rate_drip``; the code-less
  instance faults ``rate_masked`` (HTTP 500, ``SOP-330023`` under
  ``SOAP-ENV:Error``, no detail) and ``rate_badlogin`` (``SOAP-ENV:Client``,
  ``Invalid login or password. Connection denied.``);
* ``timeout_hold_s``, ``outage_mode`` (``503``, ``reset``, ``timeout``),
  ``fault_methods`` (list, or comma-separated string; empty: all);
* ``huge_body_bytes``, ``drip_interval_s``, ``hostile_encoding`` (``utf-8`` or
  ``utf-16-le``): the shape of the hostile answers (see :mod:`.faults`);
* ``poison_rate`` (0..1), ``poison_marker`` (empty: off), ``poison_style``
  (``coded``, ``duplicate``, ``masked``; ``""``: the profile decides);
* ``unique_keys`` (bool): an insert meeting a stored schema key, or an earlier
  record of its call, fails the call with the code-less duplicate-key fault;
* ``schedule``: a list of ``{"kind", "start_s", "end_s", "rate"}`` windows with
  times in seconds **from now**; replaces every window, outages included.
  Kinds: ``500 502 503 timeout reset truncate html soap expire revoke entity laughs
  huge drip masked badlogin outage``.

Actions:

* ``outage_s``: Campaign is down from now (or from ``outage_in_s``) for that many
  seconds; ``0`` ends every outage window;
* ``masked_s`` (with ``masked_in_s``) and ``badlogin_s`` (with ``badlogin_in_s``):
  every call (of ``fault_methods``) gets that fault from now (or after the delay)
  for that many seconds, a window of rate 1; ``0`` ends the windows of that kind;
* ``expire_sessions: true``: every session token is invalid from now;
* ``revoke_tokens: true``: every IMS access token is revoked;
* ``clear_records: true``: empties every table (and the database file);
* ``reset_stats: true``: zeroes the counters of ``/__sim/stats``;
* ``replicate_now: true``: moves every staged row to its source schema now, as an
  on-demand ``StartReplicateStagingData`` would (``replicate_interval_s`` does it on
  a timer; see :mod:`.replication`).

``GET /__sim/control`` returns the same answer without changing anything.

``GET /__sim/stats``: counters (see :meth:`.tenant.Tenant.stats`). Its
``faults_by_kind`` counts faults answered by kind (``data``, ``schema``,
``collection``, ``access``, ``duplicate`` for ``unique_keys``, ``login``,
``session_expired``, ``unknown_method``, ``malformed``), injected failures as
``inject:<kind>`` (``inject:masked``, ``inject:badlogin``...), and, as
``collection_partial``, the successful calls whose collection lost all but its
first record (``ingest_collections = "partial"``).
``GET /__sim/records?schema=ID&offset=0&limit=1000``: ``{"records": [...],
"total": n}``, rows in insertion order as attribute name to string value, plus
``__uuid`` and ``__committed_at``; ``limit`` is at most 100000.
``GET /__sim/calls?since=SEQ&limit=10000``: ``{"calls": [...], "last_seq": n}``,
the call-log entries after ``SEQ`` (see :mod:`.calllog`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from ..errors import ConfigError
from ..logs import get_logger
from .config import apply_changes, knob_fields
from .tenant import Tenant

__all__ = ["ACTIONS", "add_routes", "apply_control", "runtime_knobs"]

log = get_logger("simulator.control")

# Kinds a control action opens a window of: "<kind>_s" seconds, from "<kind>_in_s".
WINDOW_ACTIONS = ("outage", "masked", "badlogin")
ACTIONS = (
    *(f"{kind}{suffix}" for kind in WINDOW_ACTIONS for suffix in ("_s", "_in_s")),
    "expire_sessions",
    "revoke_tokens",
    "clear_records",
    "reset_stats",
    "replicate_now",
)
MAX_PAGE = 100_000


def runtime_knobs(tenant: Tenant) -> dict[str, Any]:
    """The knobs a control request may change, with their current values."""
    config = tenant.config
    knobs: dict[str, Any] = {}
    for spec in knob_fields():
        if spec.metadata["runtime"]:
            value = getattr(config, spec.name)
            if spec.name == "schedule":
                value = [dataclasses.asdict(w) for w in value]
            elif spec.name == "method_limits":
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            knobs[spec.name] = value
    return knobs


def _number(changes: Mapping[str, Any], name: str) -> float:
    value = changes.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"control.{name}: expected a number of seconds, not negative")
    return float(value)


def apply_control(tenant: Tenant, changes: Mapping[str, Any]) -> dict[str, Any]:
    """Apply one control request; raises ConfigError (and changes nothing) when it is wrong."""
    knobs = {k: v for k, v in changes.items() if k not in ACTIONS}
    config = apply_changes(tenant.config, knobs, source="control", runtime_only=True)
    # Every duration is checked before anything changes, even a delay sent alone.
    timed = {
        kind: (_number(changes, f"{kind}_s"), _number(changes, f"{kind}_in_s"))
        for kind in WINDOW_ACTIONS
    }
    done: dict[str, Any] = {}
    tenant.reconfigure(config)
    if "schedule" in knobs:
        tenant.plan.set_schedule(config.schedule, origin=tenant.clock())
    for kind, (duration, delay) in timed.items():
        if f"{kind}_s" not in changes:
            continue
        if duration > 0:
            tenant.plan.add_window(kind, duration, delay)
        else:
            tenant.plan.clear(kind)
    if changes.get("expire_sessions"):
        done["expired_sessions"] = tenant.auth.expire_sessions()
    if changes.get("revoke_tokens"):
        done["revoked_tokens"] = tenant.auth.revoke_tokens()
    if changes.get("clear_records"):
        tenant.store.clear()
        done["cleared_records"] = True
    if changes.get("reset_stats"):
        tenant.reset_stats()
        done["reset_stats"] = True
    if changes.get("replicate_now"):
        done["replicated"] = tenant.replicate()
    if changes:
        log.info("simulator control", extra={"fields": sorted(changes)})
    return {"config": runtime_knobs(tenant), "windows": tenant.plan.windows(), "done": done}


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _int_param(request: web.Request, name: str, default: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer") from None
    if not 0 <= value <= high:
        raise web.HTTPBadRequest(text=f"{name} must be between 0 and {high}")
    return value


def add_routes(app: web.Application, tenant: Tenant) -> None:
    """Register the ``/__sim/*`` routes on ``app``."""

    async def control(request: web.Request) -> web.Response:
        if request.method == "GET":
            return _json(apply_control(tenant, {}))
        try:
            changes = await request.json(loads=orjson.loads)
        except ValueError:
            return _json({"errors": ["control: the body is not JSON"]}, 400)
        if not isinstance(changes, dict):
            return _json({"errors": ["control: expected a JSON object"]}, 400)
        try:
            return _json(apply_control(tenant, changes))
        except ConfigError as exc:
            return _json({"errors": exc.problems}, 400)

    async def stats(request: web.Request) -> web.Response:
        return _json(tenant.stats())

    async def records(request: web.Request) -> web.Response:
        schema_id = request.query.get("schema", "")
        table = tenant.store.table(schema_id)
        if table is None:
            return _json({"error": f"unknown schema {schema_id!r}"}, 404)
        offset = _int_param(request, "offset", 0, 2**62)
        limit = _int_param(request, "limit", 1000, MAX_PAGE)
        return _json({"records": table.page(offset, limit), "total": len(table)})

    async def calls(request: web.Request) -> web.Response:
        since = _int_param(request, "since", 0, 2**62)
        limit = _int_param(request, "limit", 10_000, MAX_PAGE)
        return _json({"calls": tenant.log.since(since, limit), "last_seq": tenant.log.last_seq})

    app.router.add_get("/__sim/control", control)
    app.router.add_post("/__sim/control", control)
    app.router.add_get("/__sim/stats", stats)
    app.router.add_get("/__sim/records", records)
    app.router.add_get("/__sim/calls", calls)
