#!/usr/bin/env bash
# Fail if `nbdev-clean` or `nbdev-export` would change the tree (untracked files included).
# Usage: tools/check_sync.sh [bin-dir holding nbdev-clean / nbdev-export]
set -euo pipefail
BIN="${1:-.venv/bin}"
state() {
  git status --porcelain=v1 --untracked-files=all
  git diff HEAD --binary | sha1sum
  git ls-files --others --exclude-standard -z | xargs -0 -r sha1sum
}
before="$(state)"
"$BIN/nbdev-clean" >/dev/null
"$BIN/nbdev-export"
after="$(state)"
if [ "$before" != "$after" ]; then
  echo "ERROR: the notebooks and the library are out of sync (nbdev-clean / nbdev-export changed these files):" >&2
  diff <(echo "$before") <(echo "$after") | grep '^[<>]' | grep -v '^[<>] [0-9a-f]\{40\}  -$' >&2 || true
  echo "Run 'nbdev-clean' and then 'nbdev-export' (e.g. .venv/bin/nbdev-clean && .venv/bin/nbdev-export) and commit the result." >&2
  exit 1
fi
echo "notebooks and library are in sync"
