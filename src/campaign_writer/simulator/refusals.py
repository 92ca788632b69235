"""The words of a refusal: how the simulator's faults read, per profile and per style.

Public sources quote Campaign's faults mostly without any ``AAA-NNNNNN`` code
(``campaign-protocol.md`` section 5.4a), while the simulator's default profile
gives every refusal a code, several of them invented (``codes.INVENTED``). The
``profile`` knob picks between the two:

* ``default``: schema, collection and access faults say ``SOP-330011 Error while
  executing the method ...`` with ``<code> <text>`` in ``detail``; a record fault's
  detail names the record and ends with ``XSV-350023 Unable to save document``;
* ``strict``: the same faults without any code: faultcode ``SOAP-ENV:Server``,
  faultstring ``Error while executing the method '<Method>' of service
  '<service>'.``, detail the bare cause. A refusal by the database reads as the
  source quotes PostgreSQL's, ``PostgreSQL error: ERROR:  <message>Impossible to
  save document of type '<label> (<schema id>)'``; no record is named, as on a real
  instance, so a writer must find the bad one by splitting the call.

Shapes either profile can answer with, each quoted from a source:

* :meth:`Refusals.duplicate`: the database's duplicate-key refusal (``unique_keys``,
  or ``poison_style = "duplicate"``), code-less in both profiles;
* :func:`masked_fault`: ``SOP-330023`` under ``SOAP-ENV:Error`` on HTTP 500 with no
  detail, the cause hidden (``poison_style = "masked"``, or injected);
* :func:`bad_login_fault`: ``Invalid login or password. Connection denied.`` under
  ``SOAP-ENV:Client``, with no code (injected).
"""

from __future__ import annotations

from collections.abc import Sequence

from .codes import (
    ACCESS_DENIED,
    COLLECTION_UNSUPPORTED,
    MASKED_ERROR,
    PG_ERROR,
    SAVE_FAILED,
)
from .faults import SimFault, execution_fault
from .schemas import Schema

__all__ = [
    "BAD_LOGIN_DETAIL",
    "MASKED_TEXT",
    "Refusals",
    "bad_login_fault",
    "document_label",
    "masked_fault",
    "unique_constraint",
]

MASKED_TEXT = (
    f"{MASKED_ERROR} An error occurred during the SOAP call."
    " You don't have the required rights to view the detail."
)
BAD_LOGIN_DETAIL = "Invalid login or password. Connection denied."
_PG = "PostgreSQL error: ERROR:  "  # two spaces after ERROR:, as PostgreSQL prints it


def masked_fault(kind: str) -> SimFault:
    """The masked fault: HTTP 500 whatever ``fault_status`` says, no detail."""
    return SimFault("SOAP-ENV:Error", MASKED_TEXT, kind=kind, status=500)


def bad_login_fault(method: str, urn: str) -> SimFault:
    """A business call refused for its credentials, worded as the v8 event page shows it."""
    text = f"Error while reading parameters of method '{method}' of service '{urn}'."
    return SimFault("SOAP-ENV:Client", text, BAD_LOGIN_DETAIL, kind="badlogin")


def _table_name(schema: Schema) -> str:
    namespace, _, name = schema.id.partition(":")
    return f"{namespace}{name}".lower()


def unique_constraint(schema: Schema) -> str:
    """The name of the schema key's unique index, e.g. ``nmsrecipient_email``."""
    return f"{_table_name(schema)}_{'_'.join(schema.keys).lower() or 'id'}"


def document_label(schema: Schema) -> str:
    """How a save failure names the document type: ``Recipients (nms:recipient)``."""
    return f"{schema.label or schema.element} ({schema.id})"


def _where(index: int, count: int, attrs: dict[str, str], keys: Sequence[str]) -> str:
    where = f"record {index + 1} of {count}"
    shown = [f"{k}={attrs[k]!r}" for k in keys if k in attrs]
    if shown:
        where += ", " + ", ".join(shown)
    return where


class Refusals:
    """The faults of one write call, each naming its method, service and schema."""

    def __init__(self, method: str, service: str, *, strict: bool) -> None:
        self.method = method
        self.service = service
        self.strict = strict
        self.schema_id = ""
        self.schema: Schema | None = None

    def _fault(self, code: str, text: str, kind: str) -> SimFault:
        if self.strict:
            return self._plain(text, kind)
        return execution_fault(self.method, self.service, f"{code} {text}", kind=kind)

    def _plain(self, detail: str, kind: str) -> SimFault:
        text = f"Error while executing the method '{self.method}' of service '{self.service}'."
        return SimFault("SOAP-ENV:Server", text, detail, kind=kind)

    def _database(self, message: str, kind: str) -> SimFault:
        label = document_label(self.schema) if self.schema else self.schema_id
        # No space before "Impossible": the source runs the two lines together.
        return self._plain(f"{_PG}{message}Impossible to save document of type '{label}'", kind)

    def schema_fault(self, code: str, text: str) -> SimFault:
        """The document as a whole is wrong: no or unknown schema, unusable ``_key``."""
        return self._fault(code, text, "schema")

    def collection(self, text: str) -> SimFault:
        return self._fault(COLLECTION_UNSUPPORTED, text, "collection")

    def access(self, text: str) -> SimFault:
        return self._fault(ACCESS_DENIED, text, "access")

    def record(
        self,
        code: str,
        text: str,
        index: int,
        count: int,
        attrs: dict[str, str],
        keys: Sequence[str],
    ) -> SimFault:
        """A record Campaign refused: the cause, where it is, then the save failure."""
        if self.strict:
            return self._plain(text, "data")
        detail = (
            f"{code} {text} ({_where(index, count, attrs, keys)})\n"
            f"{SAVE_FAILED} Unable to save document of type '{self.schema_id}'."
        )
        return execution_fault(self.method, self.service, detail, kind="data")

    def database(
        self,
        message: str,
        coded: str,
        index: int,
        count: int,
        attrs: dict[str, str],
        keys: Sequence[str],
    ) -> SimFault:
        """A record the database refused: PostgreSQL's ``message``, or ``coded`` by default."""
        if self.strict:
            return self._database(message, "data")
        return self.record(PG_ERROR, coded, index, count, attrs, keys)

    def duplicate(self, kind: str = "duplicate") -> SimFault:
        """The duplicate-key refusal, code-less in every profile."""
        assert self.schema is not None
        message = f'duplicate key violates unique constraint "{unique_constraint(self.schema)}"'
        return self._database(message, kind)

    def poison(
        self,
        style: str,
        reason: str,
        index: int,
        count: int,
        attrs: dict[str, str],
        keys: Sequence[str],
    ) -> SimFault:
        """A record picked by ``poison_marker`` or ``poison_rate``, refused in ``style``."""
        if style == "masked":
            return masked_fault("data")
        if style == "duplicate":
            return self.duplicate("data")
        assert self.schema is not None
        table = _table_name(self.schema)
        return self.database(
            f'new row for relation "{table}" violates check constraint "{table}_check"',
            "PostgreSQL error: ERROR:  new row violates check constraint"
            f" (simulated poison record: {reason}).",
            index,
            count,
            attrs,
            keys,
        )
