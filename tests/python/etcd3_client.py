"""Python's etcd3 package against an agent's etcd endpoint: gets, puts, transactions,
watches, leases and its lock. Every check asserts; the script prints "ok" at the end.

Usage: etcd3_client.py HOST:PORT [HOST:PORT of another agent]
"""

import sys
import threading
import time

import etcd3


def client(endpoint):
    host, port = endpoint.rsplit(":", 1)
    return etcd3.client(host=host, port=int(port), timeout=20)


def main():
    first = client(sys.argv[1])
    other = client(sys.argv[2]) if len(sys.argv) > 2 else first

    # Puts and gets, on one agent and read back on another.
    first.put("py/a", "one")
    value, meta = other.get("py/a")
    assert value == b"one", value
    assert meta.version == 1 and meta.create_revision == meta.mod_revision
    first.put("py/b", "two")
    found = sorted((m.key, v) for v, m in other.get_prefix("py/"))
    assert found == [(b"py/a", b"one"), (b"py/b", b"two")], found
    assert first.get("py/missing") == (None, None)

    # A compare-and-swap transaction, both branches.
    done, _ = first.transaction(
        compare=[first.transactions.value("py/a") == "one"],
        success=[first.transactions.put("py/a", "uno")],
        failure=[first.transactions.get("py/a")],
    )
    assert done
    done, responses = first.transaction(
        compare=[first.transactions.version("py/a") == 1],
        success=[first.transactions.put("py/a", "never")],
        failure=[first.transactions.get("py/a")],
    )
    assert not done
    got = responses[0][0]
    assert got[0] == b"uno", got
    assert first.get("py/a")[0] == b"uno"

    # A watch sees puts and deletes in order.
    events = []
    iterator, cancel = first.watch_prefix("py/w/")

    def collect():
        for event in iterator:
            events.append((type(event).__name__, event.key, event.value))
            if len(events) == 3:
                cancel()

    watcher = threading.Thread(target=collect)
    watcher.start()
    time.sleep(0.5)
    other.put("py/w/1", "x")
    other.put("py/w/1", "y")
    other.delete("py/w/1")
    watcher.join(20)
    assert events == [
        ("PutEvent", b"py/w/1", b"x"),
        ("PutEvent", b"py/w/1", b"y"),
        ("DeleteEvent", b"py/w/1", b""),
    ], events

    # A lease keeps its key while refreshed; revoking it removes the key.
    lease = first.lease(5)
    first.put("py/eph", "v", lease=lease)
    assert lease.keys == [b"py/eph"], lease.keys
    assert 0 < lease.remaining_ttl <= 5
    lease.refresh()
    assert first.get("py/eph")[0] == b"v"
    lease.revoke()
    assert first.get("py/eph") == (None, None)

    # A lease that nobody refreshes runs out, and its key goes with it.
    short = first.lease(2)
    first.put("py/short", "v", lease=short)
    deadline = time.time() + 10
    while first.get("py/short")[0] is not None:
        assert time.time() < deadline, "the key outlived its lease"
        time.sleep(0.1)

    # The lock: a second holder waits until the first releases.
    lock = first.lock("py-lock", ttl=10)
    assert lock.acquire(timeout=10)
    contender = other.lock("py-lock", ttl=10)
    assert not contender.acquire(timeout=1), "two holders at once"
    lock.release()
    assert contender.acquire(timeout=10)
    contender.release()

    status = first.status()
    assert status.version.startswith("3."), status.version
    print("ok")


if __name__ == "__main__":
    main()
