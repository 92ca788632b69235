"""A TCP proxy on 127.0.0.1 that a test can cut, to drop a client's broker connection.

Cutting from the middle proves reconnects without restarting a broker that other
tests (and other engineers' runs) share: ``cut()`` resets every open connection, and
``refuse(seconds)`` also turns new ones away for a while, as a restarting broker would,
and ``freeze()`` keeps connections open but drops every byte, as a network partition
would (only heartbeats can tell).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target>; counts the connections it cut."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._refuse_until = 0.0
        self.frozen = False
        self._thawed = asyncio.Event()
        self._thawed.set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._refuse_until:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            _reset(writer)
            return
        self.accepted += 1
        link = (writer, up_writer)
        self._links.add(link)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.difference_update(pumps)
            self._links.discard(link)
            for side in link:
                side.close()

    def cut(self) -> int:
        """Reset every open connection (both sides); returns how many were cut."""
        links = list(self._links)
        for client, upstream in links:
            _reset(client)
            _reset(upstream)
        self.cuts += len(links)
        return len(links)

    def freeze(self, frozen: bool = True) -> None:
        """Drop (or, with False, forward again) every byte, leaving connections open."""
        self.frozen = frozen
        if frozen:
            self._thawed.clear()
        else:
            self._thawed.set()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if self.frozen:
                    continue
                writer.write(data)
                await writer.drain()
        # A partition hides the far side's close too: the link stays up while frozen.
        await self._thawed.wait()

    def refuse(self, seconds: float) -> None:
        """Reset new connections for ``seconds``, like a broker that is restarting."""
        self._refuse_until = time.monotonic() + seconds

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self.cut()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST rather than a FIN: the peer sees 'connection reset'."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
