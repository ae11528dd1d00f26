#!/usr/bin/env bash
# Adds up the "test result:" lines of a cargo test log and prints one closing line,
# "tests: N passed, N failed". Exits non-zero when nothing ran or anything failed.
set -euo pipefail
log=${1:?usage: summarise-tests.sh LOG}
# cargo test ("test result: ok. N passed; M failed;") and node --test ("# pass N", "# fail M").
passed=$(( $(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}') + $(grep -E '^# pass [0-9]+$' "$log" | awk '{s+=$3} END {print s+0}') ))
failed=$(( $(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}') + $(grep -E '^# fail [0-9]+$' "$log" | awk '{s+=$3} END {print s+0}') ))
echo "tests: ${passed} passed, ${failed} failed"
[ "$passed" -gt 0 ] && [ "$failed" -eq 0 ]
