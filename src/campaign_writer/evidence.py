"""Whose fault is it? A lane's calls as evidence: a bad record, or a broken instance.

Campaign's faults often do not say (``campaign-protocol.md`` section 5.4a), so no
record is judged by its fault alone. A record is bad when it fails *alone* while
records sent the same way (the same lane) succeed; a fault that every record meets
belongs to the instance and dead-letters nothing.

:class:`LaneHealth` keeps that evidence for one lane:

* ``streak``: calls refused since the lane's last success (the expected refusal of a
  record tried again after its strikes were proven does not count). At ``suspect_after`` (a
  setting) the refusals look like the instance's, and delivery sends records alone
  as controls before it goes on splitting; if they fail too, the lane is *suspect*:
  it pauses with a growing delay, then probes one record at a time (records not
  refused before first) until a call succeeds again.
* every call gets a send number. A record's failures alone are *strikes*, each with
  the number of its call. A strike is *proven* when its sibling in a split succeeded
  beside it, or when a call of the lane sent after it succeeded (a call sent before
  it proves nothing: it may have been answered before the fault began). Turning
  suspect voids the strikes no success has proven yet: they may be the instance's.
  A struck record waits for such a success before it goes again (the batcher keeps
  it back while other records can go): a try sent before it would prove nothing.
* a record is dead-lettered once it has ``allowed`` strikes that no suspicion voided,
  all but the newest proven; ``allowed`` is two more when none of its faults' words
  point at the data (a masked or unknown fault hides its cause, so it takes more).
* collection evidence: a collection of two refused while each of its records passes
  alone, twice with no collection passing in between, means the method refuses
  collections. Collections refused while single records pass only raise the doubt
  (:meth:`LaneHealth.doubts_collections`), which makes delivery split off such pairs.

Everything here is synchronous and takes the time as an argument; the dispatcher
drives it, and it is tested without a network or a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from .backoff import ceiling

__all__ = ["LaneHealth", "Strike", "Verdict"]


# Strikes it takes beyond ``allowed`` when no fault of the record points at the data.
UNPLACED_EXTRA = 2


class Strike(NamedTuple):
    """One failure of a record sent alone."""

    seq: int  # the send number of the refused call
    by_sibling: bool  # its sibling in a split (or a control) succeeded beside it
    fault: str  # what Campaign answered
    code: str = ""  # its code, or the short name of its words
    data: bool = False  # its code or words pointed at the record
    void: bool = False  # a mark made while the lane was suspect: it counts for nothing


# Collections refused, with no collection passing, before a lane doubts collections.
COLLECTION_DOUBT = 3
# Collections of two refused while both records pass alone, with no collection
# passing in between, before a lane concludes that its method refuses collections.
CLEAN_PAIRS = 2


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a record's failure alone means: dead-letter it now, or try it again."""

    dead: bool
    strikes: tuple[Strike, ...]  # those that count
    history: tuple[Strike, ...] = ()  # every refusal alone, voided ones included

    @property
    def code(self) -> str:
        """The code to file the record under: one pointing at the data, else the last."""
        refusals = self.history or self.strikes
        for strike in refusals:
            if strike.data and strike.code:
                return strike.code
        return next((s.code for s in reversed(refusals) if s.code), "")

    @property
    def faults(self) -> list[str]:
        """The distinct fault texts of every refusal alone, oldest first."""
        return list(dict.fromkeys(s.fault for s in self.history or self.strikes))


@dataclass(slots=True)
class LaneHealth:
    """The evidence one lane's calls give; see the module docstring."""

    streak: int = 0
    sent: int = 0  # calls sent so far: the last send number given
    proof: int = 0  # the highest send number of a call that succeeded
    voided: list[tuple[int, int]] = field(default_factory=list)  # send-number ranges
    suspect_since: float | None = None  # monotonic time the suspicion began
    last_success_at: float | None = None  # monotonic time of the last success
    reason: str = ""  # the fault text that made the lane suspect
    pauses: int = 0  # pauses in the current suspicion, for the growing delay
    suspicions: int = 0  # suspicions over the lane's life
    last_told: float = 0.0  # when the log last said the lane is paused
    collections_failed: int = 0
    single_delivered: int = 0
    clean_pairs: int = 0

    @property
    def suspect(self) -> bool:
        return self.suspect_since is not None

    def send(self) -> int:
        """The send number of a call about to go out."""
        self.sent += 1
        return self.sent

    def succeeded(self, collection: bool, seq: int, now: float | None = None) -> float | None:
        """The call numbered ``seq`` succeeded; ``collection``: its document was one.

        Returns when the suspicion it ends began (monotonic), or None.
        """
        if now is not None:
            self.last_success_at = now
        self.streak = 0
        self.proof = max(self.proof, seq)
        if collection:
            self.collections_failed = self.single_delivered = self.clean_pairs = 0
        else:
            self.single_delivered += 1
        ended = None
        if self.suspect_since is not None:
            ended = self.suspect_since
            self.suspect_since = None
            self.pauses = 0
            self.reason = ""
        return ended

    def refused(self, collection: bool, *, counts: bool = True) -> None:
        """A call of the lane was refused with a fault (not throttled, not transient).

        ``counts=False``: the refusal of a record already proven to fail alone, tried
        again; expected, it does not make the lane look broken.
        """
        if counts:
            self.streak += 1
        if collection:
            self.collections_failed += 1

    def needs_control(self, suspect_after: int) -> bool:
        """Refusals enough in a row that a record alone must show the lane still works."""
        return self.streak >= suspect_after

    def doubts_collections(self) -> bool:
        """Collections keep failing, none passing, while single records pass."""
        return self.collections_failed >= COLLECTION_DOUBT and self.single_delivered > 0

    def clean_pair(self) -> None:
        """A collection of two was refused, and each of its records then passed alone."""
        self.clean_pairs += 1

    def collections_refused(self) -> bool:
        """Whether the evidence shows that the method refuses collection documents."""
        return self.clean_pairs >= CLEAN_PAIRS

    def turn_suspect(self, now: float, reason: str) -> bool:
        """Every record meets the fault: suspect the instance. True if newly suspect."""
        if self.proof < self.sent:
            self.voided.append((self.proof + 1, self.sent))
        if self.suspect_since is not None:
            return False
        self.suspect_since = now
        self.reason = reason
        self.suspicions += 1
        return True

    def next_pause(self, initial_s: float, max_s: float, *, grow: bool = True) -> float:
        """The next pause of a suspect lane: doubling from ``initial_s``, capped at ``max_s``.

        ``grow=False`` repeats the last pause instead of doubling it.
        """
        if grow or not self.pauses:
            self.pauses += 1
        return float(ceiling(initial_s, max_s, self.pauses - 1))

    def _void(self, strike: Strike) -> bool:
        if strike.by_sibling:
            return False
        return strike.void or any(a <= strike.seq <= b for a, b in self.voided)

    def _proven(self, strike: Strike) -> bool:
        return strike.by_sibling or (strike.seq < self.proof and not self._void(strike))

    def judge(
        self,
        strikes: tuple[Strike, ...],
        fault: str,
        seq: int,
        sibling_ok: bool,
        allowed: int,
        *,
        code: str = "",
        data: bool = False,
    ) -> Verdict:
        """The record failed alone in call ``seq``: add a strike; is it proven bad now?"""
        new = Strike(seq, sibling_ok, fault, code, data)
        history = (*strikes, new)
        kept = tuple(s for s in history if not self._void(s))
        if not any(s.data for s in kept):
            allowed += UNPLACED_EXTRA
        earlier = kept[:-1]
        dead = (
            len(kept) >= allowed
            and all(self._proven(s) for s in earlier)
            and (bool(earlier) or new.by_sibling)
        )
        return Verdict(dead, kept, history)
