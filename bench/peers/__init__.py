"""The peers the writer is compared with, each run as its own process.

* :mod:`.unitary`: one Ingest call per event through asyncio-throttle at the limit;
* ``sdk/peer.js``: Adobe's JavaScript SDK, ``writeCollection`` on a plain timer;
* :mod:`.cubic`: the writer itself with botocore's adaptive (CUBIC) client rate
  limiter in place of its tenant throttle.

The unitary and SDK peers read NDJSON events on stdin, print one ``<name> ready``
line once logged on, then a JSON status line every quarter second (see
:data:`STATUS_FIELDS`); the cubic peer is fed over HTTP like the writer.
"""

__all__ = ["STATUS_FIELDS"]

# Fields of a peer's status line; the harness reads them for its timelines.
STATUS_FIELDS = (
    "t",  # unix time of the line
    "received",  # events read from stdin
    "pending",  # events received and not yet settled (delivered or given up)
    "in_flight",  # calls under way
    "delivered",  # records Campaign acknowledged
    "dead",  # records given up on (a data fault, or too many failed attempts)
    "retried",  # calls retried after a transient failure
    "throttled",  # HTTP 429 answers
    "calls",  # calls made
    "rate",  # the pacing rate, calls/s
)
