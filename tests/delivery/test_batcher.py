"""Coalescing lanes: merges, flush policy, key affinity and order through retries."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaign_writer.batcher import Batch, Batcher, Entry, LaneId, merge_operations
from campaign_writer.campaign.documents import StagingRecord
from campaign_writer.metrics import Metrics

LANE = LaneId("dem:sampleTableStg", "IngestExt")
OTHER = LaneId("nms:recipient", "WriteCollection")


def entry(
    id_: int, key: str | None, now: float = 0.0, op: str | None = None, **values: str
) -> Entry:
    record = StagingRecord({"id": key or str(id_), **values}, op, "@id" if key else None)
    made = Entry.of(key, record, [id_], 1000.0 + id_, now)
    made.size = 50  # a round size keeps the byte-limit arithmetic below readable
    return made


def attrs(e: Entry) -> dict[str, str]:
    return dict(e.record().attrs)


def op(e: Entry) -> str | None:
    return e.record().operation


def batcher(**kwargs: float) -> Batcher:
    options = {"max_records": 3, "max_bytes": 10_000, "linger_s": 0.2} | kwargs
    return Batcher(
        max_records=int(options["max_records"]),
        max_bytes=int(options["max_bytes"]),
        linger_s=options["linger_s"],
    )


def take(b: Batcher, now: float = 100.0) -> Batch:
    batch, _ = b.next_batch(now)
    assert batch is not None
    return batch


def test_same_key_merges_later_attributes_win() -> None:
    """Two records of one key become one entry carrying both ids; newer values win."""
    b = batcher()
    b.add(LANE, entry(1, "k", testcol1="old", testcol2="kept"))
    b.add(LANE, entry(2, "k", testcol1="new"))
    batch = take(b)
    assert len(batch.entries) == 1
    assert attrs(batch.entries[0]) == {"id": "k", "testcol1": "new", "testcol2": "kept"}
    assert batch.entries[0].ids == [1, 2]
    assert batch.lane.merges.value == 1
    assert batch.record_count == 2


def test_merges_are_counted_once_for_stats_and_prometheus() -> None:
    """Given the metrics' family, a lane's merge count is the exported series itself."""
    metrics = Metrics()
    b = Batcher(max_records=3, max_bytes=10_000, linger_s=0.2, merges=metrics.records_coalesced)
    b.add_many(LANE, [entry(1, "k"), entry(2, "k"), entry(3, "k"), entry(4, "j")])
    assert b.lanes[LANE].stats()["merges"] == 2
    text = metrics.exposition().decode()
    assert f'records_coalesced_total{{method="{LANE.method}",schema="{LANE.schema}"}} 2.0' in text


def test_records_without_key_never_merge() -> None:
    """Unkeyed inserts stay separate records."""
    b = batcher()
    b.add(LANE, entry(1, None, testcol1="a"))
    b.add(LANE, entry(2, None, testcol1="a"))
    assert len(take(b).entries) == 2


def test_delete_wins_over_earlier_writes_and_blocks_later_ones() -> None:
    """A delete replaces the writes before it; a write after it waits for the next batch."""
    b = batcher()
    b.add(LANE, entry(1, "k", testcol1="a"))
    b.add(LANE, entry(2, "k", op="delete"))
    b.add(LANE, entry(3, "k", testcol1="again"))
    first = take(b)
    assert [(op(e), e.ids) for e in first.entries] == [("delete", [1, 2])]
    assert b.next_batch(100.0)[0] is None  # k is held while the delete is in flight
    b.finished(first, first.entries)
    second = take(b)
    assert [(op(e), attrs(e)["testcol1"]) for e in second.entries] == [(None, "again")]


@pytest.mark.parametrize(
    ("older", "newer", "expected"),
    [
        ("insert", "update", (True, "insert")),
        ("update", "insert", (True, "insertOrUpdate")),
        ("insertOrUpdate", "insertOrUpdate", (True, "insertOrUpdate")),
        (None, None, (True, None)),
        ("delete", "insert", (False, None)),
        ("insert", "delete", (True, "delete")),
        ("none", "insert", (False, None)),
        (None, "update", (False, None)),
    ],
)
def test_operation_merge_table(
    older: str | None, newer: str | None, expected: tuple[bool, str | None]
) -> None:
    """Write operations on one key combine so the merged call creates what either would."""
    assert merge_operations(older, newer) == expected


def test_held_key_does_not_block_other_keys() -> None:
    """While k1 is in flight, new k1 records wait and merge; k2 and k3 are sent meanwhile."""
    b = batcher()
    b.add(LANE, entry(1, "k1", testcol1="v1"))
    first = take(b, now=100.0)
    b.add(LANE, entry(2, "k1", testcol1="v2"))
    b.add(LANE, entry(3, "k2"))
    b.add(LANE, entry(4, "k1", testcol1="v3"))
    b.add(LANE, entry(5, "k3"))
    second = take(b, now=100.0)
    assert [e.key for e in second.entries] == ["k2", "k3"]
    b.finished(first, first.entries)
    third = take(b, now=100.0)
    assert [(e.key, attrs(e)["testcol1"], e.ids) for e in third.entries] == [("k1", "v3", [2, 4])]


def test_failed_entry_goes_first_and_newer_values_merge_on_top() -> None:
    """A put-back entry precedes newer ones and is overlaid by the newer values of its key."""
    b = batcher()
    b.add(LANE, entry(1, "k1", testcol1="old", testcol2="only-old"))
    b.add(LANE, entry(2, "k2"))
    batch = take(b)
    b.add(LANE, entry(3, "k3"))
    b.add(LANE, entry(4, "k1", testcol1="new"))
    b.put_back(batch, batch.entries)
    again = take(b)
    assert [e.key for e in again.entries] == ["k1", "k2", "k3"]
    k1 = again.entries[0]
    assert attrs(k1) == {"id": "k1", "testcol1": "new", "testcol2": "only-old"}
    assert k1.ids == [1, 4]
    assert b.pending == 4


def test_flush_on_count_bytes_or_linger() -> None:
    """A lane waits for linger unless it has max_records entries or max_bytes of them."""
    b = batcher(max_records=3, max_bytes=120, linger_s=0.2)
    b.add(LANE, entry(1, "a", now=10.0))
    batch, wake = b.next_batch(10.05)
    assert batch is None
    assert wake == pytest.approx(10.2)
    batch, _ = b.next_batch(10.2)
    assert batch is not None
    b.add(LANE, entry(2, "b", now=11.0))
    b.add(LANE, entry(3, "c", now=11.0))
    b.add(LANE, entry(4, "d", now=11.0))  # 150 bytes >= 120: due at once
    batch, _ = b.next_batch(11.0)
    assert batch is not None
    assert [e.key for e in batch.entries] == ["b", "c"]  # the third would pass 120 bytes


def test_oldest_lane_goes_first_and_backoff_delays_a_lane() -> None:
    """Among due lanes the one with the oldest record wins; a backed-off lane waits."""
    b = batcher(linger_s=0.0)
    b.add(OTHER, entry(1, "x", now=5.0))
    b.add(LANE, entry(2, "y", now=6.0))
    assert take(b, now=7.0).lane.id == OTHER
    b.lane(LANE).not_before = 9.0
    batch, wake = b.next_batch(7.0)
    assert batch is None
    assert wake == 9.0


def test_single_record_mode_sends_one_entry_per_batch() -> None:
    """A lane without collections (fallback or 'never') sends entries one at a time."""
    b = Batcher(max_records=500, max_bytes=1 << 20, linger_s=0.0, modes={LANE: "never"})
    for i in range(3):
        b.add(LANE, entry(i, f"k{i}"))
    batch = take(b)
    assert not batch.collection
    assert len(batch.entries) == 1


OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "add", "add", "take", "settle"]),
        st.sampled_from(["k0", "k1", "k2", "k3", None]),
        st.sampled_from([None, None, "delete"]),
        st.integers(0, 3),
        st.booleans(),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(OPS, st.randoms(use_true_random=False))
def test_final_state_matches_arrival_order_whatever_fails(ops: list, rng: random.Random) -> None:
    """Random adds, batches in flight, failures and completions in any order: Campaign ends
    with exactly what applying every record in arrival order gives, and every id is settled
    once."""
    b = batcher(max_records=3, linger_s=0.0)
    reference: dict[str, dict[str, str]] = {}
    campaign: dict[str, dict[str, str]] = {}
    settled: list[int] = []
    in_flight: list[Batch] = []
    next_id = 0

    def apply(
        store: dict[str, dict[str, str]], key: str, op: str | None, attrs: dict[str, str]
    ) -> None:
        if op == "delete":
            store.pop(key, None)
        else:
            store.setdefault(key, {}).update(attrs)

    def settle(batch: Batch, ok: bool) -> None:
        if ok:
            for e in batch.entries:
                apply(campaign, e.key or f"#{e.ids[0]}", op(e), attrs(e))
                settled.extend(e.ids)
            b.finished(batch, batch.entries)
        else:
            b.put_back(batch, batch.entries)

    for action, key, operation, value, ok in ops:
        if action == "add":
            if operation == "delete":
                record = Entry.of(
                    key,
                    StagingRecord({"id": key or str(next_id)}, "delete", "@id"),
                    [next_id],
                    0.0,
                    0.0,
                )
            else:
                record = entry(next_id, key, op=operation, v=str(value))
            apply(reference, key or f"#{next_id}", operation, attrs(record))
            b.add(LANE, record)
            next_id += 1
        elif action == "take":
            batch, _ = b.next_batch(1e9)
            if batch is not None:
                in_flight.append(batch)
        elif in_flight:
            settle(in_flight.pop(rng.randrange(len(in_flight))), ok)
    while in_flight:
        settle(in_flight.pop(rng.randrange(len(in_flight))), True)
    while True:
        batch, _ = b.next_batch(1e9)
        if batch is None:
            break
        settle(batch, True)
    assert campaign == reference
    assert sorted(settled) == list(range(next_id))
    assert b.pending == 0


def test_add_many_says_when_a_lane_became_due_sooner() -> None:
    """The feeder wakes the dispatcher only on True: a first entry (a linger starts), a
    lane that fills up, or a new key in a lane whose pending keys were all held."""
    b = batcher(max_records=3, linger_s=0.2)
    assert b.add_many(LANE, [entry(1, "a", now=10.0)]) is True  # empty -> due at 10.2
    assert b.add_many(LANE, [entry(2, "b", now=10.1)]) is False  # still due at 10.2
    assert b.add_many(LANE, [entry(3, "a", now=10.1)]) is False  # merged into "a"
    assert b.add_many(LANE, [entry(4, "c", now=10.1)]) is True  # full: due now
    assert b.add_many(OTHER, []) is False
    batch = take(b)
    assert [e.key for e in batch.entries] == ["a", "b", "c"]
    assert b.add_many(LANE, [entry(5, "a", now=11.0)]) is True  # lane was empty again
    assert b.next_batch(11.5) == (None, None)  # "a" is held by the batch in flight
    assert b.lanes[LANE].blocked
    assert b.add_many(LANE, [entry(6, "a", now=11.5)]) is False  # merges; still held
    assert b.add_many(LANE, [entry(7, "d", now=11.5)]) is True  # a sendable key
    assert b.pending == 7


def test_pending_counts_records_when_entries_of_one_call_merge() -> None:
    """Two records of one key in one add_many merge into one entry; pending counts two
    records, and zero once their batch is finished."""
    b = batcher()
    b.add_many(LANE, [entry(1, "k", testcol1="a"), entry(2, "k", testcol1="b"), entry(3, "j")])
    assert b.pending == 3
    batch = take(b)
    assert sorted(i for e in batch.entries for i in e.ids) == [1, 2, 3]
    b.finished(batch, batch.entries)
    assert b.pending == 0


def test_a_struck_record_waits_for_a_success_sent_after_its_strike() -> None:
    """A record refused alone in call 5 is not tried again while other records can go,
    until a call sent after it succeeds; then it goes alone, as a retrial."""
    from campaign_writer.evidence import Strike

    b = batcher(max_records=2)
    bad = entry(1, "bad")
    b.add(LANE, bad)
    lane = b.lanes[LANE]
    first = take(b)
    lane.health.sent = 5
    bad.strikes = (Strike(5, True, "duplicate key", "", True),)
    b.put_back(first, first.entries)  # back at the front of the lane
    for n in (2, 3):
        b.add(LANE, entry(n, f"good{n}"))
    batch = take(b)
    assert [e.key for e in batch.entries] == ["good2", "good3"]
    assert not batch.retrial
    b.finished(batch, batch.entries)
    # Nothing else to send, but the struck record still has no evidence: with nothing
    # in flight it may go (the lane's streak bounds such tries), but not as a retrial.
    b.add(LANE, entry(4, "good4"))
    held = take(b)
    assert [e.key for e in held.entries] == ["good4"]
    assert b.next_batch(100.0)[0] is None, "a struck record went while a call is in flight"
    lane.health.succeeded(True, seq=6)  # call 6, sent after the strike, succeeded
    b.finished(held, held.entries)
    retry = take(b)
    assert [e.key for e in retry.entries] == ["bad"]
    assert retry.retrial and not retry.collection


def test_only_struck_records_left_they_go_without_evidence() -> None:
    """The end of a stream: no other record will bring a success, so a struck record
    still goes (not as a retrial: its refusal counts in the lane's streak)."""
    from campaign_writer.evidence import Strike

    b = batcher()
    b.add(LANE, entry(1, "bad"))
    first = take(b)
    first.entries[0].strikes = (Strike(1, True, "duplicate key", "", True),)
    b.lanes[LANE].health.sent = 1
    b.put_back(first, first.entries)
    again = take(b)
    assert [e.key for e in again.entries] == ["bad"]
    assert not again.retrial


def test_the_batcher_backs_a_lane_off_and_a_delivery_ends_the_streak() -> None:
    b = batcher(linger_s=0.0)
    b.add(LANE, entry(1, "a"))
    batch = take(b)
    waits = b.back_off(batch, batch.entries, 100.0, lambda failures: 2.0 * failures)
    lane = b.lane(LANE)
    assert waits == 2.0 and lane.failures == 1 and lane.count == 1
    assert b.next_batch(101.0) == (None, 102.0)
    b.pause(lane, 101.0)  # an earlier pause never shortens the wait
    batch = take(b, 102.0)
    assert b.back_off(batch, batch.entries, 102.0, lambda failures: 2.0 * failures) == 4.0
    batch = take(b, 106.0)
    b.delivered(batch, batch.entries)
    assert lane.failures == 0 and b.pending == 0 and not lane.held


def test_falling_back_sends_one_record_per_call_once() -> None:
    b = batcher(linger_s=0.0)
    for i in range(3):
        b.add(LANE, entry(i, f"k{i}"))
    lane = b.lane(LANE)
    assert b.fall_back(lane, "refused") and not b.fall_back(lane, "again")
    assert lane.fallback == "refused" and lane.stats()["collection_fallback"] == "refused"
    batch = take(b)
    assert len(batch.entries) == 1 and not batch.collection
    assert sorted(b.unsent_ids()) == [1, 2]
