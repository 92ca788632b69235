"""systemd's readiness protocol (``Type=notify``) and watchdog, for ``campaign-writer run``.

systemd hands a service the path of a datagram socket in ``NOTIFY_SOCKET`` (a path, or
an abstract name written with a leading ``@``); each datagram is a few ``KEY=value``
lines (see sd_notify(3)). The writer sends:

* ``READY=1`` once intake listens and the queue is open (the daemon has started);
* ``STOPPING=1`` when it begins to drain (SIGTERM, SIGINT or a crashed stage);
* ``WATCHDOG=1`` every half of ``WATCHDOG_USEC`` while the event loop runs, when the
  unit sets ``WatchdogSec=`` (and ``WATCHDOG_PID``, if set, is this process).

Without ``NOTIFY_SOCKET`` every call does nothing. The variables are taken out of the
environment once read, so a child (the ``--with-simulator`` simulator) never speaks
for the writer. A datagram that cannot be sent is logged once and the writer goes on:
readiness is systemd's concern, not a reason to stop delivering.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import MutableMapping

from .logs import get_logger

__all__ = ["Notifier"]

log = get_logger("systemd")


class Notifier:
    """Sends sd_notify datagrams to the socket systemd gave this process, if any."""

    def __init__(self, address: str | None, watchdog_s: float | None = None) -> None:
        self.address = address
        self.watchdog_s = watchdog_s
        self._socket: socket.socket | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._warned = False

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """The notifier systemd asked for, taking its variables out of ``environ``."""
        environ = os.environ if environ is None else environ
        address = environ.pop("NOTIFY_SOCKET", None) or None
        usec = environ.pop("WATCHDOG_USEC", None)
        pid = environ.pop("WATCHDOG_PID", None)
        asked = usec is not None and usec.isdigit() and int(usec) > 0
        ours = pid is None or (pid.isdigit() and int(pid) == os.getpid())
        watchdog_s = int(usec) / 1_000_000 if asked and ours and usec else None
        return cls(address, watchdog_s)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> None:
        """Send one datagram of ``KEY=value`` lines; a no-op without NOTIFY_SOCKET."""
        if self.address is None:
            return
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]  # an abstract socket
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(lines).encode(), target)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning(
                    "cannot notify systemd", extra={"socket": self.address, "error": str(exc)}
                )

    def ready(self, status: str) -> None:
        """READY=1 with a one-line STATUS; starts the watchdog pings if asked for."""
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")
        if self.enabled and self.watchdog_s is not None and self._watchdog is None:
            self._watchdog = asyncio.create_task(self._ping(self.watchdog_s / 2))

    def stopping(self, status: str = "draining") -> None:
        """STOPPING=1: the writer stops taking events and drains."""
        self.notify("STOPPING=1", f"STATUS={status}")

    async def _ping(self, interval_s: float) -> None:
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval_s)

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
