"""What the writer must make of a request body, worked out independently of the router.

The bad-input tests (hypothesis, atheris, the 10 MB bodies) post bodies to a real
writer and compare its answer and Campaign's stored rows with this model of the
documented rules (``sources/http.py``, ``router.py``, ``xtktypes.py``, the
``sample`` route of ``config/example.toml``):

* a JSON object, a JSON array of objects, or NDJSON (blank lines are not events);
* an event takes the ``sample`` route when ``type`` is exactly the string
  ``"sample"``; ``id`` (string(64)) is required and non-empty, ``testcol1`` and
  ``testcol2`` (string(255)) are optional; ``null`` in an optional field stores an
  empty value; other fields are ignored;
* a text field takes a string, or a number written in its JSON form (``repr`` of
  the decoded double, ``str`` of an integer), except a double of magnitude 2**53 or
  more, which may no longer hold the digits sent and is refused; characters XML 1.0 cannot carry are
  refused (policy ``reject``); lengths count code points;
* records with the same key merge in arrival order, later attributes winning.

Decoding uses orjson, as the writer does: the model is about what happens to the
values a JSON decoder produces, not about the decoder's own limits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["Expectation", "Model", "Verdict", "check_answer", "judge_body", "judge_event"]

NDJSON = "application/x-ndjson"
JSON = "application/json"
_FORBIDDEN = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
FIELDS = (("id", 64, True), ("testcol1", 255, False), ("testcol2", 255, False))


@dataclass(frozen=True)
class Verdict:
    """One event: its record attributes if it must be accepted, else the field at fault."""

    attrs: dict[str, str] | None
    field: str | None = None  # the field a rejection must name ('' when it is the event)
    why: str = ""


@dataclass
class Expectation:
    """What a whole body must get: a status, and the verdict of each event by index."""

    status: int
    events: dict[int, Verdict] = field(default_factory=dict)
    body_error: str = ""  # for a 400 on the body as a whole


def _text(value: Any, name: str, length: int) -> tuple[str | None, str]:
    if type(value) is str:
        text = value
    elif type(value) is int:
        text = str(value)
    elif type(value) is float:
        if abs(value) >= 2**53:
            return None, f"{name} is a double too large to hold every digit"
        text = repr(value)
    else:
        return None, f"{name} is not a string or number"
    if _FORBIDDEN.search(text):
        return None, f"{name} holds a character XML cannot carry"
    if len(text) > length:
        return None, f"{name} is over {length} characters"
    return text, ""


def judge_event(event: Any) -> Verdict:
    """The model's verdict on one decoded event."""
    if type(event) is not dict:
        return Verdict(None, "", "not an object")
    if event.get("type") != "sample" or type(event.get("type")) is not str:
        return Verdict(None, "type", "no route")
    attrs: dict[str, str] = {}
    for name, length, required in FIELDS:
        value = event.get(name)
        if value is None:
            if required:
                return Verdict(None, name, "required")
            if name in event:
                attrs[name] = ""
            continue
        text, why = _text(value, name, length)
        if text is None:
            return Verdict(None, name, why)
        if required and not text:
            return Verdict(None, name, "empty")
        attrs[name] = text
    return Verdict(attrs)


def judge_body(body: bytes, content_type: str, max_body_bytes: int) -> Expectation:
    """The status and per-event verdicts the writer must give ``body``."""
    if len(body) > max_body_bytes:
        return Expectation(413)
    verdicts: dict[int, Verdict] = {}
    if content_type == NDJSON:
        for index, line in enumerate(body.split(b"\n")):
            if not line or line.isspace():
                continue
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                verdicts[index] = Verdict(None, "", "not JSON")
                continue
            verdicts[index] = judge_event(event)
    else:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return Expectation(400, body_error="not JSON")
        if type(document) is dict:
            document = [document]
        if type(document) is not list:
            return Expectation(400, body_error="not an object or array")
        verdicts = {index: judge_event(event) for index, event in enumerate(document)}
    accepted = any(v.attrs is not None for v in verdicts.values())
    return Expectation(202 if accepted else 400, verdicts)


class Model:
    """Campaign's rows as the model expects them: records merged by key in arrival order."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, str]] = {}
        self.accepted = 0

    def take(self, expectation: Expectation) -> None:
        """Fold the accepted events of one answered request into the expected rows."""
        for index in sorted(expectation.events):
            attrs = expectation.events[index].attrs
            if attrs is None:
                continue
            self.accepted += 1
            self.rows.setdefault(attrs["id"], {}).update(attrs)


MAX_REJECTIONS_SHOWN = 100  # what sources/http.py documents


def check_answer(expectation: Expectation, status: int, payload: Any) -> list[str]:
    """Every way the writer's answer differs from the expectation (empty: it matches)."""
    problems: list[str] = []
    if status != expectation.status:
        return [f"status {status}, expected {expectation.status}: {payload!r:.500}"]
    if status == 413:
        return [] if isinstance(payload, dict) and payload.get("error") else ["413 without error"]
    if not isinstance(payload, dict) or "rejected" not in payload:
        return [f"answer is not {{accepted, rejected}}: {payload!r:.300}"]
    rejected = {entry["index"]: entry["error"] for entry in payload["rejected"]}
    if expectation.body_error:
        if None not in rejected or not rejected[None]:
            problems.append(f"body refused without a reason: {payload!r:.300}")
        return problems
    wanted_accepted = sum(1 for v in expectation.events.values() if v.attrs is not None)
    if payload.get("accepted", 0) != wanted_accepted:
        problems.append(f"accepted {payload.get('accepted')}, expected {wanted_accepted}")
    # The answer lists the first MAX_REJECTIONS_SHOWN rejections, in index order, and
    # counts them all: an event past the last one listed is checked by the count only.
    refused_wanted = sum(1 for v in expectation.events.values() if v.attrs is None)
    listed = len(payload["rejected"])
    total = payload.get("rejected_total", 0)
    if refused_wanted and total != refused_wanted:
        problems.append(f"rejected_total {total}, expected {refused_wanted}")
    if listed > MAX_REJECTIONS_SHOWN:
        problems.append(f"{listed} rejections listed, more than {MAX_REJECTIONS_SHOWN}")
    last_listed = max((i for i in rejected if i is not None), default=-1)
    truncated = listed < refused_wanted
    for index, verdict in expectation.events.items():
        error = rejected.get(index)
        if verdict.attrs is not None:
            if error is not None:
                problems.append(f"event {index} refused ({error!r}), expected accepted")
            continue
        if error is None and truncated and index > last_listed:
            continue
        if error is None:
            problems.append(f"event {index} not refused, expected: {verdict.why}")
        elif not error.strip():
            problems.append(f"event {index} refused with an empty reason")
        elif verdict.field and verdict.field not in error:
            problems.append(f"event {index}: error {error!r} does not name {verdict.field!r}")
    return problems
