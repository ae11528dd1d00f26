#!/usr/bin/env bash
# The tests' registries keep their blobs in temporary directories: the largest test pushes a
# 2.1 GiB blob to one registry and copies it to another (4.2 GiB) while others run beside it.
# With too little room they do not fail, they stall until their executions time out (15 minutes
# each), so the shortage is named here, before any test starts.
set -euo pipefail
need_gib=${TEST_DISK_GIB:-6}
dir=${TMPDIR:-/tmp}
free_kib=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
free_gib=$((free_kib / 1024 / 1024))
if ((free_gib < need_gib)); then
  echo "error: $dir has ${free_gib} GiB free; the tests need ${need_gib} GiB for their registries' blobs." >&2
  echo "Free some space (old target/ directories, stale clones) or point TMPDIR at a larger disk." >&2
  exit 1
fi
