#!/usr/bin/env python3
"""Removes every copy of the key, keeping a replica that holds nothing: loses the data."""
import json
import sys

sys.stdin.readline()
for line in sys.stdin:
    key = json.loads(line)["key"]
    replicas = key["replicas"]
    empty = next((r["index"] for r in replicas if r["state"] == "absent"), 0)
    holders = [r["index"] for r in replicas if r["state"] != "absent" and r["index"] != empty]
    decision = {"id": key["id"], "actions": [{"remove": {"on": holders, "keep": empty}}]}
    print(json.dumps(decision), flush=True)
