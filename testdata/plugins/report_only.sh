#!/bin/sh
# A mend recovery plugin in POSIX sh, with no other tool: change nothing, and report
# every key as skipped, with its replicas' states as the reason (see them in the CSV
# report of `mend dc --report FILE.csv`).
#
#     mend dc -g 1,2,3 -C 'sh testdata/plugins/report_only.sh' --report audit.csv
#
# It relies on the engine writing "id" first in "key" and every field compactly, as the
# protocol promises (README.md, "Writing a recovery policy").

IFS= read -r header || exit 2
case $header in
    '{"mend_plugin":1,'*) ;;
    *)
        echo "report_only.sh: unsupported protocol: $header" >&2
        exit 2
        ;;
esac

while IFS= read -r line; do
    id=${line#*\"id\":\"}
    id=${id%%\"*}
    states=
    rest=$line
    while :; do
        case $rest in
            *'"state":"'*) ;;
            *) break ;;
        esac
        rest=${rest#*\"state\":\"}
        states="$states${states:+ }${rest%%\"*}"
    done
    printf '{"id":"%s","actions":[{"skip":{"reason":"report only: %s"}}]}\n' "$id" "$states"
done
