"""The Campaign error codes the simulator puts in its faults, kept apart from the writer's.

The writer classifies faults with its own table (:mod:`campaign_writer.campaign.codes`); the
simulator keeps this one so that a mistake on one side is not hidden by the same
mistake on the other. Codes marked *seen* appear in Adobe's docs, Adobe's SDK or
captured traffic (``campaign-protocol.md`` section 5.3). Codes marked **invented**
are the simulator's own, for faults whose real text no public source establishes;
the ``strict`` profile never emits them, and the writer must never depend on them.
"""

from __future__ import annotations

__all__ = [
    "ACCESS_DENIED",
    "BAD_VALUE",
    "COLLECTION_UNSUPPORTED",
    "EXECUTION_ERROR",
    "INVALID_LOGIN",
    "INVENTED",
    "MASKED_ERROR",
    "METHOD_UNKNOWN",
    "MISSING_KEY",
    "PG_ERROR",
    "SAVE_FAILED",
    "SESSION_EXPIRED",
    "UNKNOWN_ATTRIBUTE",
    "UNKNOWN_SCHEMA",
]

SESSION_EXPIRED = "XSV-350008"  # seen
INVALID_LOGIN = "XSV-350012"  # seen
SAVE_FAILED = "XSV-350023"  # seen
METHOD_UNKNOWN = "SOP-330006"  # seen
EXECUTION_ERROR = "SOP-330011"  # seen
MASKED_ERROR = "SOP-330023"  # seen: the cause is hidden from the caller
PG_ERROR = "PGS-220000"  # invented: no public source gives PostgreSQL errors a code
UNKNOWN_SCHEMA = "XSV-350101"  # invented
UNKNOWN_ATTRIBUTE = "XSV-350102"  # invented
BAD_VALUE = "XSV-350103"  # invented
MISSING_KEY = "XSV-350104"  # invented
COLLECTION_UNSUPPORTED = "XSV-350105"  # invented
ACCESS_DENIED = "XSV-350106"  # invented

INVENTED = frozenset(
    {
        PG_ERROR,
        UNKNOWN_SCHEMA,
        UNKNOWN_ATTRIBUTE,
        BAD_VALUE,
        MISSING_KEY,
        COLLECTION_UNSUPPORTED,
        ACCESS_DENIED,
    }
)
