"""redis-py against the Isthmus Redis front door of a two-DC cluster.

Run by tests/redis_clients.rs with the environment:
  DC1_REDIS, DC2_REDIS   host:port of a front door in each datacenter
  REDIS_CA               the cluster's CA certificate (PEM)
  REDIS_USER, REDIS_PASSWORD
Database 0 is a plain keyspace, database 1 a keyspace of counters.
Exits non-zero, naming the failed check, when anything is wrong.
"""
import os
import sys
import threading
import time

import redis

PREFIX = "py-%d-" % os.getpid()
WAIT_S = 30


def client(where, db=0):
    host, port = os.environ[where].rsplit(":", 1)
    return redis.Redis(
        host=host,
        port=int(port),
        db=db,
        ssl=True,
        ssl_ca_certs=os.environ["REDIS_CA"],
        # The node certificates name nodes, not hosts: the CA is checked,
        # the host name is not.
        ssl_check_hostname=False,
        username=os.environ["REDIS_USER"],
        password=os.environ["REDIS_PASSWORD"],
        socket_timeout=10,
    )


def until(what, check):
    deadline = time.time() + WAIT_S
    while True:
        seen = check()
        if seen is True:
            return
        if time.time() > deadline:
            sys.exit("FAILED %s: last seen %r" % (what, seen))
        time.sleep(0.2)


def replicated(dc1, dc2):
    key = PREFIX + "greeting"
    assert dc1.set(key, "hello from dc1") is True
    until(
        "a value set in DC1 read in DC2",
        lambda: dc2.get(key) == b"hello from dc1" or dc2.get(key),
    )


def counters(c1, c2):
    key = PREFIX + "hits"
    per_dc = 50
    errors = []

    def bump(c):
        try:
            for _ in range(per_dc):
                c.incr(key)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=bump, args=(c,)) for c in (c1, c2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit("FAILED INCR: %r" % errors)
    assert c1.incrby(key, 10) >= 10
    assert c2.decrby(key, 3) is not None
    total = 2 * per_dc + 10 - 3
    for name, c in (("DC1", c1), ("DC2", c2)):
        until(
            "INCR from both DCs totals %d in %s" % (total, name),
            lambda c=c: c.get(key) == str(total).encode() or c.get(key),
        )
    # The counters' database holds this program's counter (and perhaps
    # the other program's): DBSIZE reads them all, so it is exact here.
    size = c1.dbsize()
    assert 1 <= size <= 2, "DBSIZE of the counters' database: %r" % size
    refused(lambda: c1.set(key, "7"), "holds counters")
    refused(lambda: c1.incrby(key, "x"), "not an integer")
    refused(lambda: c1.incrby(key, 2**63 - 1), "overflow")


def refused(call, reason):
    try:
        call()
    except redis.ResponseError as e:
        if reason not in str(e):
            sys.exit("FAILED: refused with %r, not for %r" % (str(e), reason))
        return
    sys.exit("FAILED: not refused (%s)" % reason)


def expiry(dc1, dc2):
    key = PREFIX + "session"
    assert dc1.set(key, "short-lived", ex=2) is True
    ttl = dc1.ttl(key)
    assert 0 < ttl <= 2, "TTL right after SET EX 2: %r" % ttl
    until("a key set with EX reaches DC2", lambda: dc2.get(key) == b"short-lived" or dc2.get(key))
    for name, c in (("DC1", dc1), ("DC2", dc2)):
        until(
            "a key set with EX 2 gone in %s" % name,
            lambda c=c: (c.get(key) is None and c.exists(key) == 0 and c.ttl(key) == -2)
            or (c.get(key), c.ttl(key)),
        )


def set_nx(where):
    key = PREFIX + "lock"
    a, b = client(where), client(where)
    results = []
    barrier = threading.Barrier(2)

    def take(c, who):
        barrier.wait()
        results.append((who, c.set(key, who, nx=True)))

    threads = [threading.Thread(target=take, args=(c, w)) for c, w in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [who for who, ok in results if ok]
    if len(winners) != 1:
        sys.exit("FAILED SET NX from two clients: %r" % results)
    held = a.get(key)
    if held != winners[0].encode():
        sys.exit("FAILED SET NX: the key holds %r, the winner was %r" % (held, winners[0]))


def main():
    dc1, dc2 = client("DC1_REDIS"), client("DC2_REDIS")
    c1, c2 = client("DC1_REDIS", db=1), client("DC2_REDIS", db=1)
    assert dc1.ping() and dc2.ping()
    replicated(dc1, dc2)
    refused(lambda: dc1.incr(PREFIX + "greeting"), "does not hold counters")
    counters(c1, c2)
    expiry(dc1, dc2)
    set_nx("DC1_REDIS")
    print("redis-py %s: replicated, counters, expiry, set-nx ok" % redis.__version__)


if __name__ == "__main__":
    main()
