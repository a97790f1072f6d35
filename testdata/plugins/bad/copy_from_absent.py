#!/usr/bin/env python3
"""Copies from the first replica holding nothing to every other: not a version to copy."""
import json
import sys

sys.stdin.readline()
for line in sys.stdin:
    key = json.loads(line)["key"]
    replicas = key["replicas"]
    empty = next((r["index"] for r in replicas if r["state"] == "absent"), 0)
    others = [r["index"] for r in replicas if r["index"] != empty]
    decision = {"id": key["id"], "actions": [{"copy": {"from": empty, "to": others}}]}
    print(json.dumps(decision), flush=True)
