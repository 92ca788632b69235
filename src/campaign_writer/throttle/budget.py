"""The tenant budget shared by several writers through Redis, and the fallback without it.

Campaign counts its TPS limit per tenant, so writers that share a tenant share one
budget. :class:`SharedBudget` keeps it in Redis as one schedule of emission times
(GCRA without burst): a Lua script reads Redis's own clock (``TIME``), takes the next
``k`` times ``1/rate`` apart from ``max(now, schedule end, pause end)`` and moves the
schedule end past them, all in one atomic step. Every instance reserves from that one
schedule on demand, so an idle instance holds nothing and a busy one uses what the
others leave; since the times are evenly spaced across all instances, no 1-second
window holds more than ``rate`` of them. A block of ``k`` times costs one round trip;
``k`` follows this instance's use: it grows while every reserved time is used and
halves when one expires unused (at most :attr:`SharedBudget.BLOCK`, half a second of
the rate, and the calls under way), so round trips per call fall as the load rises
without stranding much budget. A reserved time that passes unused (its
caller was cancelled) expires: it is never sent late, which could bunch two calls.

The same round trip carries the instance's heartbeat (a sorted set of instance ids
scored by expiry: ``instances_seen`` is its live count), the count of calls Campaign
accepted since the last one (the shared accepted rate), and brings back the shared
rate state: after a 429, the instance that got it sets a shared pause (no time is
handed out before it ends) and publishes the new rate state, which every instance
adopts, so all of them pause and all recover toward one rate. An instance that made no
reservation for a second beats its heart with an empty one.

When Redis does not answer, the instance goes at once to ``fallback``: it paces
locally at its share, the rate divided by the instances it last saw alive, says so
once in the log, keeps retrying Redis with :func:`~campaign_writer.backoff.delay`,
and rejoins the shared schedule when it answers again.

Rejoining is a ramp, not a step. The instances come back one by one, each at its
next retry, and those not back yet still send their local share; a first one taking
the whole schedule at once would add the full rate to theirs and draw 429s from
Campaign (it did: two of them, and 6 s below 95% of the limit after the cut). So for
:attr:`SharedBudget.REJOIN_S` after rejoining, while fewer instances are *active*
(heard of in Redis within :attr:`SharedBudget.ACTIVE_S`) than were alive before the
loss, the instances back reserve at ``active / before`` of the rate: together that
part, and the others their share of the rest. The rejoining round trip itself
reserves nothing, since the number back is known only from its reply. Meanwhile an
instance's hard cap is ``active / before`` of the limit (it was its share while away,
so the calls it sent on its own share just before count against it), and it reserves
at most :attr:`SharedBudget.RAMP_AHEAD_S` ahead.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..backoff import delay
from ..errors import QueueError
from ..logs import get_logger
from .autolimit import StateStore

__all__ = ["BudgetMode", "SharedBudget", "load_instances", "save_instances"]

log = get_logger("budget")

BudgetMode = Literal["local", "shared", "fallback"]
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

KEY_PREFIX = "campaign-writer:budget:"

# KEYS: schedule end, pause end, heartbeats, rate state, accepted counts.
# ARGV: k, interval (µs), instance id, heartbeat TTL (µs), calls accepted since last,
#       furthest ahead a reservation may start (µs), how recently an instance must have
#       been heard of to count as active (µs).
# Returns: now (µs), first time (µs), times reserved, pause end (µs), live instances,
#          accepted calls/s estimate (text), the rate state (flat field/value list),
#          active instances (heard of within the last ARGV[7] µs).
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local k = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local ttl = tonumber(ARGV[4])
redis.call('ZADD', KEYS[3], now + ttl, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('PEXPIRE', KEYS[3], math.floor(ttl / 1000) * 10)
local seen = redis.call('ZCARD', KEYS[3])
local active = redis.call('ZCOUNT', KEYS[3], now + ttl - tonumber(ARGV[7]), '+inf')
local sec = math.floor(now / 1000000)
local acc = redis.call('HMGET', KEYS[5], 'sec', 'cur', 'prev')
local asec, cur, prev = tonumber(acc[1]) or sec, tonumber(acc[2]) or 0, tonumber(acc[3]) or 0
if asec == sec - 1 then prev = cur; cur = 0 elseif asec < sec - 1 then prev = 0; cur = 0 end
cur = cur + tonumber(ARGV[5])
redis.call('HSET', KEYS[5], 'sec', sec, 'cur', cur, 'prev', prev)
redis.call('PEXPIRE', KEYS[5], 5000)
local accepted = cur + prev * (1 - (now - sec * 1000000) / 1000000)
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local first = math.max(now, tat, paused)
if k > 0 and first - now <= tonumber(ARGV[6]) then
  local stop = first + k * interval
  redis.call('SET', KEYS[1], stop, 'PX', math.floor((stop - now) / 1000) + 1000)
else
  k = 0
end
return {now, first, k, paused, seen, tostring(accepted), redis.call('HGETALL', KEYS[4]), active}
"""

# KEYS: pause end, schedule end. ARGV: pause (µs). Extends the shared pause and moves
# the schedule past it, so nothing is handed out before it ends. Returns: now, pause end.
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local untl = now + tonumber(ARGV[1])
local paused = tonumber(redis.call('GET', KEYS[1]) or '0')
if untl > paused then
  redis.call('SET', KEYS[1], untl, 'PX', math.floor(tonumber(ARGV[1]) / 1000) + 1000)
  paused = untl
end
local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
if tat < paused then
  redis.call('SET', KEYS[2], paused, 'PX', math.floor((paused - now) / 1000) + 1000)
end
return {now, paused}
"""

# KEYS: rate state. ARGV: the version it was read at, then field/value pairs. Writes
# them (version + 1) only if nobody published since: one episode, one decision.
# Returns 1 when written.
_PUBLISH = """
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if version ~= tonumber(ARGV[1]) then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'version', version + 1)
redis.call('PEXPIRE', KEYS[1], 86400000)
return 1
"""

_US = 1_000_000


class SharedBudget:
    """One tenant budget in Redis, shared by every instance with the same ``name``.

    :meth:`slot` hands out the local time of this instance's next call, or None when
    Redis is lost (``mode == "fallback"``): the caller then paces locally at
    :attr:`share` of the rate. Rate state (what :class:`~.throttle.RateController`
    exports) travels as a flat mapping of text; the throttle converts it.
    """

    BLOCK = 8  # most times one round trip reserves
    HEARTBEAT_S = 1.0
    HEARTBEAT_TTL_S = 3.0  # an instance not heard of for this long is not counted
    HORIZON_S = 0.5  # a block holds at most this much of the rate
    FALLBACK_MARGIN = 0.9
    GRACE = 0.1  # a reserved time may still be used this share of an interval late
    MAX_AHEAD_S = 2.0  # no reservation starts further ahead; the caller asks again later
    # While rejoining, at most this far ahead: times taken at the ramp's slower spacing
    # are kept by the calls that hold them, so far ahead they would slow the writers long
    # after every one is back (they did, by 1.5 s).
    RAMP_AHEAD_S = 0.25
    REDIS_TIMEOUT_S = 0.5
    RTT_AGING = 1.05  # per round trip, the bar a round trip's offset sample must pass
    # Redis lost: retries back off from 0.25 s up to this, so a writer rejoins within
    # about this long of Redis's return (until then it uses only its share). A retry is
    # one refused connection or one timeout: cheap next to slow recovery.
    RETRY_MAX_S = 1.0
    # Heard of within this long: back in the shared schedule (beats come each second).
    ACTIVE_S = 1.5
    # After rejoining, every instance still alive has retried within this long.
    REJOIN_S = RETRY_MAX_S + REDIS_TIMEOUT_S + HEARTBEAT_S

    def __init__(
        self,
        redis_url: str,
        name: str,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        key_prefix: str = KEY_PREFIX,
        instance_id: str | None = None,
    ) -> None:
        self.name = name
        self.instance_id = instance_id or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._rate: Callable[[], float] = lambda: 1.0
        self._on_state: Callable[[Mapping[str, str], float], None] = lambda state, offset: None
        self._clock = clock
        self._sleep = sleep
        self._redis = aioredis.Redis.from_url(
            redis_url,
            # No socket_timeout: redis-py's (7.4 on Python 3.11) can swallow a cancellation
            # that lands while it waits for a reply, and a writer told to stop went on
            # sleeping. Every command is bounded by asyncio's own timeout instead (_bounded).
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        base = f"{key_prefix}{name}:"
        self._keys = {
            "tat": base + "schedule",
            "pause": base + "pause",
            "alive": base + "alive",
            "state": base + "rate",
            "accepted": base + "accepted",
        }
        self._reserve = self._redis.register_script(_RESERVE)
        self._pause = self._redis.register_script(_PAUSE)
        self._publish = self._redis.register_script(_PUBLISH)
        self.mode: BudgetMode = "shared"
        self.instances_seen = 1
        self.instances_active = 1
        self._before_loss = 1  # instances alive when Redis was last lost
        self._ramp_until = 0.0  # rejoined: until then, scale by the share back
        self.round_trips = 0
        self.state_version = 0
        self.accepted_rate = 0.0  # shared estimate, calls/s, as of the last round trip
        self._offset = 0.0  # local clock minus Redis clock, seconds
        self._best_rtt = math.inf  # the round trip the offset was measured on (aged)
        self._held: deque[float] = deque()  # reserved times, local clock
        self._waiting = 0
        self._block = 1.0  # times to reserve beyond the calls waiting: grows, halves
        self.slots_expired = 0  # reserved times nobody here used (budget wasted)
        self._accepted_since = 0
        self._lock = asyncio.Lock()
        self._failures = 0
        self._retry_at = 0.0
        self._last_trip_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self.on_mode_change: Callable[[BudgetMode], None] | None = None

    def bind(
        self, rate: Callable[[], float], on_state: Callable[[Mapping[str, str], float], None]
    ) -> None:
        """Connect the throttle: ``rate`` spaces reservations (calls/s), ``on_state``
        adopts the shared rate state (its fields, and Redis-to-local clock offset)."""
        self._rate = rate
        self._on_state = on_state

    # --- lifecycle -------------------------------------------------------------------

    async def start(self, assumed_instances: int = 1) -> None:
        """Join (one round trip; Redis down means starting in fallback, at the share of
        ``assumed_instances``, as many as were seen last time) and start beating."""
        self.instances_seen = max(1, assumed_instances)
        await self._round_trip(0)
        self._task = asyncio.create_task(self._heartbeat())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        with contextlib.suppress(RedisError, OSError):
            await self._bounded(self._redis.zrem(self._keys["alive"], self.instance_id))
        await self._redis.aclose()

    # --- admission -------------------------------------------------------------------

    @property
    def share(self) -> float:
        """The part of a budget this instance uses on its own (the tenant's when Redis
        is lost, a method's always): one over the instances last seen alive, less a
        tenth when there are several, since uncoordinated instances send in no phase."""
        seen = self.instances_seen
        return 1.0 if seen <= 1 else self.FALLBACK_MARGIN / seen

    async def slot(self, demand: int = 1) -> float | None:
        """The local time of this instance's next call (None: fall back to local pacing).

        ``demand``: the calls under way in the throttle, counting those already holding
        a time. A reservation takes at least the calls waiting for one, and up to
        ``demand`` as the block allows: the block grows by one each time the last was
        used up and halves when a reserved time expires unused, within :attr:`BLOCK`
        and half a second of the rate. A steady stream costs one round trip per block."""
        self._waiting += 1
        try:
            while True:
                held = self._next_held()
                if held is not None:
                    return held
                if self.mode != "shared" and not self._due_for_retry():
                    return None
                async with self._lock:
                    if self._held:
                        continue
                    if self.mode != "shared" and not self._due_for_retry():
                        # The round trip we queued behind failed: do not try again at
                        # once (a hung Redis would cost every waiter its timeout in turn).
                        return None
                    if self.mode != "shared":
                        # Rejoining: how many are back is known only from the reply.
                        if await self._round_trip(0) is None:
                            return None
                        continue
                    horizon = max(1, int(self._rate() * self.ramp() * self.HORIZON_S))
                    wanted = max(self._waiting, min(demand, int(self._block)))
                    reserved = await self._round_trip(min(self.BLOCK, horizon, wanted))
                    # Every time of the last block was used: the next may be larger.
                    self._block = min(float(self.BLOCK), self._block + 1.0)
                    if reserved is None:
                        return None
                if reserved == 0:
                    # The schedule is full further ahead than we reserve: wait a while.
                    await self._sleep(self._ahead() / 4)
        finally:
            self._waiting -= 1

    def ramp(self) -> float:
        """The part of the shared rate this instance reserves at: 1, except just after
        rejoining, while fewer instances are back than were alive before the loss."""
        if self._ramp_until == 0.0:
            return 1.0
        if self._clock() >= self._ramp_until or self.instances_active >= self._before_loss:
            self._ramp_until = 0.0
            return 1.0
        return self.instances_active / self._before_loss

    def _ahead(self) -> float:
        return self.MAX_AHEAD_S if self.ramp() == 1.0 else self.RAMP_AHEAD_S

    def _next_held(self) -> float | None:
        held = self._held
        now = self._clock()
        # A time already past by more than a tenth of an interval would be sent late
        # and bunch with the next holder's: let it expire.
        grace = self.GRACE / max(self._rate(), 1e-6)
        expired = 0
        while held and held[0] < now - grace:
            held.popleft()
            expired += 1
        if expired:
            # Reserved more than this instance used: halve the block (budget wasted).
            self.slots_expired += expired
            self._block = max(1.0, self._block / 2)
        return held.popleft() if held else None

    def drop_held(self) -> None:
        """Forget reserved times (a 429 here: the shared pause moved the schedule)."""
        self._held.clear()

    def on_accepted(self) -> None:
        """Count a call Campaign accepted; it reaches Redis with the next round trip."""
        self._accepted_since += 1

    # --- 429s ------------------------------------------------------------------------

    async def pause(self, seconds: float) -> float | None:
        """Pause every instance for ``seconds`` from Redis's now; the pause end (local
        time), or None when Redis is lost."""
        self._held.clear()
        try:
            self.round_trips += 1
            _, until_us = await self._bounded(
                self._pause(
                    keys=[self._keys["pause"], self._keys["tat"]], args=[int(seconds * _US)]
                )
            )
        except (RedisError, OSError) as exc:
            self._lost(exc)
            return None
        return int(until_us) / _US + self._offset

    async def publish(self, fields: Mapping[str, str], read_version: int) -> bool:
        """Publish new rate state, unless someone published since ``read_version``."""
        pairs: list[str | int] = [read_version]
        for key, value in fields.items():
            pairs += [key, value]
        try:
            self.round_trips += 1
            written = await self._bounded(self._publish(keys=[self._keys["state"]], args=pairs))
        except (RedisError, OSError) as exc:
            self._lost(exc)
            return False
        if written:
            self.state_version = read_version + 1
        return bool(written)

    def to_local(self, redis_s: float) -> float:
        return redis_s + self._offset

    def to_redis(self, local_s: float) -> float:
        return local_s - self._offset

    # --- Redis -----------------------------------------------------------------------

    async def _bounded(self, command: Awaitable[Any]) -> Any:
        """One Redis command (connecting first if needed), given up after
        :attr:`REDIS_TIMEOUT_S` with a TimeoutError (an OSError: Redis is lost)."""
        async with asyncio.timeout(self.REDIS_TIMEOUT_S):
            return await command

    async def _round_trip(self, k: int) -> int | None:
        """Reserve ``k`` times (0: heartbeat only); how many were reserved, None if lost."""
        rate = max(self._rate() * self.ramp(), 1e-3)
        accepted, self._accepted_since = self._accepted_since, 0
        sent_at = self._clock()
        try:
            self.round_trips += 1
            reply: list[Any] = await self._bounded(
                self._reserve(
                    keys=[
                        self._keys[name] for name in ("tat", "pause", "alive", "state", "accepted")
                    ],
                    args=[
                        k,
                        max(1, int(_US / rate)),
                        self.instance_id,
                        int(self.HEARTBEAT_TTL_S * _US),
                        accepted,
                        int(self._ahead() * _US),
                        int(self.ACTIVE_S * _US),
                    ],
                )
            )
        except (RedisError, OSError) as exc:
            self._accepted_since += accepted
            self._lost(exc)
            return None
        received_at = self._last_trip_at = self._clock()
        now_us, first_us, reserved, _, seen, accepted_rate, flat, active = reply
        # Redis read its clock between our send and its reply: take the midpoint, from
        # the shortest round trip lately. A reply our busy event loop read late would
        # move the midpoint by half the delay and every time of ours with it (sent late,
        # bunched with another instance's), while the real offset moves only with the
        # clocks' drift; the bar rises a little each trip, to follow a slower network.
        # A midpoint is at most half its round trip off: one that disagrees by more
        # than both round trips allow means a clock moved (stepped, another Redis).
        rtt = received_at - sent_at
        offset = (sent_at + received_at) / 2 - int(now_us) / _US
        self._best_rtt *= self.RTT_AGING
        if rtt <= self._best_rtt or abs(offset - self._offset) > (rtt + self._best_rtt) / 2:
            self._best_rtt = rtt
            self._offset = offset
        self.instances_active = max(1, int(active))
        if self.mode != "shared":
            self._ramp_until = received_at + self.REJOIN_S
        # While rejoining, the instances not back yet still count for the share.
        ramping = self._ramp_until > received_at
        self.instances_seen = max(1, int(seen), self._before_loss if ramping else 1)
        self.accepted_rate = float(accepted_rate)
        interval = int(_US / rate) if rate else 0
        first = int(first_us)
        self._held.extend(
            (first + i * max(1, interval)) / _US + self._offset for i in range(int(reserved))
        )
        state = dict(zip(flat[::2], flat[1::2], strict=True))
        try:
            version = int(state.pop("version", 0))
        except ValueError:  # not a writer's (a hand edit): keep ours, adopt nothing
            version = self.state_version
        if version != self.state_version:
            # Lower too: a Redis that came back empty starts the count again.
            self.state_version = version
            if state:
                self._on_state(state, self._offset)
        self._rejoined()
        return int(reserved)

    def _lost(self, exc: BaseException) -> None:
        self._held.clear()
        self._best_rtt = math.inf  # the Redis that answers next may run another clock
        self._failures += 1
        self._retry_at = self._clock() + delay(0.25, self.RETRY_MAX_S, self._failures - 1, "half")
        if self.mode != "fallback":
            self.mode = "fallback"
            self._before_loss = self.instances_seen
            self._ramp_until = 0.0
            log.warning(
                "shared budget lost: Redis does not answer; pacing at this instance's share",
                extra={"budget": self.name, "share": round(self.share, 3), "error": str(exc)},
            )
            if self.on_mode_change is not None:
                self.on_mode_change("fallback")

    def _rejoined(self) -> None:
        self._failures = 0
        if self.mode != "shared":
            self.mode = "shared"
            log.warning("shared budget rejoined: Redis answers again", extra={"budget": self.name})
            if self.on_mode_change is not None:
                self.on_mode_change("shared")

    def _due_for_retry(self) -> bool:
        return self._clock() >= self._retry_at

    async def _heartbeat(self) -> None:
        """Beat when no reservation did for a second (a reservation carries the beat and
        brings the shared state back); in fallback, retry Redis when due."""
        while True:
            if self.mode == "fallback":
                if self._due_for_retry():
                    async with self._lock:
                        await self._round_trip(0)
                wait = max(0.05, self._retry_at - self._clock())
            else:
                wait = self._last_trip_at + self.HEARTBEAT_S - self._clock()
                if wait <= 0:
                    async with self._lock:
                        await self._round_trip(0)
                    wait = self.HEARTBEAT_S
            await asyncio.sleep(min(wait, self.HEARTBEAT_S))


# --- kept across restarts --------------------------------------------------------------


def _instances_key(name: str) -> str:
    return f"budget.{name}.instances_seen"


async def load_instances(store: StateStore, name: str) -> int | None:
    """How many instances shared budget ``name`` when this writer last ran (from its
    queue file), or None. A writer that starts while Redis is out of reach takes its
    share from it, instead of taking the whole limit as if it were alone."""
    with contextlib.suppress(QueueError, ValueError):
        text = await store.recall(_instances_key(name))
        if text is not None and 1 <= (count := int(text)) <= 10_000:
            return count
    return None


async def save_instances(store: StateStore, name: str, count: int) -> None:
    """Keep the number of instances last seen sharing budget ``name``."""
    await store.remember(_instances_key(name), str(count))
