"""Child process for the SIGKILL test: appends, leases and acks until it is killed.

Prints one line per operation *after* it returned, so the parent knows what the
queue acknowledged: ``A <key> <key> ...`` for an append, ``K <key> ...`` for an ack,
``L <key> ...`` for a lease that is never acknowledged. ``k <key> ...`` comes before an
ack starts: a kill between the two leaves those records either way. Run as a script:
``python appender.py QUEUE_FILE``.
"""

from __future__ import annotations

import asyncio
import sys
import time

import orjson

from campaign_writer.queue import DurableQueue, QueueItem

LANE = "dem:sampleTableStg#Ingest"


def say(*words: str) -> None:
    sys.stdout.write(" ".join(words) + "\n")
    sys.stdout.flush()


async def append_forever(queue: DurableQueue, writer: int) -> None:
    batch = 0
    while True:
        keys = [f"w{writer}-b{batch}-{i}" for i in range(25)]
        items = [
            QueueItem(
                LANE,
                key,
                orjson.dumps(({"id": key}, None, "@id")),
                orjson.dumps({"type": "sample", "id": key, "pad": "p" * 200}),
                "child",
                time.time(),
            )
            for key in keys
        ]
        await queue.append(items)
        say("A", *keys)
        batch += 1


async def lease_and_ack(queue: DurableQueue) -> None:
    turn = 0
    while True:
        leased = await queue.lease(40)
        if not leased:
            await queue.wait_for_records(0.05)
            continue
        keep, done = leased[:10], leased[10:]
        if turn % 2 == 0:
            say("L", *(str(r.key) for r in keep))  # leased, never acked: must come back
        else:
            await queue.release([r.id for r in keep])
        say("k", *(str(r.key) for r in done))
        await queue.ack([r.id for r in done])
        say("K", *(str(r.key) for r in done))
        turn += 1


async def main(path: str) -> None:
    queue = await DurableQueue.open(path, synchronous="FULL")
    say("OPEN")
    await asyncio.gather(*(append_forever(queue, w) for w in range(4)), lease_and_ack(queue))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
