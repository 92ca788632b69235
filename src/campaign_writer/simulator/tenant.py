"""A simulated Campaign instance, without HTTP: its state and what each method does.

:class:`Tenant` holds everything one instance has (config, schemas, tables,
sessions, limiter, concurrency gate, fault plan, call log and counters) and answers
one parsed SOAP call with :meth:`Tenant.dispatch`. The HTTP layer (:mod:`.app`)
decides *whether* a call is served (outage, TPS, concurrency, injected failures);
this module decides *what* a served call does.

Methods and the URNs they answer under (anything else gets ``SOP-330006``):

==========================  ===============================================  ===================
method                      URN spellings accepted                          answer namespace
==========================  ===============================================  ===================
Logon, BearerTokenLogon,    ``xtk:session``                                  ``urn:xtk:session``
Logoff, GetUserInfo
Write, WriteCollection,     ``xtk:session``, ``xtk:persist``,               ``urn:wpp:default``
Ingest, IngestExt,          ``xtk:persist|xtk:session``
GetEntityIfMoreRecent
==========================  ===============================================  ===================
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from .auth import AuthState, Principal
from .calllog import CallLog
from .codes import INVALID_LOGIN
from .config import SimulatorConfig
from .faults import KINDS, FaultPlan, SimFault, execution_fault, unknown_method
from .limits import ConcurrencyGate, Limiter, make_limiter
from .protocol import (
    SESSION_METHODS,
    Call,
    out_element,
    out_string,
    response,
    session_info,
    user_info,
)
from .replication import replicate
from .schemafiles import load_schema_files
from .schemas import Catalog, session_schema_xml
from .staging import WRITE_METHODS, Knobs, Written, write
from .tables import Store

__all__ = ["PERSIST_URNS", "Tenant"]

PERSIST_URNS = frozenset({"xtk:session", "xtk:persist", "xtk:persist|xtk:session"})
_SESSION_NS = "urn:xtk:session"
_DEFAULT_NS = "urn:wpp:default"


def _rates(config: SimulatorConfig) -> dict[str, float]:
    return {kind: getattr(config, f"rate_{kind}") for kind in KINDS}


class Tenant:
    """One simulated instance; every method runs on the event loop thread."""

    def __init__(
        self,
        config: SimulatorConfig,
        clock: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        self.clock = clock
        self.wall = wall
        self.started_at = clock()
        self.config = config
        self.catalog = Catalog((*config.schemas, *load_schema_files(config.schema_files)))
        self.store = Store(self.catalog, config.db)
        self.auth = AuthState(clock)
        self.rng = random.Random(config.seed)  # a simulation, not security
        self.plan = FaultPlan(clock, self.rng)
        self.plan.configure(_rates(config), config.fault_methods)
        self.plan.set_schedule(config.schedule)
        self.limiter: Limiter | None = make_limiter(
            config.limiter, config.tps_limit, clock, config.burst
        )
        self.method_limiters: dict[str, Limiter] = {}
        self._method_limits(config, rebuild=True)
        self.gate = ConcurrencyGate(config.max_concurrent)
        self.log = CallLog(config.call_log_memory, config.call_log)
        self.users = {user.login: user for user in config.users}
        self.clients = {client.client_id: client for client in config.ims_clients}
        self.replicated_total = 0
        self.last_replication_at: float | None = None
        self.last_replication_max_lag_s: float | None = None
        self.reset_stats()

    def reset_stats(self) -> None:
        self.calls_total = 0
        self.calls_by_method: Counter[str] = Counter()
        self.responses_by_status: Counter[str] = Counter()
        self.faults_by_kind: Counter[str] = Counter()
        self.records_received = 0
        self.gate.peak = self.gate.in_flight

    def reconfigure(self, config: SimulatorConfig) -> None:
        """Take a new config at run time (only runtime knobs differ; see config.py)."""
        old, self.config = self.config, config
        if (old.limiter, old.burst) != (config.limiter, config.burst) or (self.limiter is None) != (
            config.tps_limit <= 0
        ):
            self.limiter = make_limiter(config.limiter, config.tps_limit, self.clock, config.burst)
        elif self.limiter is not None:
            self.limiter.limit = config.tps_limit
        self._method_limits(
            config, rebuild=(old.limiter, old.burst) != (config.limiter, config.burst)
        )
        self.gate.capacity = config.max_concurrent
        self.gate.wake()
        self.plan.configure(_rates(config), config.fault_methods)

    def _method_limits(self, config: SimulatorConfig, *, rebuild: bool) -> None:
        """One limiter per limited method, of the tenant's model; a changed limit keeps
        its method's history, as the tenant's does."""
        kept = {} if rebuild else self.method_limiters
        limiters: dict[str, Limiter] = {}
        for method, limit in config.method_limits:
            limiter = kept.get(method)
            if limiter is not None and limit > 0:
                limiter.limit = limit
                limiters[method] = limiter
                continue
            made = make_limiter(config.limiter, limit, self.clock, config.burst)
            if made is not None:
                limiters[method] = made
        self.method_limiters = limiters

    def admit(self, method: str) -> float | None:
        """Count a call of ``method`` against the tenant's and the method's limits.

        None when both admit it (it then counts in both); otherwise the seconds until
        both would (the ``Retry-After`` hint), and it counts in neither: Campaign says
        nothing of which limit refused a call.
        """
        tenant = self.limiter
        own = self.method_limiters.get(method)
        if own is None:
            if tenant is None or tenant.admit():
                return None
            return tenant.wait_s()
        limiters = [own] if tenant is None else [tenant, own]
        wait = max(limiter.wait_s() for limiter in limiters)
        if wait <= 0.0 and all(limiter.admit() for limiter in limiters):
            return None
        return max(wait, *(limiter.wait_s() for limiter in limiters))

    # --- recording -------------------------------------------------------------------

    def record_call(
        self,
        *,
        arrival: float,
        latency_s: float,
        method: str,
        schema: str,
        records: int,
        status: int,
        outcome: str,
        committed_at: float | None,
    ) -> None:
        self.calls_total += 1
        self.calls_by_method[method or "unknown"] += 1
        self.responses_by_status[str(status)] += 1
        if committed_at is not None:
            self.records_received += records
        self.log.add(
            t=arrival,
            method=method,
            schema=schema,
            records=records,
            status=status,
            latency_s=latency_s,
            outcome=outcome,
            committed_at=committed_at,
        )

    def stats(self) -> dict[str, Any]:
        config = self.config
        return {
            "calls_total": self.calls_total,
            "calls_by_method": dict(self.calls_by_method),
            "responses_by_status": dict(self.responses_by_status),
            "records_by_schema": self.store.counts(),
            "records_received": self.records_received,
            "faults_by_kind": dict(self.faults_by_kind),
            "tps_limit": config.tps_limit,
            "method_limits": dict(config.method_limits),
            "limiter": config.limiter,
            "max_concurrent": config.max_concurrent,
            "in_flight": self.gate.in_flight,
            "peak_in_flight": self.gate.peak,
            "waiting": self.gate.waiting,
            "sessions": len(self.auth.sessions),
            "ims_tokens": len(self.auth.tokens),
            "windows": self.plan.windows(),
            "last_call_seq": self.log.last_seq,
            "replicated_total": self.replicated_total,
            "last_replication_at": self.last_replication_at,
            "last_replication_max_lag_s": self.last_replication_max_lag_s,
            "uptime_s": self.clock() - self.started_at,
        }

    # --- SOAP methods ----------------------------------------------------------------

    def authenticate(self, call: Call) -> Principal:
        if call.bearer:
            return self.auth.bearer(call.bearer)
        return self.auth.session(
            call.session, call.security, call.session_in_param, self.config.require_security_token
        )

    def dispatch(
        self, call: Call, *, injected: str | None, marker_in_body: bool, stamp: str
    ) -> tuple[bytes, Written | None]:
        """The answer to ``call``; raises SimFault for a fault answer."""
        method, urn = call.method, call.urn
        if method in SESSION_METHODS:
            if urn != "xtk:session":
                raise unknown_method(method, urn)
            return self._session_method(call), None
        if method not in WRITE_METHODS and method != "GetEntityIfMoreRecent":
            raise unknown_method(method, urn)
        if urn not in PERSIST_URNS:
            raise unknown_method(method, urn)
        # An injected expiry or revocation kills this call's credentials as it arrives.
        if injected == "expire" and call.session and not call.bearer:
            self.auth.invalidate(Principal("", (), session=call.session))
            self.faults_by_kind["inject:expire"] += 1
        elif injected == "revoke" and call.bearer:
            self.auth.invalidate(Principal("", (), bearer=call.bearer))
            self.faults_by_kind["inject:revoke"] += 1
        principal = self.authenticate(call)
        if method == "GetEntityIfMoreRecent":
            return response(method, _DEFAULT_NS, out_element("pdomDoc", self._entity(call))), None
        config = self.config
        written = write(
            method,
            urn,
            call.document(1),
            catalog=self.catalog,
            store=self.store,
            principal=principal,
            knobs=Knobs(
                config.collections_mode,
                config.poison_rate,
                config.poison_marker,
                config.poison_mode,
                config.unique_keys,
                config.strict,
            ),
            marker_in_body=marker_in_body,
            stamp=stamp,
        )
        if written.partial:
            self.faults_by_kind["collection_partial"] += 1
        outputs = out_string("pstrSUuids", ",".join(written.uuids)) if method == "Ingest" else ""
        return response(method, _DEFAULT_NS, outputs), written

    def _session_method(self, call: Call) -> bytes:
        method = call.method
        config = self.config
        if method in ("Logon", "BearerTokenLogon"):
            if method == "Logon":
                login = call.text(1)
                session = self.auth.logon(
                    self.users.get(login), call.text(2), config.session_timeout_s
                )
                if session is None:
                    raise execution_fault(
                        method,
                        call.urn,
                        f"{INVALID_LOGIN} Invalid login or password (login '{login}').",
                        kind="login",
                    )
            else:
                bearer = self.auth.bearer(call.text(1))
                session = self.auth.open_session(
                    bearer.login, bearer.schemas, config.session_timeout_s
                )
            outputs = (
                out_string("pstrSessionToken", session.token)
                + out_element(
                    "pSessionInfo",
                    session_info(session.principal.login, config.session_timeout_s),
                )
                + out_string("pstrSecurityToken", session.security)
            )
            return response(method, _SESSION_NS, outputs)
        if method == "Logoff":
            self.auth.logoff(call.session)
            return response(method, _SESSION_NS)
        principal = self.authenticate(call)  # GetUserInfo
        return response(method, _SESSION_NS, out_element("pUserInfo", user_info(principal.login)))

    def _entity(self, call: Call) -> str:
        entity_type, _, name = call.text(1).partition("|")
        if entity_type != "xtk:schema":
            return ""
        if name == "xtk:session":
            return session_schema_xml()
        schema = self.catalog.get(name)
        return schema.xml() if schema is not None else ""

    def replicate(self) -> int:
        """One run of the staging replication (see :mod:`.replication`); rows moved."""
        now = self.wall()
        run = replicate(self.store, now)
        self.replicated_total += run.moved
        self.last_replication_at = now
        if run.max_lag_s is not None:
            self.last_replication_max_lag_s = round(run.max_lag_s, 3)
        return run.moved

    def fault_raised(self, fault: SimFault) -> None:
        self.faults_by_kind[fault.kind] += 1

    def close(self) -> None:
        self.log.close()
        self.store.close()
