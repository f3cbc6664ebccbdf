"""Writes keys through Python's etcd3 for a while, retrying what fails, and prints every
write that was acknowledged as `KEY VALUE`: a test then checks that none was lost.

Usage: etcd3_writer.py HOST:PORT PREFIX SECONDS
"""

import sys
import time

import etcd3


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    prefix, seconds = sys.argv[2], float(sys.argv[3])
    client = etcd3.client(host=host, port=int(port), timeout=10)
    deadline = time.time() + seconds
    i = 0
    failures = 0
    while time.time() < deadline:
        key, value = f"{prefix}{i:06}", f"v{i}"
        try:
            client.put(key, value)
        except Exception as error:  # noqa: BLE001 - any failure is retried
            failures += 1
            print(f"# failed {key}: {type(error).__name__}", flush=True)
            time.sleep(0.05)
            continue
        print(f"{key} {value} {time.time():.3f}", flush=True)
        i += 1
    print(f"# failures {failures}", flush=True)


if __name__ == "__main__":
    main()
