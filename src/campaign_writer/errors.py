"""Every error campaign-writer raises, in one hierarchy.

::

    CampaignWriterError            root; ``retriable`` says whether trying again can help
    ├── ConfigError                a config file or override is wrong (lists every problem)
    ├── RecordError                one event or record cannot be written as given
    │   └── XmlTextError           a value holds characters XML 1.0 cannot carry
    ├── QueueError                 the durable local queue
    │   ├── QueueFullError         retriable: the queue is at ``queue.max_bytes``
    │   └── QueueCorruptError      the SQLite file is damaged; see README "Recovery"
    ├── CampaignError              a call to Campaign did not succeed
    │   ├── TransportError         retriable: connection refused/reset, timeout
    │   ├── ResponseError          retriable: a body we refuse (too big, DTD, not SOAP)
    │   ├── SoapFaultError         a SOAP fault, with Campaign's error code
    │   └── AuthError              logging on or getting a token failed
    │       └── AuthExpiredError   retriable: the session or token must be renewed
    └── SourceError                retriable: a broker connection failed

Third-party exceptions (aiohttp, lxml, sqlite3, broker clients) are translated into
these at the one module that talks to that library; none escapes it.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "AuthExpiredError",
    "CampaignError",
    "CampaignWriterError",
    "ConfigError",
    "QueueCorruptError",
    "QueueError",
    "QueueFullError",
    "RecordError",
    "ResponseError",
    "SoapFaultError",
    "SourceError",
    "TransportError",
    "XmlTextError",
]


class CampaignWriterError(Exception):
    """Root of every error raised by campaign-writer."""

    retriable: bool = False


class ConfigError(CampaignWriterError):
    """A configuration is invalid; ``problems`` holds one ``path: message`` per fault."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class RecordError(CampaignWriterError):
    """An event or record cannot be written; ``field`` names the culprit when known."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class XmlTextError(RecordError):
    """A value contains a character that XML 1.0 forbids (policy ``reject``)."""


class QueueError(CampaignWriterError):
    """The durable local queue failed."""


class QueueFullError(QueueError):
    """The queue holds ``queue.max_bytes``; intake must apply backpressure."""

    retriable = True


class QueueCorruptError(QueueError):
    """The queue file is not a usable SQLite database."""


class CampaignError(CampaignWriterError):
    """A call to Campaign failed."""


class TransportError(CampaignError):
    """The HTTP exchange itself failed: refused, reset, timed out."""

    retriable = True


class ResponseError(CampaignError):
    """Campaign (or a proxy) answered with a body we will not accept."""

    retriable = True


class SoapFaultError(CampaignError):
    """Campaign answered with a SOAP fault."""

    def __init__(
        self,
        *,
        status: int,
        faultcode: str,
        faultstring: str,
        detail: str,
        code: str,
    ) -> None:
        self.status = status
        self.faultcode = faultcode
        self.faultstring = faultstring
        self.detail = detail
        self.code = code
        text = f"HTTP {status} {faultcode}: {faultstring}"
        if detail:
            text += f" ({detail})"
        super().__init__(text)


class AuthError(CampaignError):
    """Authentication failed: bad credentials, refused token, unusable logon answer."""


class AuthExpiredError(AuthError):
    """The session or bearer token is no longer accepted and must be renewed."""

    retriable = True


class SourceError(CampaignWriterError):
    """A message-queue source lost or could not open its broker connection."""

    retriable = True
