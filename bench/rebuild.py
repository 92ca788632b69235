"""Rebuild a results directory's report and plots from what its runs saved.

``python -m bench.rebuild bench/results/<timestamp>`` reads ``invocation.json`` and
``runs/<case>/<subject>-<repeat>.json``, recomputes every figure with the current
:mod:`bench.analysis`, and rewrites ``report.json``, ``report.md`` and the PNGs. Use it
after changing how a figure is computed, without running anything again.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson

from .analysis import run_figures
from .runner import Options, scaled
from .scenarios import build_cases

__all__ = ["load_results", "main"]

RUN_FILE = re.compile(r"(?P<subject>.+)-(?P<repeat>\d+)\.json")


def load_results(out: Path) -> SimpleNamespace:
    """What :func:`bench.report.write_report` needs, read back from ``out``."""
    invocation = orjson.loads((out / "invocation.json").read_bytes())
    given = invocation["options"]
    options = Options(
        given["scenarios"],
        given["mode"],
        given["repeats"],
        tuple(given["subjects"]),
        out.parent,
        given["scale"],
    )
    catalogue = build_cases(options.mode)
    cases = [scaled(c, options.scale) for name in options.scenarios for c in catalogue[name]]
    results: dict[str, dict[str, Any]] = {}
    for case in cases:
        folder = out / "runs" / case.name.replace("/", "-")
        if not folder.is_dir():
            continue
        meta = invocation["cases"].get(case.name, {})
        result: dict[str, Any] = {
            "case": case,
            "runs": {},
            "skipped": meta.get("skipped", {}),
            "errors": meta.get("errors", []),
        }
        files = sorted(folder.glob("*.json"))
        for path in files:
            match = RUN_FILE.fullmatch(path.name)
            if match is None:
                continue
            run = orjson.loads(path.read_bytes())
            figures = run["figures"] if run.get("special") else run_figures(case, run)
            result["runs"].setdefault(match["subject"], []).append(
                (int(match["repeat"]), {"figures": figures, "run": run})
            )
        result["runs"] = {
            subject: [run for _, run in sorted(runs, key=lambda item: item[0])]
            for subject, runs in result["runs"].items()
        }
        results[case.name] = result
    return SimpleNamespace(
        options=options,
        out=out,
        started=invocation["started"],
        finished=invocation.get("finished"),
        machine_at_start=invocation["machine_at_start"],
        backlog=SimpleNamespace(figures=invocation.get("backlog_fill")),
        wake_cost=invocation.get("wake_cost"),
        cases=results,
    )


def main(argv: list[str] | None = None) -> int:
    from .report import write_report

    parser = argparse.ArgumentParser(
        prog="python -m bench.rebuild", description=__doc__.splitlines()[0]
    )
    parser.add_argument("results", type=Path, help="a bench/results/<timestamp> directory")
    parser.add_argument("--no-plots", dest="plots", action="store_false")
    args = parser.parse_args(argv)
    bench: Any = load_results(args.results)
    path = write_report(bench, bench.started, plots=args.plots)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
