"""Whose fault is it: a lane's calls as evidence, without a network or a clock."""

from __future__ import annotations

from campaign_writer.evidence import LaneHealth, Strike


def refuse(health: LaneHealth, strikes: tuple[Strike, ...], *, sibling: bool = False, **kw):
    """One call of the record alone, refused: send it, then judge it (allowed 3)."""
    seq = health.send()
    health.refused(collection=False)
    return health.judge(strikes, kw.pop("fault", "dup"), seq, sibling, 3, **kw)


def succeed(health: LaneHealth, collection: bool = False) -> None:
    health.succeeded(collection, health.send())


def test_a_record_failing_beside_a_sibling_that_passed_is_proven() -> None:
    """A sibling's success proves a strike; with one strike allowed, that is enough."""
    health = LaneHealth()
    seq = health.send()
    verdict = health.judge((), "dup", seq, True, 1, data=True)
    assert verdict.dead
    assert verdict.strikes == (Strike(seq, True, "dup", "", True),)


def test_strikes_without_any_success_never_dead_letter() -> None:
    """Failing alone again and again proves nothing while nothing else succeeds."""
    health = LaneHealth()
    verdict = refuse(health, (), data=True)
    for _ in range(5):
        verdict = refuse(health, verdict.history, data=True)
        assert not verdict.dead
    assert len(verdict.strikes) == 6


def test_each_earlier_strike_must_be_followed_by_a_success() -> None:
    """A record goes once every refusal but the newest was followed by another record's
    success; refusals back to back, with no success between, do not add up."""
    health = LaneHealth()
    first = refuse(health, (), data=True)
    succeed(health)
    second = refuse(health, first.history, data=True)
    third = refuse(health, second.history, data=True)
    assert not third.dead  # the second refusal was never followed by a success
    succeed(health)
    fourth = refuse(health, third.history, data=True)
    assert fourth.dead


def test_a_success_sent_before_the_refusal_proves_nothing() -> None:
    """A call sent before the refused one may have been answered before the fault began."""
    health = LaneHealth()
    early = health.send()  # sent first, answered last
    verdict = refuse(health, (), data=True)
    health.succeeded(False, early)
    for _ in range(2):
        verdict = refuse(health, verdict.history, data=True)
    assert not verdict.dead


def test_turning_suspect_voids_unproven_strikes_and_keeps_proven_ones() -> None:
    """Strikes the instance may have caused are forgotten; proven ones are kept."""
    health = LaneHealth()
    by_sibling = refuse(health, (), sibling=True, data=True)
    unproven = refuse(health, (), data=True)
    assert health.turn_suspect(10.0, "SOP-330023")
    assert not health.turn_suspect(11.0, "again")  # already suspect
    succeed(health)
    assert refuse(health, by_sibling.history, data=True).strikes[0] == by_sibling.strikes[0]
    assert len(refuse(health, unproven.history, data=True).strikes) == 1


def test_a_fault_that_hides_its_cause_takes_more_strikes() -> None:
    """Without words pointing at the data, two more proven refusals are needed."""
    health = LaneHealth()
    verdict = refuse(health, (), sibling=True, fault="masked")
    for _ in range(3):
        succeed(health)
        verdict = refuse(health, verdict.history, fault="masked")
    assert len(verdict.strikes) == 4 and not verdict.dead
    succeed(health)
    verdict = refuse(health, verdict.history, fault="masked")
    assert verdict.dead


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
    assert health.succeeded(False, health.send()) == 5.0
    assert not health.suspect
    assert health.streak == 0
    assert health.succeeded(False, health.send()) is None


def test_pauses_double_up_to_the_cap_and_start_over_after_recovery() -> None:
    """A suspect lane's pauses grow 1, 2, 4 ... up to the cap; a success starts over."""
    health = LaneHealth()
    health.turn_suspect(0.0, "fault")
    assert [health.next_pause(1.0, 10.0) for _ in range(6)] == [1, 2, 4, 8, 10, 10]
    succeed(health)
    health.turn_suspect(1.0, "fault")
    assert health.next_pause(1.0, 10.0) == 1


def test_collections_are_doubted_then_refused_on_clean_pairs() -> None:
    """Collections failing while singles pass raise a doubt; two clean pairs settle it."""
    health = LaneHealth()
    for _ in range(3):
        health.refused(collection=True)
    assert not health.doubts_collections()  # no single record has passed yet
    succeed(health)
    assert health.doubts_collections()
    health.clean_pair()
    assert not health.collections_refused()
    health.clean_pair()
    assert health.collections_refused()
    succeed(health, collection=True)
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


def test_voided_refusals_still_name_the_fault() -> None:
    """A refusal voided by a suspicion counts for nothing, yet names the dead letter."""
    health = LaneHealth()
    verdict = refuse(health, (), fault="PostgreSQL duplicate key", code="duplicate-key", data=True)
    health.turn_suspect(1.0, "fault")
    verdict = refuse(health, verdict.history, sibling=True, fault="transient")
    for _ in range(2):
        succeed(health)
        verdict = refuse(health, verdict.history, fault="transient")
    assert len(verdict.strikes) == 3  # the voided refusal does not count
    assert len(verdict.history) == 4
    assert verdict.code == "duplicate-key"
    assert verdict.faults == ["PostgreSQL duplicate key", "transient"]


def test_marks_made_while_suspect_never_count() -> None:
    """A refusal noted while the lane is suspect counts neither for nor against."""
    health = LaneHealth()
    health.turn_suspect(0.0, "fault")
    mark = Strike(health.send(), False, "masked", void=True)
    verdict = health.judge((mark,), "dup", health.send(), True, 1, data=True)
    assert verdict.dead
    assert mark not in verdict.strikes


def test_a_proven_records_retrial_does_not_grow_the_streak() -> None:
    """Records already proven to fail alone are expected to fail again: their refusals
    do not make the lane look broken; any other refusal does."""
    health = LaneHealth()
    for _ in range(10):
        health.refused(False, counts=False)
    assert health.streak == 0 and not health.needs_control(4)
    for _ in range(4):
        health.refused(False)
    assert health.needs_control(4)
