#!/usr/bin/env python3
"""Answers every key with a line that is not JSON."""
import json
import sys

sys.stdin.readline()
for line in sys.stdin:
    key = json.loads(line)["key"]
    print('{"id": "%s", "actions": [' % key["id"], flush=True)
