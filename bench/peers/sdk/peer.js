// The SDK peer: what a Campaign developer writes by hand with Adobe's JavaScript SDK.
//
// Events arrive on stdin as NDJSON. A plain timer ticks at the tenant limit (every
// 1000/tps ms); each tick takes up to `batch` waiting events and sends them with
// NLWS.xtkSession.writeCollection, without waiting for the answer, so slow calls
// overlap. A 429 puts the batch back at the head of the line (the timer keeps its
// pace: it knows nothing of the limit); any other failure is retried on later ticks
// up to `attempts` times, then the batch is given up ("dead").
//
// Usage: node peer.js '{"url": "http://127.0.0.1:PORT", "login": "admin", "password":
//        "admin", "tps": 20, "batch": 500, "attempts": 5, "timeoutMs": 30000}'
// Prints "sdk ready" once logged on, then a JSON status line every 250 ms with the
// fields of bench/peers/__init__.py STATUS_FIELDS.
"use strict";

const readline = require("node:readline");
const sdk = require("@adobe/acc-js-sdk");

const SCHEMA = "dem:sampleTableStg";
const ELEMENT = "sampleTableStg";

async function main() {
  const settings = JSON.parse(process.argv[2]);
  const params = sdk.ConnectionParameters.ofUserAndPassword(
    settings.url, settings.login, settings.password,
    { noStorage: true, timeout: settings.timeoutMs || 30000 });
  const client = await sdk.init(params);
  await client.logon();
  const NLWS = client.NLWS;

  // Each waiting item: [record, attempts].
  const waiting = [];
  const counts = {
    received: 0, in_flight: 0, delivered: 0, dead: 0, retried: 0, throttled: 0, calls: 0,
  };

  const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  input.on("line", (line) => {
    if (!line) return;
    const event = JSON.parse(line);
    counts.received += 1;
    waiting.push([{ _key: "@id", id: event.id, testcol1: event.testcol1,
      testcol2: event.testcol2 }, 0]);
  });

  async function send(items) {
    counts.calls += 1;
    counts.in_flight += 1;
    try {
      await NLWS.xtkSession.writeCollection({
        xtkschema: SCHEMA, [ELEMENT]: items.map((item) => item[0]),
      });
      counts.delivered += items.length;
    } catch (error) {
      if (error && error.statusCode === 429) {
        counts.throttled += 1;
        waiting.unshift(...items);
      } else {
        const again = items.filter((item) => item[1] + 1 < settings.attempts)
          .map((item) => [item[0], item[1] + 1]);
        if (again.length > 0) counts.retried += 1;
        counts.dead += items.length - again.length;
        waiting.unshift(...again);
      }
    } finally {
      counts.in_flight -= 1;
    }
  }

  const timer = setInterval(() => {
    if (waiting.length > 0) send(waiting.splice(0, settings.batch));
  }, 1000 / settings.tps);

  function status() {
    const pending = counts.received - counts.delivered - counts.dead;
    return JSON.stringify({ t: Date.now() / 1000, pending, rate: settings.tps, ...counts });
  }
  const reporter = setInterval(() => process.stdout.write(status() + "\n"), 250);

  // On SIGTERM: no new calls; let those under way finish (10 s at most) so the final
  // counts match what Campaign stored, then print them and exit.
  function stop() {
    clearInterval(timer);
    clearInterval(reporter);
    const deadline = Date.now() + 10000;
    const finish = setInterval(() => {
      if (counts.in_flight > 0 && Date.now() < deadline) return;
      clearInterval(finish);
      process.stdout.write(status() + "\n", () => process.exit(0));
    }, 20);
  }
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  process.stdout.write("sdk ready\n");
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
