"""Whose fault is it: a lane's calls as evidence, without a network or a clock."""

from __future__ import annotations

from campaign_writer.evidence import LaneHealth, Strike


def test_a_record_failing_beside_a_sibling_that_passed_is_proven() -> None:
    """A sibling's success proves the first strike; enough strikes then dead-letter."""
    health = LaneHealth()
    verdict = health.judge((), "dup", sibling_ok=True, allowed=1)
    assert verdict.dead
    assert verdict.strikes == (Strike(0, True, "dup"),)


def test_strikes_without_any_success_never_dead_letter() -> None:
    """Failing alone again and again proves nothing while nothing else succeeds."""
    health = LaneHealth()
    strikes: tuple[Strike, ...] = ()
    for _ in range(5):
        health.refused(collection=False)
        verdict = health.judge(strikes, "masked", sibling_ok=False, allowed=3)
        strikes = verdict.strikes
        assert not verdict.dead
    assert len(strikes) == 5


def test_a_success_after_a_strike_proves_it() -> None:
    """Records of the lane succeeding after a record's failure prove it was the record's."""
    health = LaneHealth()
    first = health.judge((), "bad", sibling_ok=False, allowed=2)
    assert not first.dead
    health.succeeded(collection=True)
    second = health.judge(first.strikes, "bad", sibling_ok=False, allowed=2)
    assert second.dead


def test_turning_suspect_voids_the_unproven_strikes_of_the_moment() -> None:
    """Strikes the instance may have caused are forgotten; proven ones are kept."""
    health = LaneHealth()
    proven = health.judge((), "x", sibling_ok=True, allowed=3).strikes
    unproven = health.judge((), "x", sibling_ok=False, allowed=3).strikes
    assert health.turn_suspect(10.0, "SOP-330023")
    assert not health.turn_suspect(11.0, "again")  # already suspect
    assert health.judge(proven, "x", sibling_ok=False, allowed=3).strikes[0] == proven[0]
    assert len(health.judge(unproven, "x", sibling_ok=False, allowed=3).strikes) == 1


def test_the_streak_calls_for_a_control_and_a_success_ends_suspicion() -> None:
    """Refusals in a row call for a control; a success resets it and ends a suspicion."""
    health = LaneHealth()
    for _ in range(3):
        health.refused(collection=True)
    assert not health.needs_control(4)
    health.refused(collection=False)
    assert health.needs_control(4)
    health.turn_suspect(5.0, "fault")
    assert health.suspect
    assert health.succeeded(collection=False) == 5.0
    assert not health.suspect
    assert health.streak == 0
    assert health.succeeded(collection=False) is None


def test_pauses_double_up_to_the_cap_and_start_over_after_recovery() -> None:
    """A suspect lane's pauses grow 1, 2, 4 ... up to the cap; a success starts over."""
    health = LaneHealth()
    health.turn_suspect(0.0, "fault")
    assert [health.next_pause(1.0, 10.0) for _ in range(6)] == [1, 2, 4, 8, 10, 10]
    health.succeeded(collection=False)
    health.turn_suspect(1.0, "fault")
    assert health.next_pause(1.0, 10.0) == 1


def test_collections_are_doubted_then_refused_on_clean_pairs() -> None:
    """Collections failing while singles pass raise a doubt; two clean pairs settle it."""
    health = LaneHealth()
    for _ in range(3):
        health.refused(collection=True)
    assert not health.doubts_collections()  # no single record has passed yet
    health.succeeded(collection=False)
    assert health.doubts_collections()
    health.clean_pair()
    assert not health.collections_refused()
    health.clean_pair()
    assert health.collections_refused()
    health.succeeded(collection=True)
    assert not health.collections_refused()
    assert not health.doubts_collections()


def test_an_instance_fault_is_not_mistaken_for_refused_collections() -> None:
    """Collections and single records failing alike raise no doubt about collections."""
    health = LaneHealth()
    for _ in range(10):
        health.refused(collection=True)
        health.refused(collection=False)
    assert not health.doubts_collections()
    assert not health.collections_refused()


def test_a_dead_letter_is_filed_under_the_code_that_points_at_the_data() -> None:
    """Among a record's refusals, the one whose words point at the data names it."""
    health = LaneHealth()
    first = health.judge((), "PostgreSQL", True, 3, code="duplicate-key", data=True)
    second = health.judge(first.strikes, "masked", True, 3, code="SOP-330023")
    third = health.judge(second.strikes, "transient", True, 3)
    assert third.dead
    assert third.code == "duplicate-key"
    unknown = health.judge((), "masked", True, 1, code="SOP-330023")
    assert unknown.code == "SOP-330023"


def test_voided_refusals_still_name_the_fault() -> None:
    """A refusal voided by a suspicion counts for nothing, yet names the dead letter."""
    health = LaneHealth()
    verdict = health.judge(
        (), "PostgreSQL duplicate key", False, 3, code="duplicate-key", data=True
    )
    health.turn_suspect(1.0, "fault")
    health.succeeded(collection=False)
    for _ in range(3):
        verdict = health.judge(verdict.history, "transient", True, 3)
    assert verdict.dead
    assert len(verdict.strikes) == 3  # the voided refusal does not count
    assert len(verdict.history) == 4
    assert verdict.code == "duplicate-key"
    assert verdict.faults == ["PostgreSQL duplicate key", "transient"]
