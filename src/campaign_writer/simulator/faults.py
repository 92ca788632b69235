"""The tenant's weather: SOAP faults as Campaign shapes them, and injected failures.

Fault bodies follow ``campaign-protocol.md`` section 5: ``SOAP-ENV:Fault`` with
``faultcode``, ``faultstring`` and an optional ``detail``. In the default profile a
failed write says ``SOP-330011 Error while executing the method ...`` in faultstring
and puts the coded cause first in detail: a data code, ``UNKNOWN_SCHEMA`` or
``COLLECTION_UNSUPPORTED``. How each refusal is worded, and the code-less wording of
the ``strict`` profile, is in :mod:`.refusals`.

Injected failures (kinds in :data:`KINDS`) are drawn once per SOAP call, by rate
and by schedule, from one seeded generator so a run can be replayed. The kinds
are exclusive: one uniform draw picks at most one. Where each one happens:

* ``500`` ``502`` ``503`` ``html`` ``reset`` ``timeout``: before the call is
  processed, so nothing is stored;
* ``truncate``: after the commit, so the records are stored but the answer is cut
  (the case that makes at-least-once delivery write duplicates);
* ``soap``: a transient ``SOAP-ENV:Server`` fault without a Campaign code;
* ``expire`` and ``revoke``: the call's session (or IMS token) is invalidated and
  the call gets ``XSV-350008``;
* ``masked`` and ``badlogin``: before the call is processed, the two code-less shapes
  of ``campaign-protocol.md`` section 5.4a that a whole instance can answer every call
  with: ``SOP-330023`` under ``SOAP-ENV:Error`` on HTTP 500 (the cause hidden), and
  ``Invalid login or password. Connection denied.`` under ``SOAP-ENV:Client`` (their
  texts are in :mod:`.refusals`).

Hostile answers (:data:`HOSTILE_KINDS`), for testing that a client refuses them
within bounded memory and time. ``entity``, ``laughs`` and ``huge`` are a 200 sent
before the call is processed, so nothing is stored and a client that took one for a
success would lose records:

* ``entity``: a response whose DTD declares external entities (a local file and a
  URL on 127.0.0.1 port 9) and uses them in its output, the classic XXE;
* ``laughs``: the "billion laughs" entity bomb, ten levels of ten references;
* ``huge``: ``huge_body_bytes`` of a response streamed without a Content-Length;
* ``drip``: after the commit (like ``truncate``), the real answer arrives one byte
  every ``drip_interval_s``, so a client must give up on its own clock.

``entity`` and ``laughs`` are encoded in ``hostile_encoding`` (UTF-8, or UTF-16LE
without a byte-order mark, where an ASCII search for ``<!DOCTYPE`` finds nothing).

Data faults are not random per call: :func:`poisoned` picks records by a stable
hash of their key (or content) and by a marker string, so a writer that splits a
batch finds the same bad record every time.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from .codes import EXECUTION_ERROR, METHOD_UNKNOWN, SESSION_EXPIRED

__all__ = [
    "HOSTILE_KINDS",
    "KINDS",
    "WINDOW_KINDS",
    "FaultPlan",
    "FaultWindow",
    "SimFault",
    "execution_fault",
    "fault_envelope",
    "hostile_body",
    "html_page",
    "huge_body_chunks",
    "poisoned",
    "session_expired",
    "unknown_method",
]

HOSTILE_KINDS = ("entity", "laughs", "huge", "drip")
# New kinds go at the end: the draw walks KINDS in order, so seeded runs of the
# older kinds replay exactly as before.
KINDS = (
    "500",
    "502",
    "503",
    "timeout",
    "reset",
    "truncate",
    "html",
    "soap",
    "expire",
    "revoke",
    *HOSTILE_KINDS,
    "masked",
    "badlogin",
)
WINDOW_KINDS = (*KINDS, "outage")

SESSION_EXPIRED_TEXT = f"{SESSION_EXPIRED} Session has expired or is invalid. Please reconnect."


@dataclass(frozen=True)
class FaultWindow:
    """``kind`` happens at ``rate`` from ``start_s`` to ``end_s`` (seconds from an origin)."""

    kind: str
    start_s: float
    end_s: float
    rate: float = 1.0


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SimFault(Exception):
    """A SOAP fault the simulator answers with; ``kind`` is counted in the stats.

    ``status`` fixes the HTTP status of this answer; ``None`` leaves it to the
    ``fault_status`` knob.
    """

    def __init__(
        self,
        faultcode: str,
        faultstring: str,
        detail: str = "",
        *,
        kind: str = "soap",
        status: int | None = None,
    ) -> None:
        super().__init__(faultstring)
        self.faultcode = faultcode
        self.faultstring = faultstring
        self.detail = detail
        self.kind = kind
        self.status = status
        self.schema = ""  # the schema of the refused document, for the call log

    def body(self) -> bytes:
        return fault_envelope(self.faultcode, self.faultstring, self.detail)


def fault_envelope(faultcode: str, faultstring: str, detail: str = "") -> bytes:
    """A SOAP 1.1 fault envelope as Campaign writes it."""
    detail_xml = f'<detail xsi:type="xsd:string">{_escape(detail)}</detail>' if detail else ""
    return (
        "<?xml version='1.0'?>\n"
        '<SOAP-ENV:Envelope xmlns:xsd="http://www.w3.org/2001/XMLSchema"'
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        ' xmlns:ns="urn:xtk:session" xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/">'
        "<SOAP-ENV:Body><SOAP-ENV:Fault>"
        f"<faultcode>{_escape(faultcode)}</faultcode>"
        f'<faultstring xsi:type="xsd:string">{_escape(faultstring)}</faultstring>'
        f"{detail_xml}</SOAP-ENV:Fault></SOAP-ENV:Body></SOAP-ENV:Envelope>"
    ).encode()


def execution_fault(method: str, service: str, detail: str, *, kind: str) -> SimFault:
    """``SOP-330011`` with the cause in ``detail``: how Campaign reports a failed method."""
    text = f"{EXECUTION_ERROR} Error while executing the method '{method}' of service '{service}'."
    return SimFault("SOAP-ENV:Server", text, detail, kind=kind)


def session_expired() -> SimFault:
    return SimFault("SOAP-ENV:Client", SESSION_EXPIRED_TEXT, kind="session_expired")


def unknown_method(method: str, urn: str) -> SimFault:
    text = f"{METHOD_UNKNOWN} The method '{method}' is not defined in SOAP service '{urn}'."
    return SimFault("SOAP-ENV:Client", text, kind="unknown_method")


def html_page(status: int, reason: str) -> bytes:
    """The kind of page a load balancer or proxy answers with."""
    return (
        f"<!DOCTYPE html>\n<html><head><title>{status} {reason}</title></head>"
        f"<body><h1>{status} {reason}</h1><p>The server is temporarily unable to service "
        "your request. Please try again later.</p></body></html>\n"
    ).encode()


_SOAP_OPEN = (
    '<SOAP-ENV:Envelope xmlns:xsd="http://www.w3.org/2001/XMLSchema"'
    ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
    ' xmlns:ns="urn:wpp:default" xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/">'
    "<SOAP-ENV:Body>"
)
_SOAP_CLOSE = "</SOAP-ENV:Body></SOAP-ENV:Envelope>"

_DTDS = {
    "entity": (
        '<!ENTITY file SYSTEM "file:///etc/passwd"><!ENTITY web SYSTEM "http://127.0.0.1:9/xxe">',
        "&file;&web;",
    ),
    "laughs": (
        '<!ENTITY lol0 "lol">'
        + "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)),
        "&lol9;",
    ),
}


def _response_text(method: str, value: str) -> str:
    return (
        f'{_SOAP_OPEN}<{method}Response xmlns="urn:wpp:default">'
        f'<pstrSUuids xsi:type="xsd:string">{value}</pstrSUuids>'
        f"</{method}Response>{_SOAP_CLOSE}"
    )


def hostile_body(kind: str, method: str, encoding: str = "utf-8") -> bytes:
    """The body of an ``entity`` or ``laughs`` answer to ``method``.

    A DTD in front of an otherwise well-formed ``<method>Response`` whose output uses
    the DTD's entities.
    """
    declarations, use = _DTDS[kind]
    label = "UTF-16" if encoding.startswith("utf-16") else "UTF-8"
    text = (
        f"<?xml version='1.0' encoding='{label}'?>\n"
        f"<!DOCTYPE SOAP-ENV:Envelope [{declarations}]>" + _response_text(method, use)
    )
    return text.encode(encoding)


def huge_body_chunks(method: str, size: int, chunk: int = 65536) -> Iterator[bytes]:
    """A ``huge`` answer of ``size`` bytes in pieces: a response whose one output never ends."""
    head = ("<?xml version='1.0'?>\n" + _response_text(method, "")).split("</pstrSUuids>")[0]
    first = head.encode()
    yield first[:size]
    sent = len(first)
    filler = b"a" * chunk
    while sent < size:
        piece = filler[: size - sent]
        sent += len(piece)
        yield piece


def poisoned(key_text: str, rate: float) -> bool:
    """Whether a record is refused by ``poison_rate``: a stable hash, the same every call."""
    return rate > 0.0 and zlib.crc32(key_text.encode("utf-8", "surrogatepass")) < rate * 2**32


class FaultPlan:
    """Per-call fault draws from base rates and timed windows, on a monotonic clock."""

    def __init__(self, clock: Callable[[], float], rng: random.Random) -> None:
        self._clock = clock
        self._rng = rng
        self.origin = clock()
        self._windows: list[FaultWindow] = []  # absolute times on the clock
        self._base: dict[str, float] = {}
        self._methods: frozenset[str] = frozenset()

    def configure(self, rates: Mapping[str, float], methods: Iterable[str]) -> None:
        """Take the base rate of each kind and the methods faults apply to (empty: all)."""
        self._base = {kind: rates[kind] for kind in KINDS if rates.get(kind, 0.0) > 0}
        self._methods = frozenset(methods)

    def set_schedule(self, windows: Iterable[FaultWindow], origin: float | None = None) -> None:
        """Replace the windows; their times count from ``origin`` (default: the plan's start)."""
        start = self.origin if origin is None else origin
        self._windows = [
            FaultWindow(w.kind, start + w.start_s, start + w.end_s, w.rate) for w in windows
        ]

    def add_window(self, kind: str, duration_s: float, delay_s: float = 0.0) -> None:
        now = self._clock()
        self._windows.append(FaultWindow(kind, now + delay_s, now + delay_s + duration_s))

    def clear(self, kind: str) -> None:
        self._windows = [w for w in self._windows if w.kind != kind]

    def windows(self) -> list[dict[str, float | str]]:
        """The pending and active windows, with times relative to now (for the stats)."""
        now = self._clock()
        self._windows = [w for w in self._windows if w.end_s > now]
        return [
            {
                "kind": w.kind,
                "start_in_s": w.start_s - now,
                "end_in_s": w.end_s - now,
                "rate": w.rate,
            }
            for w in self._windows
        ]

    def _active(self, now: float) -> Mapping[str, float]:
        rates: dict[str, float] = {}
        for window in self._windows:
            if window.start_s <= now < window.end_s and window.rate > rates.get(window.kind, 0.0):
                rates[window.kind] = window.rate
        return rates

    def outage(self) -> bool:
        """Whether an outage window covers now (its rate is the share of calls it hits)."""
        if not self._windows:
            return False
        rate = self._active(self._clock()).get("outage", 0.0)
        return rate > 0.0 and (rate >= 1.0 or self._rng.random() < rate)

    def draw(self, method: str) -> str | None:
        """The fault kind for one call, or ``None``."""
        if not self._base and not self._windows:
            return None
        if self._methods and method not in self._methods:
            return None
        rates = dict(self._base)
        if self._windows:
            for kind, rate in self._active(self._clock()).items():
                if kind != "outage" and rate > rates.get(kind, 0.0):
                    rates[kind] = rate
        if not rates:
            return None
        pick = self._rng.random()
        total = 0.0
        for kind in KINDS:
            total += rates.get(kind, 0.0)
            if pick < total:
                return kind
        return None
