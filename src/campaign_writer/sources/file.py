"""NDJSON from a file or standard input, through the same commit loop as the brokers.

* ``path`` names the file; ``"-"`` reads standard input. One JSON event per line;
  blank lines are skipped; a line that cannot be parsed or mapped is dead-lettered
  with its bytes and ``path``/``line`` headers, and reading goes on.
* There is no broker to acknowledge: a batch is done once the queue committed it.
  The read position is kept across I/O errors (the file is reopened and the read
  resumes there), but not across restarts: a file is read once per start, so for
  one-off loads prefer ``campaign-writer send`` against a running writer.
* ``follow = true`` keeps reading lines appended to the file (``tail -f``);
  otherwise the source idles once it reached the end, and says so in its stats.
* A full queue pauses reading, exactly as for a broker.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Final

from ..errors import SourceError
from ..logs import get_logger
from ..settings import Section
from . import SourceKind
from .base import POLL_S, BrokerSource, CommonSettings, Message

__all__ = ["KIND", "SOURCE", "FileSettings", "FileSource", "parse_options", "read_settings"]

KIND = "file"
STDIN = "-"

log = get_logger("sources.file")


@dataclass(frozen=True)
class FileSettings:
    path: str
    follow: bool = False
    common: CommonSettings = field(default_factory=CommonSettings)


def parse_options(options: Mapping[str, Any], path: str, problems: list[str]) -> FileSettings:
    """Read one ``kind = "file"`` block; problems are appended with their key path."""
    section = Section(options, path, problems)
    settings = FileSettings(
        path=section.string("path"),
        follow=section.boolean("follow", False),
        common=CommonSettings.read(section),
    )
    if settings.follow and settings.path == STDIN:
        section.problem("follow", "applies to a file, not to standard input")
    section.finish()
    return settings


class FileSource(BrokerSource[FileSettings]):
    """Read NDJSON lines into the local queue."""

    kind: ClassVar[str] = KIND

    def _setup(self) -> None:
        self._stream: BinaryIO | None = None
        self._offset = 0
        self._line = 0
        self.finished = False

    async def _open(self) -> None:
        if self.settings.path == STDIN:
            self._stream = sys.stdin.buffer
            return
        try:
            self._stream = await asyncio.to_thread(self._open_at_offset)
        except OSError as exc:
            raise SourceError(f"cannot read {self.settings.path}: {exc.strerror}") from exc

    def _open_at_offset(self) -> BinaryIO:
        stream = Path(self.settings.path).open("rb")  # noqa: SIM115 - closed in _shutdown
        stream.seek(self._offset)
        return stream

    def _read_lines(self, max_count: int) -> list[bytes]:
        assert self._stream is not None
        lines: list[bytes] = []
        for _ in range(max_count):
            line = self._stream.readline()
            if not line:
                break
            if not line.endswith(b"\n") and self.settings.follow:
                # A line still being written: read it whole next time.
                self._stream.seek(-len(line), 1)
                break
            lines.append(line)
        return lines

    async def _receive(self, max_count: int, wait_s: float) -> list[Message]:
        try:
            lines = await asyncio.to_thread(self._read_lines, max_count)
        except OSError as exc:
            raise SourceError(f"cannot read {self.settings.path}: {exc.strerror}") from exc
        if not lines:
            if not self.settings.follow and not self.finished:
                self.finished = True
                log.info("file read to the end", extra={"source": self.name})
            await self._sleep(POLL_S)
            return []
        messages = []
        for line in lines:
            self._line += 1
            self._offset += len(line)
            body = line.rstrip(b"\r\n")
            if body and not body.isspace():
                headers = {"path": self.settings.path, "line": str(self._line)}
                messages.append(Message(body, headers))
        return messages

    async def _ack(self, batch: list[Message]) -> bool:
        return True  # nothing upstream: the commit was the whole job

    async def _shutdown(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None and stream is not sys.stdin.buffer:
            stream.close()

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "finished": self.finished, "lines": self._line}


SOURCE: Final = SourceKind.of(FileSource, FileSettings, parse_options)
read_settings = SOURCE.read_settings
