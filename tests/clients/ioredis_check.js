// ioredis against the Isthmus Redis front door of a two-DC cluster.
//
// Run by tests/redis_clients.rs with the environment:
//   DC1_REDIS, DC2_REDIS   host:port of a front door in each datacenter
//   REDIS_CA               the cluster's CA certificate (PEM)
//   REDIS_USER, REDIS_PASSWORD
// Database 0 is a plain keyspace, database 1 a keyspace of counters.
// Exits non-zero, naming the failed check, when anything is wrong.
"use strict";

const fs = require("fs");
const Redis = require("ioredis");

const PREFIX = `js-${process.pid}-`;
const WAIT_MS = 30000;

function client(where, db = 0) {
  const [host, port] = process.env[where].split(/:(?=[^:]+$)/);
  return new Redis({
    host,
    port: Number(port),
    db,
    username: process.env.REDIS_USER,
    password: process.env.REDIS_PASSWORD,
    // The node certificates name nodes, not hosts: the CA is checked,
    // the host name is not.
    tls: { ca: fs.readFileSync(process.env.REDIS_CA), checkServerIdentity: () => undefined },
    maxRetriesPerRequest: 2,
    lazyConnect: false,
  });
}

function fail(what, seen) {
  console.error(`FAILED ${what}: last seen ${JSON.stringify(seen)}`);
  process.exit(1);
}

async function until(what, check) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const seen = await check();
    if (seen === true) return;
    if (Date.now() > deadline) fail(what, seen);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function replicated(dc1, dc2) {
  const key = PREFIX + "greeting";
  if ((await dc1.set(key, "hello from dc1")) !== "OK") fail("SET in DC1", null);
  await until("a value set in DC1 read in DC2", async () => {
    const v = await dc2.get(key);
    return v === "hello from dc1" || v;
  });
}

async function counters(c1, c2) {
  const key = PREFIX + "hits";
  const perDc = 50;
  const bump = async (c) => {
    for (let i = 0; i < perDc; i++) await c.incr(key);
  };
  await Promise.all([bump(c1), bump(c2)]);
  await c1.incrby(key, 10);
  await c2.decrby(key, 3);
  const total = String(2 * perDc + 10 - 3);
  for (const [name, c] of [["DC1", c1], ["DC2", c2]]) {
    await until(`INCR from both DCs totals ${total} in ${name}`, async () => {
      const v = await c.get(key);
      return v === total || v;
    });
  }
}

async function expiry(dc1, dc2) {
  const key = PREFIX + "session";
  await dc1.set(key, "short-lived", "EX", 2);
  const ttl = await dc1.ttl(key);
  if (!(ttl > 0 && ttl <= 2)) fail("TTL right after SET EX 2", ttl);
  await until("a key set with EX reaches DC2", async () => {
    const v = await dc2.get(key);
    return v === "short-lived" || v;
  });
  for (const [name, c] of [["DC1", dc1], ["DC2", dc2]]) {
    await until(`a key set with EX 2 gone in ${name}`, async () => {
      const [v, n, t] = await Promise.all([c.get(key), c.exists(key), c.ttl(key)]);
      return (v === null && n === 0 && t === -2) || [v, n, t];
    });
  }
}

async function setNx(where) {
  const key = PREFIX + "lock";
  const a = client(where);
  const b = client(where);
  const results = await Promise.all([a.set(key, "a", "NX"), b.set(key, "b", "NX")]);
  const winners = results
    .map((r, i) => (r === "OK" ? ["a", "b"][i] : null))
    .filter((w) => w !== null);
  if (winners.length !== 1) fail("SET NX from two clients", results);
  const held = await a.get(key);
  if (held !== winners[0]) fail("SET NX: the key holds another value than the winner's", held);
  a.disconnect();
  b.disconnect();
}

async function main() {
  const dc1 = client("DC1_REDIS");
  const dc2 = client("DC2_REDIS");
  const c1 = client("DC1_REDIS", 1);
  const c2 = client("DC2_REDIS", 1);
  if ((await dc1.ping()) !== "PONG" || (await dc2.ping()) !== "PONG") fail("PING", null);
  await replicated(dc1, dc2);
  await counters(c1, c2);
  await expiry(dc1, dc2);
  await setNx("DC1_REDIS");
  const version = require("ioredis/package.json").version;
  console.log(`ioredis ${version}: replicated, counters, expiry, set-nx ok`);
  for (const c of [dc1, dc2, c1, c2]) c.disconnect();
}

main().catch((e) => {
  console.error(`FAILED ${e.stack || e}`);
  process.exit(1);
});
