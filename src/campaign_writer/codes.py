"""Campaign error codes we know, and what each one means for a writer.

Codes marked *seen* come from Adobe's docs, Adobe's SDK or captured traffic (see
``campaign-protocol.md`` section 5.3). Codes marked *simulator* are the ones our
simulator uses for faults whose real text no public source establishes (unknown
attribute, bad value, ...); PGS-220000 is the code Campaign gives to PostgreSQL
errors, and the staging tables live in PostgreSQL. Classifying by these classes,
not by exact texts, keeps the writer right on a real instance whose texts differ.
"""

from __future__ import annotations

from enum import Enum
from types import MappingProxyType

__all__ = [
    "ACCESS_DENIED",
    "BAD_VALUE",
    "CODES",
    "COLLECTION_UNSUPPORTED",
    "DB_ERROR",
    "EXECUTION_ERROR",
    "INVALID_LOGIN",
    "IP_NOT_ALLOWED",
    "MASKED_ERROR",
    "METHOD_UNKNOWN",
    "MISSING_KEY",
    "PG_ERROR",
    "SAVE_FAILED",
    "SESSION_EXPIRED",
    "UNKNOWN_ATTRIBUTE",
    "UNKNOWN_LIBRARY",
    "UNKNOWN_SCHEMA",
    "CodeClass",
]


class CodeClass(Enum):
    """What a code says about the call that got it."""

    AUTH = "auth"  # the session or token must be renewed
    FATAL = "fatal"  # nothing will work until an operator acts
    DATA = "data"  # some record in the call is bad; others may be fine
    SCHEMA = "schema"  # every record of this schema/method would fail the same way
    COLLECTION = "collection"  # the method refuses collection documents
    WRAPPER = "wrapper"  # says only that the call failed; the cause is chained after it


SESSION_EXPIRED = "XSV-350008"  # seen
INVALID_LOGIN = "XSV-350012"  # seen
IP_NOT_ALLOWED = "XSV-350013"  # seen
SAVE_FAILED = "XSV-350023"  # seen
METHOD_UNKNOWN = "SOP-330006"  # seen
EXECUTION_ERROR = "SOP-330011"  # seen
MASKED_ERROR = "SOP-330023"  # seen: the cause is hidden from the caller
UNKNOWN_LIBRARY = "SOP-330024"  # seen
DB_ERROR = "ODB-240000"  # seen
PG_ERROR = "PGS-220000"  # Campaign's PostgreSQL error code
UNKNOWN_SCHEMA = "XSV-350101"  # simulator
UNKNOWN_ATTRIBUTE = "XSV-350102"  # simulator
BAD_VALUE = "XSV-350103"  # simulator
MISSING_KEY = "XSV-350104"  # simulator
COLLECTION_UNSUPPORTED = "XSV-350105"  # simulator
ACCESS_DENIED = "XSV-350106"  # simulator

CODES = MappingProxyType(
    {
        SESSION_EXPIRED: CodeClass.AUTH,
        INVALID_LOGIN: CodeClass.FATAL,
        IP_NOT_ALLOWED: CodeClass.FATAL,
        METHOD_UNKNOWN: CodeClass.FATAL,
        UNKNOWN_LIBRARY: CodeClass.FATAL,
        ACCESS_DENIED: CodeClass.FATAL,
        EXECUTION_ERROR: CodeClass.WRAPPER,
        # The masked cause is most often a record the database refused; treating it
        # as data lets bisection isolate the record instead of retrying for hours.
        MASKED_ERROR: CodeClass.DATA,
        SAVE_FAILED: CodeClass.DATA,
        DB_ERROR: CodeClass.DATA,
        PG_ERROR: CodeClass.DATA,
        UNKNOWN_ATTRIBUTE: CodeClass.DATA,
        BAD_VALUE: CodeClass.DATA,
        MISSING_KEY: CodeClass.DATA,
        UNKNOWN_SCHEMA: CodeClass.SCHEMA,
        COLLECTION_UNSUPPORTED: CodeClass.COLLECTION,
    }
)
