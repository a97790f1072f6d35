#!/usr/bin/env python3
"""A mend recovery plugin: newest wins, but protected groups are never written to.

    mend dc -g 1,2,3 -C 'python3 testdata/plugins/newest_wins.py --protect 3'

For each key, the newest healthy version (mend's order: larger timestamp; at equal
timestamps a tombstone; then the larger checksum, size, user flags, flags) is copied to
every replica that lacks it, except replicas in a --protect group: they are left as they
are and reported as skipped (say, a datacenter being migrated that must not take writes).
Mergeable keys are treated like any other: newest wins. With no healthy copy at all, a key
with corrupt copies is reported unrecoverable.

Standard library only. The protocol is in README.md, "Writing a recovery policy".
"""

import argparse
import json
import sys

PROTOCOL = 1


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


def decide(key, protected):
    healthy = [r for r in key["replicas"] if r["state"] in ("live", "tombstone")]
    if not healthy:
        corrupt = [r["node"] for r in key["replicas"] if r["state"] == "corrupt"]
        if corrupt:
            reason = "no healthy copy; corrupt on " + ", ".join(corrupt)
            return [{"unrecoverable": {"reason": reason}}]
        return []
    winner = max(healthy, key=order)
    best = order(winner)
    lacking = [
        r
        for r in key["replicas"]
        if r["state"] not in ("live", "tombstone") or order(r) != best
    ]
    to = [r["index"] for r in lacking if r["group"] not in protected]
    kept = [r for r in lacking if r["group"] in protected]
    actions = []
    if to:
        actions.append({"copy": {"from": winner["index"], "to": to}})
    if kept:
        groups = ", ".join(str(r["group"]) for r in kept)
        actions.append({"skip": {"reason": f"group {groups} is protected"}})
    return actions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--protect",
        type=int,
        action="append",
        default=[],
        metavar="GROUP",
        help="never write to this group (repeatable)",
    )
    args = parser.parse_args()
    protected = set(args.protect)

    header = json.loads(sys.stdin.readline())
    if header.get("mend_plugin") != PROTOCOL:
        sys.exit(f"newest_wins.py: unsupported protocol version {header.get('mend_plugin')}")
    for line in sys.stdin:
        key = json.loads(line)["key"]
        decision = {"id": key["id"], "actions": decide(key, protected)}
        sys.stdout.write(json.dumps(decision, separators=(",", ":")) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
