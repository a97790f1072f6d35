#!/usr/bin/env python3
"""Reads the first key and never answers (writes its pid to the file named, if any)."""
import sys
import time

if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as f:
        f.write(f"{__import__('os').getpid()}\n")
sys.stdin.readline()
sys.stdin.readline()
time.sleep(3600)
