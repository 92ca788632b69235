"""The scale-out and auto-limit cases: what each member runs with, and the figures of a
made-up fleet run."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from bench.analysis import run_figures
from bench.fleet import member_settings, two_route_events, two_route_events_even
from bench.report import targets
from bench.scenarios import METHOD_LIMITS, build_cases
from bench.subjects import EXAMPLE_CONFIG

from campaign_writer.config import load
from campaign_writer.router import Router

T0 = 1_000_000.0


def call(t: float, status: int = 200, method: str = "Ingest") -> dict:
    outcome = {200: "ok", 429: "throttled"}.get(status, "inject:500")
    return {
        "t": T0 + t,
        "method": method,
        "records": 500 if status == 200 else 0,
        "status": status,
        "latency_ms": 50.0,
        "outcome": outcome,
    }


def evenly(
    start: float, end: float, per_s: float, status: int = 200, method: str = "Ingest"
) -> list[dict]:
    count = round((end - start) * per_s)
    return [call(start + (i + 0.5) / per_s, status, method) for i in range(count)]


def case(name: str, mode: str = "quick"):
    return next(c for cases in build_cases(mode).values() for c in cases if c.name == name)


def member(role: str, throttle: dict | None, *, fallback_at: float | None = None) -> dict:
    shared = throttle and {"budget": "shared", **throttle}
    samples = [{"t": 1.0, "throttle": shared}]
    if fallback_at is not None:
        samples.append({"t": fallback_at, "throttle": {"budget": "fallback"}})
    samples.append({"t": 30.0, "throttle": shared})
    return {"role": role, "final": {}, "cpu_s": 1.0, "samples": samples}


def fleet_run(calls: list[dict], members: list[dict], end: float, **extra: object) -> dict:
    return {
        "t0": T0,
        "measure_end": end,
        "calls": calls,
        "members": members,
        "samples": [],
        "cpu_s": 3.0,
        "peak_rss_mb": 60.0,
        **extra,
    }


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_utilisation_windows_are_at_least_20_s(mode: str) -> None:
    """Every scale-out case and each one-writer limiter model measures over >= 20 s."""
    for name in ("scale-out", "scale-out/uneven", "scale-out/redis-loss"):
        assert case(name, mode).duration_s >= 20
    for model in ("sliding", "fixed", "token_bucket"):
        assert case(f"limiter-models/{model}", mode).duration_s >= 20
    loss = case("scale-out/redis-loss", mode)
    assert loss.extra["redis_kill_s"] - loss.warmup_s >= 20  # before Redis dies
    end = loss.warmup_s + loss.duration_s
    assert end - loss.extra["redis_kill_s"] - loss.extra["redis_down_s"] >= 20  # after


def test_members_differ_only_in_how_they_share_the_budget(tmp_path: Path) -> None:
    """shared: full limit and one named budget in Redis; storm: full limit, no budget;
    split: a third of the limit; auto: tps_limit "auto"."""
    scale_out = case("scale-out")
    budget = ("redis://127.0.0.1:6379/3", "bench-run-1")

    def settings(subject: str, the_case=scale_out) -> list[str]:
        return member_settings(subject, the_case, "http://sim", tmp_path / "q", budget)

    shared, storm, split = settings("shared"), settings("storm"), settings("split")
    assert 'campaign.budget.redis_url="redis://127.0.0.1:6379/3"' in shared
    assert 'campaign.budget.name="bench-run-1"' in shared
    assert "campaign.tps_limit=20" in shared and "campaign.tps_limit=20" in storm
    assert not any("budget" in item for item in storm + split)
    assert "campaign.tps_limit=6.66667" in split
    auto = settings("auto", case("auto-limit"))
    assert auto[-1] == 'campaign.tps_limit="auto"' and not any("budget" in i for i in auto)
    assert settings("known", case("auto-limit")) == settings("storm", case("auto-limit"))
    together = settings("auto", case("auto-limit/shared"))  # three learn one limit
    assert 'campaign.tps_limit="auto"' in together
    assert 'campaign.budget.name="bench-run-1"' in together


def test_fleet_figures_from_the_call_log_and_the_members_stats() -> None:
    """Aggregate utilisation, the busiest second, windows over the limit and Redis round
    trips per call (the members' totals over the calls they admitted)."""
    scale_out = case("scale-out")
    # 19 served calls/s over the window, plus one burst of 3 extra calls (429s) at 12 s.
    calls = evenly(0, 25, 19) + [call(12.0 + i * 0.01, 429) for i in range(3)]
    members = [
        member("backlog", {"redis_round_trips": 40, "calls_admitted": 160}) for _ in range(3)
    ]
    figures = run_figures(scale_out, fleet_run(calls, members, 25.0))
    assert figures["utilisation"] == pytest.approx(0.95)
    assert figures["max_ok_calls_in_1s"] == 19
    assert figures["max_calls_in_1s"] == 22
    # The 2nd and 3rd extra calls end windows of 21 and 22 calls, and so do the 19 calls of
    # the second after them, which keep the extra calls in their window.
    assert figures["windows_over_limit"] == 2 + 19
    assert figures["throttled_calls"] == 3
    assert figures["redis_round_trips_per_call"] == pytest.approx(0.25)
    assert figures["fallback_members"] == 0
    assert figures["window_s"] == 20


def test_round_trips_are_unknown_without_a_shared_budget() -> None:
    """A writer that reports no budget, or a local one, gives no round-trip figure, not 0."""
    calls = evenly(0, 25, 20)
    figures = run_figures(case("scale-out"), fleet_run(calls, [member("x", None)], 25))
    assert figures["redis_round_trips_per_call"] is None
    assert figures["fallback_members"] is None
    local = member("x", {"budget": "local", "redis_round_trips": 0, "calls_admitted": 500})
    figures = run_figures(case("scale-out"), fleet_run(calls, [local], 25))
    assert figures["redis_round_trips_per_call"] is None
    assert figures["fallback_members"] == 0


def test_redis_loss_figures_count_the_loss_and_time_the_recovery() -> None:
    """429s while Redis is down are counted there; recovery is the time from Redis's
    return to the first second at 95% of the limit."""
    loss = case("scale-out/redis-loss")
    kill, down = loss.extra["redis_kill_s"], loss.extra["redis_down_s"]
    back, end = kill + down, loss.warmup_s + loss.duration_s
    calls = (
        evenly(0, kill, 20)
        + evenly(kill, back, 15)
        + evenly(kill, back, 0.5, status=429)
        + evenly(back, back + 2, 10)
        + evenly(back + 2, end, 20)
    )
    members = [member("backlog", {"redis_round_trips": 1, "calls_admitted": 10}, fallback_at=26)]
    run = fleet_run(calls, members, end, redis_events={"killed_at_s": kill, "back_at_s": back})
    figures = run_figures(loss, run)
    assert figures["throttled_during_loss"] == round(down * 0.5)
    assert figures["throttled_ratio_during_loss"] == pytest.approx(0.5 / 15.5)
    assert figures["utilisation_during_loss"] == pytest.approx(0.75)
    assert figures["utilisation_before_loss"] == pytest.approx(1.0)
    assert figures["redis_recovery_s"] == 3.0
    assert figures["fallback_members"] == 1


def test_auto_limit_figures_time_the_search_and_each_change() -> None:
    """Time to 95% (3 s in a row) of the first limit, the 429s spent on the way, and the
    same after the limit drops to 12 and comes back to 20."""
    auto = case("auto-limit")
    (drop, _), (rise, _) = auto.limit_changes()
    end = auto.duration_s
    calls = (
        evenly(0, 5, 8)  # probing upward
        + evenly(5, 8, 14)
        + evenly(5, 8, 1, status=429)
        + evenly(8, drop, 19.5)
        + evenly(drop, drop + 4, 12)
        + evenly(drop, drop + 4, 2, status=429)
        + evenly(drop + 4, rise, 12)
        + evenly(rise, rise + 10, 15)
        + evenly(rise + 10, end, 20)
    )
    members = [member("backlog", {"learned_limit": 19.5})]
    figures = run_figures(auto, fleet_run(calls, members, end))
    assert figures["reach_s"] == 9.0
    assert figures["throttled_finding"] == 3
    assert figures["follow_drop_s"] == 1.0
    assert figures["throttled_after_drop"] == 2
    assert figures["follow_rise_s"] == 11.0
    assert figures["throttled_after_rise"] == 0
    assert figures["utilisation_after_rise"] == pytest.approx(1.0)
    assert figures["learned_limit_end"] == 19.5
    assert figures["throttled_ratio_run"] == pytest.approx(11 / len(calls))


def test_scaling_shortens_the_fleet_timings_but_not_the_light_load() -> None:
    """--scale multiplies when Redis dies and how long it stays down, not the light rate."""
    from bench.runner import scaled

    loss, uneven = case("scale-out/redis-loss"), case("scale-out/uneven")
    half = scaled(loss, 0.5)
    assert half.extra["redis_kill_s"] == loss.extra["redis_kill_s"] / 2
    assert half.extra["redis_down_s"] == loss.extra["redis_down_s"] / 2
    assert scaled(uneven, 0.4).extra["light_rate"] == uneven.extra["light_rate"]


def test_a_figure_some_repeats_lack_says_how_many_have_it() -> None:
    """A time to 95% reached in 1 of 3 repeats shows its median with "[1 of 3]", so the
    median of the others does not pass for all of them."""
    from bench.markdown import _cell

    reached_once = {"median": 25.0, "min": 25.0, "max": 25.0, "n": 1}
    assert _cell("reach_s", reached_once, 3) == "25.00 s [1 of 3]"
    every = {"median": 11.0, "min": 11.0, "max": 19.0, "n": 2}
    assert _cell("reach_s", every, 2) == "11.00 s (11.00 s–19.00 s)"
    assert _cell("reach_s", None, 3) == "–"


def test_only_the_per_method_subject_is_told_the_method_limits(tmp_path: Path) -> None:
    """per-method runs with [campaign.limits] as the simulator enforces them (and the
    writer's config takes them); tenant-only with the tenant limit alone; the simulator
    of every other case enforces no method limit."""
    methods = case("method-limits")
    budget = ("redis://127.0.0.1:6379/3", "bench-run-1")
    told = member_settings("per-method", methods, "http://sim", tmp_path / "q", budget)
    alone = member_settings("tenant-only", methods, "http://sim", tmp_path / "q", budget)
    assert [s for s in told if s not in alone] == [
        "campaign.limits.Ingest=12",
        "campaign.limits.WriteCollection=5",
    ]
    assert not any("limits" in s or "budget" in s for s in alone)
    config = load(EXAMPLE_CONFIG, told)
    assert dict(config.campaign.limits) == methods.knobs_for_run()["method_limits"]
    assert dict(config.campaign.limits) == METHOD_LIMITS
    every = [c for cases in build_cases("quick").values() for c in cases]
    even = case("method-limits/even-mix")
    assert even.knobs_for_run()["method_limits"] == METHOD_LIMITS
    assert even.subjects == ("per-method",) and even.extra["roles"] == ("two-routes-even",)
    others = [c for c in every if c.scenario != "method-limits"]
    assert all(c.knobs_for_run()["method_limits"] == {} for c in others)


def test_the_two_route_backlog_feeds_both_methods_in_the_ratio_of_their_limits() -> None:
    """Of every 17 events, 12 go to the Ingest route and 5 to the WriteCollection route,
    each with a key of its own (nothing merges)."""
    lines = two_route_events().take(170, created=0.0)
    router = Router.from_config(load(EXAMPLE_CONFIG))
    routing = router.route_lines(lines, source="t", created_at=0.0)
    assert routing.rejected == []
    methods = [item.lane.rpartition("#")[2] for item in routing.items]
    assert methods.count("Ingest") == 120 and methods.count("WriteCollection") == 50
    assert len({item.key for item in routing.items}) == 170
    assert orjson.loads(lines[12])["type"] == "recipient"


def test_the_even_backlog_feeds_both_methods_one_for_one() -> None:
    """The even-mix case's backlog alternates the two routes: as many WriteCollection
    events as Ingest ones, whatever the limits."""
    lines = two_route_events_even().take(100, created=0.0)
    routing = Router.from_config(load(EXAMPLE_CONFIG)).route_lines(
        lines, source="t", created_at=0.0
    )
    methods = [item.lane.rpartition("#")[2] for item in routing.items]
    assert methods.count("Ingest") == 50 and methods.count("WriteCollection") == 50


def test_method_limits_figures_and_targets() -> None:
    """The case reports each method against its own limit and the tenant's utilisation;
    its targets read the per-method subject's medians."""
    methods = case("method-limits")
    calls = (
        evenly(0, 25, 11.8)
        + evenly(0, 25, 4.9, method="WriteCollection")
        + [call(10.0, 429, "WriteCollection")]
    )
    figures = run_figures(methods, fleet_run(calls, [member("two-routes", None)], 25.0))
    assert figures["Ingest.limit_share"] == pytest.approx(11.8 / 12)
    assert figures["WriteCollection.ok_calls_per_s"] == pytest.approx(4.9)
    assert figures["WriteCollection.throttled_calls"] == 1
    assert figures["Ingest.throttled_calls"] == 0
    assert figures["utilisation"] == pytest.approx((11.8 + 4.9) / 20)
    assert figures["throttled_calls"] == 1
    assert set(methods.figures) <= set(figures)
    summary = {k: {"median": v} for k, v in figures.items()}
    report = {"cases": {"method-limits": {"subjects": {"per-method": {"figures": summary}}}}}
    rows = {row["target"]: row for row in targets(report) if row["source"].startswith("method")}
    assert rows["per-method limits: Ingest >= 95% of its own limit"]["met"] is True
    assert rows["per-method limits: WriteCollection >= 95% of its own limit"]["met"] is True
    assert rows["per-method limits: 429s <= 0.5%"]["met"] is True
