#!/usr/bin/env python3
"""A mend recovery plugin that reads values: counters keep their largest value.

    mend dc -g 1,2,3 -C 'python3 testdata/plugins/max_number.py'

For a key whose replicas hold different live values (newer than any tombstone), the
plugin asks mend for each distinct value (a "value" request). If every one is a decimal
integer, the replicas are merged into the largest one, whichever replica wrote it last:
a high-water mark, where newest-wins would let an older, smaller count overwrite a larger
one. The merged version is written one nanosecond newer than the newest source, so it
replaces them all. Any other key: newest wins.

Standard library only. The protocol is in README.md, "Writing a recovery policy".
"""

import json
import sys

PROTOCOL = 1


def send(message):
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def value_of(key_id, replica):
    """Asks mend for a replica's value: its bytes, or None if it could not be read."""
    send({"request": "value", "id": key_id, "replica": replica["index"]})
    answer = json.loads(sys.stdin.readline())
    if "value" not in answer:
        print(f"max_number.py: {key_id[:16]}: {answer.get('error')}", file=sys.stderr)
        return None
    return bytes.fromhex(answer["value"])


def order(replica):
    """The sort key of a replica's version in mend's newest order."""
    tombstone = replica["state"] == "tombstone"
    flags = (1 if tombstone else 0) | (2 if replica["mergeable"] else 0)
    return (
        replica["timestamp"],
        tombstone,
        bytes.fromhex(replica["checksum"]),
        replica["size"],
        replica["user_flags"],
        flags,
    )


def newest_wins(key, healthy):
    winner = max(healthy, key=order)
    to = [
        r["index"]
        for r in key["replicas"]
        if r["state"] not in ("live", "tombstone") or order(r) != order(winner)
    ]
    return [{"copy": {"from": winner["index"], "to": to}}] if to else []


def as_number(value):
    try:
        return int(value.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None


def decide(key):
    healthy = [r for r in key["replicas"] if r["state"] in ("live", "tombstone")]
    if not healthy:
        return []
    deleted = max((order(r) for r in healthy if r["state"] == "tombstone"), default=None)
    live = [
        r
        for r in healthy
        if r["state"] == "live" and (deleted is None or order(r) > deleted)
    ]
    distinct = {}
    for r in live:
        distinct.setdefault(r["checksum"], r)
    if len(distinct) < 2:
        return newest_wins(key, healthy)
    numbers = []
    for r in distinct.values():
        value = value_of(key["id"], r)
        number = None if value is None else as_number(value)
        if number is None:
            return newest_wins(key, healthy)
        numbers.append((number, value))
    largest = max(numbers)[1]
    return [
        {
            "merge": {
                "sources": [r["index"] for r in distinct.values()],
                "to": [r["index"] for r in key["replicas"]],
                "value_hex": largest.hex(),
            }
        }
    ]


def main():
    header = json.loads(sys.stdin.readline())
    if header.get("mend_plugin") != PROTOCOL:
        sys.exit(f"max_number.py: unsupported protocol version {header.get('mend_plugin')}")
    for line in sys.stdin:
        key = json.loads(line)["key"]
        send({"id": key["id"], "actions": decide(key)})


if __name__ == "__main__":
    main()
