#!/bin/sh
# Exits with status 3 after reading the first key, without answering it.
IFS= read -r header
IFS= read -r key
echo "exit_nonzero.sh: giving up" >&2
exit 3
