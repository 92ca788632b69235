"""Routes: which events go where, and how an event becomes a staging record.

A route (``[[routes]]`` in the config, read by :mod:`.routes`) matches events on
top-level fields (``match = { type = "sample" }``; several keys must all match; the
first matching route wins), names the target schema and method, the ``_key`` fields,
and a field map: attribute <- dotted path in the event, with XTK type, length,
required flag, default and, optionally, the values an enumeration allows
(``enum = [...]``). :class:`Router` compiles the routes once; mapping an event is
then a dictionary lookup per field plus the field's cast (:mod:`.xtktypes`).

Field semantics, per event:

* missing or ``null`` with a ``default``: the default;
* missing otherwise: an error if required, else the attribute is left out (an update
  does not touch it);
* ``null`` otherwise: an error if required, else an empty value (Campaign stores NULL);
* key fields are always required; a required value may not be empty;
* a ``delete`` operation carries only the key fields, as Campaign expects.

Every error is a :class:`~campaign_writer.errors.RecordError` whose ``field`` is the
event path at fault and whose message says what was wrong, so whoever sent the event
can fix it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, NamedTuple, Protocol

import orjson

from .campaign.documents import OPERATIONS, render_fragment
from .campaign.xmltext import XmlTextPolicy, quote_attribute
from .campaign.xtktypes import TEXT_TYPES, Caster, caster, json_type, text_length
from .errors import RecordError
from .records import QueueItem
from .routes import RouteConfig
from .settings import describe

__all__ = ["Routed", "Router", "Routing"]

# Joins the values of a multi-field key. XML 1.0 cannot carry U+001F, and every value
# has passed the XML character check, so no value can contain it.
_KEY_JOIN: Final = "\x1f"
_MISSING: Final = object()


class Routed(NamedTuple):
    """An event mapped to a record: what the queue keeps for delivery."""

    lane: str
    key: str | None
    record: bytes
    route: str


class Routing(NamedTuple):
    """What a batch of events became: queue items, and ``(index, error)`` rejections."""

    items: list[QueueItem]
    rejected: list[tuple[int, str]]


# --- reading the config -------------------------------------------------------------


# --- mapping events -----------------------------------------------------------------


class _Field(NamedTuple):
    """One compiled field."""

    attribute: str
    top: str | None  # the event key when the path has one segment (the fast path)
    path: tuple[str, ...]
    label: str
    cast: Caster
    required: bool
    default: str | None
    text: bool  # string or memo: values that need no work can skip the cast
    length: int | None  # a text field's limit


# Fills a record from an event: (key, fragment bytes); given the fragment's leading
# ``_operation``/``_key`` attributes, rendered once per route.
Filler = Callable[[dict[str, Any], str], tuple[str | None, bytes]]


@dataclass(frozen=True)
class _Route:
    name: str
    lane: str
    match: tuple[tuple[str, Any], ...]
    key: tuple[str, ...]
    operation: str | None
    operation_path: tuple[str, ...] | None
    operation_label: str
    fill: Filler  # every field
    fill_keys: Filler  # the key fields alone (a delete)
    heads: Mapping[str | None, str]  # operation -> the fragment's leading attributes


def _dig(event: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = event
    for step in path:
        if type(node) is not dict:
            return _MISSING
        node = node.get(step, _MISSING)
        if node is _MISSING:
            return _MISSING
    return node


def _field_text(spec: _Field, value: Any) -> str | None:
    """A field's Campaign text from its event value; None leaves the attribute out.

    The general rule, which generated fillers take whenever a value is not a plain
    string that needs no work: defaults fill gaps, a missing optional field is left
    out, null clears, a required field must hold a non-empty value."""
    if value is _MISSING or value is None:
        if spec.default is not None:
            return spec.default
        if spec.required:
            raise RecordError(
                "is required" if value is _MISSING else "is required, got null", spec.label
            )
        return None if value is _MISSING else ""
    text = spec.cast(value, spec.label)
    if not text and spec.required:
        raise RecordError("is required and must not be empty", spec.label)
    return text


def _literal(text: str) -> str:
    """``text`` as a piece of an f-string's constant part."""
    return text.replace("{", "{{").replace("}", "}}").replace("\\", "\\\\").replace("'", "\\'")


def _generate(fields: tuple[_Field, ...], key: tuple[str, ...], where: str) -> Filler:
    """A filler for ``fields``: one straight-line function, fields unrolled.

    Mapping is the per-event work of intake. Written out per route, each field costs a
    dictionary lookup and, for a string that is already valid text and needs no
    escaping (nearly all of them), a few C-level checks; anything else goes through
    :func:`_field_text` and :func:`quote_attribute`, which hold the rules and the
    error messages. Every name and constant from the config enters the source through
    ``repr`` or :func:`_literal`, never as code.
    """
    lines = ["def fill(event, head):", "    get = event.get"]
    constants: dict[str, Any] = {
        "MISSING": _MISSING,
        "dig": _dig,
        "text_of": _field_text,
        "quote": quote_attribute,
    }
    pieces = ["{head}"]
    for index, spec in enumerate(fields):
        constants[f"f{index}"] = spec
        value, text, quoted = f"v{index}", f"t{index}", f"q{index}"
        if spec.top is not None:
            lines.append(f"    {value} = get({spec.top!r}, MISSING)")
        else:
            lines.append(f"    {value} = dig(event, {spec.path!r})")
        slow = [
            f"    {text} = text_of(f{index}, {value})",
            f"    {quoted} = None if {text} is None else quote({text}, {spec.attribute!r})",
        ]
        if spec.text:
            checks = [f"type({value}) is str"]
            if spec.required:
                checks.append(value)
            if spec.length is not None:
                checks.append(f"len({value}) <= {spec.length}")
            checks.append(f"{value}.isprintable()")
            checks.extend(f"{c!r} not in {value}" for c in ('"', "&", "<", ">"))
            lines.append(f"    if {' and '.join(checks)}:")
            lines.append(f"        {text} = {quoted} = {value}")
            lines.append("    else:")
            lines.extend("    " + line for line in slow)
        else:
            lines.extend(slow)
        attribute = _literal(f' {spec.attribute}="')
        if spec.required or spec.default is not None:
            pieces.append(f'{attribute}{{{quoted}}}"')
        else:  # may be left out
            lines.append(f"    s{index} = '' if {quoted} is None else f'{attribute}{{{quoted}}}\"'")
            pieces.append(f"{{s{index}}}")
    names = [spec.attribute for spec in fields]
    if not key:
        key_expr = "None"
    else:
        parts = [f"t{names.index(name)}" for name in key]
        key_expr = parts[0] if len(parts) == 1 else f" + {_KEY_JOIN!r} + ".join(parts)
    lines.append(f"    return {key_expr}, f'{''.join(pieces)}'.encode()")
    source = "\n".join(lines) + "\n"
    namespace = dict(constants)
    exec(compile(source, f"<route {where}>", "exec"), namespace)  # noqa: S102 - see above
    fill: Filler = namespace["fill"]
    return fill


def _enumerated(cast: Caster, allowed: tuple[str, ...]) -> Caster:
    """``cast``, then a check that the text is one of ``allowed`` (empty clears: allowed)."""
    values = frozenset(allowed)
    shown = ", ".join(repr(v) for v in allowed[:10]) + (", ..." if len(allowed) > 10 else "")

    def cast_enumerated(value: object, field: str) -> str:
        text = cast(value, field)
        if text and text not in values:
            raise RecordError(f"{text[:40]!r} is not one of the allowed values ({shown})", field)
        return text

    return cast_enumerated


def _head(operation: str | None, key_spec: str | None) -> str:
    """The fragment's leading attributes, as :func:`render_fragment` writes them."""
    return render_fragment({}, operation, key_spec)


def _compile(route: RouteConfig, policy: XmlTextPolicy) -> _Route:
    compiled = []
    for spec in route.fields:
        path = tuple(spec.path.split("."))
        cast = caster(spec.type, spec.length, policy)
        compiled.append(
            _Field(
                spec.attribute,
                path[0] if len(path) == 1 else None,
                path,
                spec.path,
                _enumerated(cast, spec.enum) if spec.enum else cast,
                spec.required,
                spec.default,
                # An enumerated field always goes through its cast, which checks the value.
                spec.type in TEXT_TYPES and not spec.enum,
                text_length(spec.type, spec.length),
            )
        )
    fields = tuple(compiled)
    key_fields = tuple(f for f in fields if f.attribute in route.key)
    op_path = tuple(route.operation_field.split(".")) if route.operation_field else None
    heads = {op: _head(op, route.key_spec) for op in (None, *sorted(OPERATIONS))}
    return _Route(
        name=route.name,
        lane=route.lane,
        match=tuple(route.match.items()),
        key=route.key,
        operation=route.operation,
        operation_path=op_path,
        operation_label=route.operation_field or "",
        fill=_generate(fields, route.key, route.name),
        fill_keys=_generate(key_fields, route.key, f"{route.name} (delete)"),
        heads=MappingProxyType(heads),
    )


class _IntakeSlice(Protocol):
    @property
    def invalid_xml_chars(self) -> XmlTextPolicy: ...


class RoutingConfig(Protocol):
    """The two fields of :class:`~campaign_writer.config.Config` a router reads."""

    @property
    def routes(self) -> Sequence[RouteConfig]: ...
    @property
    def intake(self) -> _IntakeSlice: ...


class Router:
    """Maps events to staging records with the configured routes.

    ``policy`` is ``intake.invalid_xml_chars``: what to do with characters XML 1.0
    cannot carry. :meth:`from_config` reads both from a whole config.
    """

    def __init__(self, routes: Sequence[RouteConfig], policy: XmlTextPolicy = "reject") -> None:
        self.routes = tuple(_compile(route, policy) for route in routes)
        # When every route matches on the same single field (the usual `type`), a
        # dictionary finds the route; otherwise routes are tried in order.
        keys = {tuple(k for k, _ in r.match) for r in self.routes}
        self._match_key: str | None = None
        self._index: dict[Any, _Route] = {}
        if len(keys) == 1 and len(next(iter(keys))) == 1:
            self._match_key = next(iter(keys))[0]
            for route in self.routes:
                self._index.setdefault((type(route.match[0][1]), route.match[0][1]), route)

    def __repr__(self) -> str:
        return f"Router(routes={[route.name for route in self.routes]!r})"

    @classmethod
    def from_config(cls, config: RoutingConfig) -> Router:
        """The router for ``config.routes`` with ``config.intake``'s text policy."""
        return cls(config.routes, config.intake.invalid_xml_chars)

    def replace(self, other: Router) -> None:
        """Take ``other``'s routes (a config reload): one assignment of each field, with
        no await between them, so no event is mapped half with the old routes."""
        self.routes, self._match_key, self._index = other.routes, other._match_key, other._index

    # --- one event ---------------------------------------------------------------------

    def route(self, event: object) -> Routed:
        """Map one decoded event; RecordError names the field and the fault."""
        route, key, record = self._map(event)
        return Routed(route.lane, key, record, route.name)

    def _find(self, event: dict[str, Any]) -> _Route:
        if self._match_key is not None:
            value = event.get(self._match_key, _MISSING)
            try:
                found = self._index.get((type(value), value))
            except TypeError:  # an unhashable value (array, object) matches nothing
                found = None
            if found is not None:
                return found
        else:
            for route in self.routes:
                for name, wanted in route.match:
                    got = event.get(name, _MISSING)
                    if type(got) is not type(wanted) or got != wanted:
                        break
                else:
                    return route
        raise self._no_route(event)

    def _no_route(self, event: dict[str, Any]) -> RecordError:
        if not self.routes:
            return RecordError("no routes are configured")
        if self._match_key is not None:
            name = self._match_key
            value = event.get(name, _MISSING)
            wanted = ", ".join(repr(r.match[0][1]) for r in self.routes)
            if value is _MISSING:
                return RecordError(f"is missing; routes match it against {wanted}", name)
            shown = describe(value) if type(value) is not str else repr(value)
            return RecordError(f"{shown} matches no route (routes take {wanted})", name)
        wanted = "; ".join(
            f"{route.name}: " + ", ".join(f"{name}={value!r}" for name, value in route.match)
            for route in self.routes[:5]
        )
        return RecordError(f"the event matches no route (routes take {wanted})")

    def _map(self, event: object) -> tuple[_Route, str | None, bytes]:
        if type(event) is not dict:
            raise RecordError(f"an event must be a JSON object, got {json_type(event)}")
        route = self._find(event)
        operation = route.operation
        if route.operation_path is not None:
            found = _dig(event, route.operation_path)
            if found is not _MISSING and found is not None:
                if type(found) is not str or found not in OPERATIONS:
                    shown = repr(found) if type(found) is str else json_type(found)
                    raise RecordError(
                        f"{shown} is not an operation ({', '.join(sorted(OPERATIONS))})",
                        route.operation_label,
                    )
                operation = found
        # The record in the queue's format (its rendered, escaped fragment,
        # documents.render_fragment), by the route's generated filler.
        fill = route.fill_keys if operation == "delete" else route.fill
        key, record = fill(event, route.heads[operation])
        return route, key, record

    # --- many events (the intake path) -----------------------------------------------

    def route_lines(
        self,
        lines: Sequence[bytes],
        *,
        source: str,
        created_at: float,
        skip_blank: bool = True,
    ) -> Routing:
        """Decode and map raw JSON events (NDJSON lines, broker messages).

        An index is the position in ``lines``. Blank lines are skipped (NDJSON), or
        rejected as empty events when ``skip_blank`` is false (one message each). The
        original bytes are kept as each item's ``event``, for the DLQ and replay.
        """
        items: list[QueueItem] = []
        rejected: list[tuple[int, str]] = []
        loads = orjson.loads
        mapper = self._map
        new_item = tuple.__new__  # QueueItem without its Python-level __new__ frame
        for index, line in enumerate(lines):
            if not line or line.isspace():
                if not skip_blank:
                    rejected.append((index, "empty event"))
                continue
            try:
                route, key, record = mapper(loads(line))
            except orjson.JSONDecodeError as exc:
                rejected.append((index, f"invalid JSON: {exc}"))
                continue
            except RecordError as exc:
                rejected.append((index, str(exc)))
                continue
            items.append(new_item(QueueItem, (route.lane, key, record, line, source, created_at)))
        return Routing(items, rejected)

    def route_events(self, events: Sequence[object], *, source: str, created_at: float) -> Routing:
        """Map decoded events (a JSON array); each accepted one is re-encoded as its event."""
        items: list[QueueItem] = []
        rejected: list[tuple[int, str]] = []
        dumps = orjson.dumps
        mapper = self._map
        for index, event in enumerate(events):
            try:
                route, key, record = mapper(event)
            except RecordError as exc:
                rejected.append((index, str(exc)))
                continue
            items.append(QueueItem(route.lane, key, record, dumps(event), source, created_at))
        return Routing(items, rejected)
