"""The reliability suite's two forms, its figures, and a small real filesystem.

``make test`` runs the quick form: a few SIGKILLs, a short fault mix, a small fuzz
corpus, broker connections cut through a proxy. ``make soak`` passes ``--soak``: 30
SIGKILLs, the full fault mix, real restarts of RabbitMQ, Redis and NATS, the whole
fuzz corpus with 10 MB bodies; it ends by printing the table of figures and writing
it to ``var/last-soak.md``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.services import missing

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "var" / "last-soak.md"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="reliability suite: run the long form and print its table of figures",
    )


@dataclass
class Figures:
    """What the suite counted, for the closing table."""

    crashes_survived: int = 0
    acknowledged: int = 0
    lost: int = 0
    duplicates: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    bad_inputs: int = 0
    bad_inputs_http: int = 0  # of them, bodies posted to a writer process
    writer_crashes: int = 0
    secrets_found: int = 0
    started: float = field(default_factory=time.monotonic)
    outcomes: Counter[str] = field(default_factory=Counter)

    def rows(self) -> list[tuple[str, str, str]]:
        faults = ", ".join(f"{kind} {count}" for kind, count in sorted(self.faults.items()))
        return [
            ("crashes survived", str(self.crashes_survived), ""),
            ("events acknowledged", str(self.acknowledged), ""),
            ("events lost", str(self.lost), "0"),
            ("duplicates", str(self.duplicates), ""),
            ("faults injected, by kind", faults or "none", ""),
            (
                "bad inputs tried",
                f"{self.bad_inputs} ({self.bad_inputs_http} posted to a writer process)",
                "",
            ),
            ("writer crashes", str(self.writer_crashes), "0"),
            ("secrets found", str(self.secrets_found), "0"),
        ]

    def table(self, mode: str) -> str:
        minutes = (time.monotonic() - self.started) / 60
        tests = ", ".join(f"{count} {name}" for name, count in sorted(self.outcomes.items()))
        lines = [
            f"campaign-writer reliability suite ({mode}, {minutes:.1f} min; tests: {tests})",
            "",
            "| figure | value | required |",
            "|---|---|---|",
        ]
        lines += [f"| {name} | {value} | {required} |" for name, value, required in self.rows()]
        return "\n".join(lines) + "\n"


_FIGURES = Figures()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The soak form's cases run for minutes each; the quick form keeps the suite's
    # default per-test timeout.
    if config.getoption("soak", default=False):
        for item in items:
            if "tests/reliability/" in item.nodeid:
                # Before any timeout a test sets for the quick form.
                item.add_marker(pytest.mark.timeout(3600), append=False)


@pytest.fixture(scope="session")
def soak(request: pytest.FixtureRequest) -> bool:
    """True for the long form (``--soak``)."""
    return bool(request.config.getoption("soak", default=False))


@pytest.fixture(scope="session")
def figures() -> Figures:
    return _FIGURES


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/reliability/" not in report.nodeid:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome
        _FIGURES.outcomes[outcome] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not terminalreporter.config.getoption("soak", default=False):
        return
    table = _FIGURES.table("soak")
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(table, encoding="utf-8")
    terminalreporter.write_sep("=", "reliability figures")
    terminalreporter.write_line(table)
    terminalreporter.write_line(f"(also written to {REPORT.relative_to(ROOT)})")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of 32 MiB mounted for the test (we run as root); unmounted afterwards.

    Under CI a refused mount fails the test; elsewhere the test skips saying why.
    """
    mountpoint = tmp_path / f"disk-{uuid.uuid4().hex[:8]}"
    mountpoint.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        missing(f"cannot mount a tmpfs ({result.stderr.strip() or result.returncode})")
    try:
        yield mountpoint
    finally:
        with contextlib.suppress(OSError):
            os.sync()
        # A child killed mid-test may still hold files open for an instant: lazy unmount.
        subprocess.run(["umount", "-l", str(mountpoint)], check=False, capture_output=True)
