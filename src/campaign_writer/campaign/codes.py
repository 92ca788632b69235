"""What a Campaign fault says about the call that got it: by code, and by text.

Real faults often carry no ``AAA-NNNNNN`` code at all, and one code (SOP-330023)
hides the cause (``campaign-protocol.md`` section 5.4a). So a fault is read for
everything it carries: its codes first, then the words of faultstring and detail.
Only codes and texts that public sources show are listed here; the codes our
simulator invents for faults no source describes live in the simulator alone, and
the writer never depends on them.

A class says what the fault *suggests*, never that a record is bad: delivery decides
that from what happens to other records sent the same way (see
:mod:`campaign_writer.dispatcher`).
"""

from __future__ import annotations

from enum import Enum
from types import MappingProxyType

__all__ = [
    "CODES",
    "DB_ERROR",
    "EXECUTION_ERROR",
    "INVALID_LOGIN",
    "IP_NOT_ALLOWED",
    "MASKED_ERROR",
    "METHOD_UNKNOWN",
    "RECORD_WORDS",
    "SAVE_FAILED",
    "SESSION_EXPIRED",
    "TEXTS",
    "UNKNOWN_LIBRARY",
    "CodeClass",
    "names_a_record",
    "text_class",
]


class CodeClass(Enum):
    """What a code or a text says about the call that got it."""

    AUTH = "auth"  # the session or token must be renewed
    FATAL = "fatal"  # nothing will work until an operator acts (credentials, access, URL)
    DATA = "data"  # the words point at the records (a database refusal); others may be fine
    WRAPPER = "wrapper"  # says only that the method failed; the cause is chained after it
    MASKED = "masked"  # the cause is hidden: a bad record or a broken instance alike


SESSION_EXPIRED = "XSV-350008"
INVALID_LOGIN = "XSV-350012"
IP_NOT_ALLOWED = "XSV-350013"
SAVE_FAILED = "XSV-350023"
METHOD_UNKNOWN = "SOP-330006"
EXECUTION_ERROR = "SOP-330011"
MASKED_ERROR = "SOP-330023"
UNKNOWN_LIBRARY = "SOP-330024"
DB_ERROR = "ODB-240000"

# Every code here is one a public source shows (protocol facts, section 5.3).
CODES = MappingProxyType(
    {
        SESSION_EXPIRED: CodeClass.AUTH,
        INVALID_LOGIN: CodeClass.FATAL,
        IP_NOT_ALLOWED: CodeClass.FATAL,
        METHOD_UNKNOWN: CodeClass.FATAL,
        UNKNOWN_LIBRARY: CodeClass.FATAL,
        EXECUTION_ERROR: CodeClass.WRAPPER,
        MASKED_ERROR: CodeClass.MASKED,
        SAVE_FAILED: CodeClass.DATA,
        DB_ERROR: CodeClass.DATA,
    }
)

# Phrases of code-less faults, lower-case, with the short name a dead letter or a
# metric carries. The first phrase found decides, so the ones about credentials and
# access come first: a bad login arrives wrapped in "Error while reading parameters".
TEXTS: tuple[tuple[str, CodeClass, str], ...] = (
    ("session has expired or is invalid", CodeClass.AUTH, "session-expired"),
    ("invalid login or password", CodeClass.FATAL, "invalid-login"),
    ("connection denied", CodeClass.FATAL, "connection-denied"),
    ("ip address via which", CodeClass.FATAL, "ip-not-allowed"),
    ("access denied", CodeClass.FATAL, "access-denied"),
    ("is not defined in soap service", CodeClass.FATAL, "method-unknown"),
    ("duplicate key", CodeClass.DATA, "duplicate-key"),
    ("violates", CodeClass.DATA, "constraint"),
    ("value too long", CodeClass.DATA, "value-too-long"),
    ("postgresql error", CodeClass.DATA, "database"),
    ("odbc error", CodeClass.DATA, "database"),
    ("impossible to save document", CodeClass.DATA, "save-failed"),
    ("unable to save document", CodeClass.DATA, "save-failed"),
    ("don't have the required rights to view the detail", CodeClass.MASKED, "masked"),
    ("error while reading parameters", CodeClass.WRAPPER, "bad-parameters"),
    ("error while executing the method", CodeClass.WRAPPER, "execution"),
)


# Words that name one record's data (not a database that is down or read-only).
RECORD_WORDS = ("duplicate key", "violates", "value too long")


def names_a_record(text: str) -> bool:
    """Whether a fault's words name a record's own data: a key, a constraint, a length."""
    lowered = text.lower()
    return any(words in lowered for words in RECORD_WORDS)


def text_class(text: str) -> tuple[CodeClass, str] | None:
    """The class and short name of the first known phrase in ``text``, or None."""
    lowered = text.lower()
    for phrase, kind, name in TEXTS:
        if phrase in lowered:
            return kind, name
    return None
