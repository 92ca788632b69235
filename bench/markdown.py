"""``report.md``: the report for people, rendered from the same dictionary as report.json."""

from __future__ import annotations

from typing import Any

__all__ = ["format_figure", "label", "render"]

ORDER = (
    "writer",
    "cubic",
    "sdk",
    "unitary",
    "shared",
    "storm",
    "split",
    "auto",
    "known",
    "per-method",
    "tenant-only",
)
LABELS = {
    "utilisation": "successful calls / limit",
    "throttled_ratio": "429s / calls",
    "records_per_s": "records/s",
    "ceiling_share": "records/s / (limit x batch)",
    "batch_fill": "records per call",
    "ok_calls_per_s": "successful calls/s",
    "records_per_cpu_s": "records per CPU-second",
    "cpu_s": "CPU (s)",
    "peak_rss_mb": "peak RSS",
    "in_flight_median": "calls in flight (median)",
    "in_flight_max": "calls in flight (max)",
    "delivered_share": "delivered by the end",
    "settle_s": "time to settle under the new limit",
    "throttled_during_change": "429s while the limit is halved",
    "throttled_ratio_low": "429s / calls while halved",
    "utilisation_before": "utilisation before the drop",
    "utilisation_low": "utilisation after settling (of the halved limit)",
    "recovery_s": "time back to 90% of the restored limit",
    "utilisation_after": "utilisation after the limit came back",
    "drain_s": "time to drain after the outage (or the masked fault)",
    "masked_calls": "calls answered SOP-330023 during the masked fault",
    "masked_calls_per_min": "calls per minute the masked fault cost",
    "drain_records_per_s": "records/s while draining",
    "drain_utilisation": "utilisation while draining",
    "unaccounted": "sent - delivered - dead-lettered - pending",
    "pending_at_end": "still pending at the end",
    "good_records_not_delivered": "good records not delivered",
    "events_per_s": "events/s",
    "cpu_us_per_event": "CPU per event",
    "events_waiting": "events waiting in the queue",
    "peak_rss_filling_mb": "peak RSS while filling",
    "peak_rss_delivering_mb": "peak RSS while delivering",
    "e2e_p50_ms": "end-to-end p50",
    "e2e_p90_ms": "end-to-end p90",
    "e2e_p99_ms": "end-to-end p99",
    "e2e_p99.9_ms": "end-to-end p99.9",
    "e2e_max_ms": "end-to-end max",
    "intake_p50_ms": "202 answer p50 (intake)",
    "intake_p99_ms": "202 answer p99 (intake)",
    "call_latency_p50_ms": "call latency p50",
    "call_latency_p99_ms": "call latency p99",
    "max_ok_calls_in_1s": "most successful calls in any 1 s window",
    "max_calls_in_1s": "most calls (429s included) in any 1 s window",
    "windows_over_limit": "calls ending a 1 s window over the limit",
    "throttled_calls": "429s",
    "redis_round_trips_per_call": "Redis round trips per call",
    "window_s": "measurement window",
    "utilisation_before_loss": "utilisation before Redis dies",
    "throttled_during_loss": "429s while Redis is down",
    "throttled_ratio_during_loss": "429s / calls while Redis is down",
    "utilisation_during_loss": "utilisation while Redis is down",
    "redis_recovery_s": "time back to 95% of the limit after Redis returns",
    "utilisation_after_loss": "utilisation after Redis returns",
    "fallback_members": "writers that reported budget fallback",
    "reach_s": "time to 95% of the unknown limit (3 s in a row)",
    "throttled_finding": "429s until then",
    "utilisation_first_limit": "utilisation, second half of the first limit",
    "follow_drop_s": "time to 95% of the lowered limit",
    "throttled_after_drop": "429s until then",
    "utilisation_after_drop": "utilisation, second half of the lowered limit",
    "follow_rise_s": "time to 95% of the raised limit",
    "throttled_after_rise": "429s until then",
    "utilisation_after_rise": "utilisation, second half of the raised limit",
    "throttled_ratio_run": "429s / calls over the run",
    "learned_limit_end": "learned limit at the end (calls/s)",
    "limit_share": "successful calls / its own limit",
}


def label(figure: str) -> str:
    """A figure's name for people; ``<method>.<figure>`` (one SOAP method's figure, as
    the method-limits case reports them) reads ``<method>: <label of figure>``."""
    method, dot, base = figure.partition(".")
    if dot and base in LABELS:
        return f"{method}: {LABELS[base]}"
    return LABELS.get(figure, figure)


# The first rule whose ending matches the figure's name decides how it is shown.
FORMATS = (
    (("ratio", "utilisation", "share"), lambda v: f"{v * 100:.1f}%"),
    (("per_s", "per_cpu_s"), lambda v: f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"),
    (("_ms",), lambda v: f"{v:,.0f} ms" if abs(v) >= 10 else f"{v:.1f} ms"),
    (("_mb",), lambda v: f"{v:,.0f} MB"),
    (("_us_per_event",), lambda v: f"{v:.1f} µs"),
    (("_s",), lambda v: f"{v:.2f} s"),
)


def format_figure(name: str, value: Any) -> str:
    """A figure for people: percentages, units from the name's ending, thousands."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, int | float):
        return str(value)
    for endings, show in FORMATS:
        if any(name.endswith(ending) or f"{ending}_" in name for ending in endings):
            return show(value)
    if float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _subjects(case: dict[str, Any]) -> list[str]:
    names = list(case["subjects"])
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def _cell(name: str, summary: dict[str, Any] | None, repeats: int = 0) -> str:
    """Median (min–max); "k of n" when only k of the n repeats have the figure (e.g. a
    time to reach a share of the limit that some repeats never reached)."""
    if not summary or summary.get("median") is None:
        return "–"
    text = format_figure(name, summary["median"])
    if summary.get("n", 0) > 1 and summary["min"] != summary["max"]:
        text += f" ({format_figure(name, summary['min'])}–{format_figure(name, summary['max'])})"
    if 0 < summary.get("n", 0) < repeats:
        text += f" [{summary['n']} of {repeats}]"
    return text


def _case(name: str, case: dict[str, Any]) -> list[str]:
    lines = [f"## {name}", "", case["description"], ""]
    subjects = _subjects(case)
    if not subjects:
        lines += ["No runs.", ""]
    else:
        repeats = ", ".join(f"{s} {case['subjects'][s]['repeats']}" for s in subjects)
        lines += [f"Repeats: {repeats}. Cells: median (min–max over the repeats).", ""]
        lines.append("| figure | " + " | ".join(subjects) + " |")
        lines.append("|---|" + "---|" * len(subjects))
        headline = case["headline"] or sorted(
            {k for s in subjects for k in case["subjects"][s]["figures"]}
        )
        for figure in headline:
            cells = [
                _cell(
                    figure,
                    case["subjects"][s]["figures"].get(figure),
                    case["subjects"][s]["repeats"],
                )
                for s in subjects
            ]
            lines.append(f"| {label(figure)} | " + " | ".join(cells) + " |")
        lines.append("")
        if case["ratios"]:
            peers = [s for s in subjects if s in case["ratios"]]
            main = case.get("main_subject", "writer")
            lines.append(f"{main.capitalize()} ÷ peer (medians):")
            lines.append("")
            lines.append("| figure | " + " | ".join(f"{main} ÷ {p}" for p in peers) + " |")
            lines.append("|---|" + "---|" * len(peers))
            for figure in case["headline"]:
                values = [case["ratios"][p].get(figure) for p in peers]
                if all(v is None for v in values):
                    continue
                cells = ["–" if v is None else f"{v:.2f}x" for v in values]
                lines.append(f"| {label(figure)} | " + " | ".join(cells) + " |")
            lines.append("")
    for subject, reason in case["skipped"].items():
        lines.append(f"- **{subject} skipped**: {reason}")
    for error in case["errors"]:
        lines.append(f"- **failed run**: {error}")
    if case["skipped"] or case["errors"]:
        lines.append("")
    for plot in case["plots"]:
        lines += [f"![{plot}]({plot})", ""]
    return lines


def _load(values: list[float] | None) -> str:
    return " / ".join(f"{v:.2f}" for v in values) if values else "?"


def render(report: dict[str, Any]) -> str:
    machine = report["machine"]
    settings = report["settings"]
    lines = [
        f"# campaign-writer benchmark ({report['mode']} mode)",
        "",
        f"- started {report['started_at']}, {report['duration_s']:.0f} s, "
        f"commit {report['git_commit']}",
        f"- machine: {machine['cores']} cores ({machine['cpu_model']}), "
        f"{machine['memory_mb']:,} MB; "
        f"load average (1/5/15 min) {_load(machine.get('loadavg_start'))} at the start, "
        f"{_load(machine.get('loadavg_end'))} at the end",
        f"- tenant: {settings['tps_limit']:g} calls/s, {settings['max_records']}-record batches, "
        f"linger {settings['linger_ms']} ms, "
        f"Campaign latency {settings['campaign_latency_ms']:g} ms "
        f"(capacity {settings['capacity_records_per_s']:,.0f} records/s)",
        f"- repeats: {report['repeats']}; scale {report['scale']:g}; "
        f"subjects: {', '.join(report['subjects'])}",
        "",
        "The machine-noise section at the end gives, per case and subject, how many cores "
        "processes outside the benchmark kept busy during the runs (report.json: "
        "machine_other_cores): figures taken while that is high are the least trustworthy.",
        "",
    ]
    fill = report.get("backlog_fill")
    if fill:
        lines += [
            f"Backlog filled over HTTP: {fill['events']:,} events at "
            f"{fill['events_per_s']:,.0f} events/s, "
            f"{fill['cpu_us_per_event']:.1f} µs writer CPU per event.",
            "",
        ]
    wake = report.get("wake_cost")
    if wake and "error" in wake:
        lines += [f"What waking costs on this machine: not measured ({wake['error']}).", ""]
    elif wake:
        lines += [
            f"What waking costs on this machine (bench/wakecost.py): a process that sleeps "
            f"{wake['tick_ms']:g} ms spends {wake['wake_us']:,.1f} µs of CPU per wake "
            f"({wake['short_wake_us']:,.1f} µs after {wake.get('short_ms', 0.1):g} ms); an HTTP "
            "responder that does "
            f"nothing but answer spends {wake['responder_us_per_post']:,.1f} µs per post, "
            f"posted every {wake['tick_ms']:g} ms. Per-post costs like these weigh on the "
            "records per CPU-second of small posts.",
            "",
        ]
    lines += [
        "## Targets (medians: the writer's, or the subject named)",
        "",
        "| target | measured in | figure | wanted | met |",
        "|---|---|---|---|---|",
    ]
    for row in report["targets"]:
        met = {True: "yes", False: "**NO**", None: "not measured"}[row["met"]]
        value = format_figure(row["unit"], row["value"])
        lines.append(f"| {row['target']} | {row['source']} | {value} | {row['wanted']} | {met} |")
    lines.append("")
    for name, case in report["cases"].items():
        lines += _case(name, case)
    noise = []
    for name, case in report["cases"].items():
        for subject, data in case["subjects"].items():
            other = (data["figures"].get("machine_other_cores") or {}).get("median")
            if other is not None:
                noise.append(f"{name}/{subject} {other:.2f}")
    if noise:
        lines += [
            "## Machine noise",
            "",
            "Cores busy outside the benchmark during each case (median): " + ", ".join(noise) + ".",
            "",
        ]
    return "\n".join(lines)
