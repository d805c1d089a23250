#!/usr/bin/env bash
# The newcomer's run: the README's two commands on a clean clone in a temporary folder, HOME an
# empty folder (no pip, torch or weights cache), no ../shared beside it and no REALSR_WEIGHTS_DIR.
#
#   bash bench/fresh_machine.sh [--no-tests] [COMMIT]     (default: HEAD of this checkout)
#
# Prints each phase's wall time; the full log is in bench/out/fresh_machine_<stamp>.log.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tests=1
[ "${1:-}" = "--no-tests" ] && { tests=0; shift; }
commit=${1:-HEAD}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$here/bench/out"
log="$here/bench/out/fresh_machine_$stamp.log"
work=$(mktemp -d /tmp/realsr-fresh.XXXXXX)
trap 'rm -rf "$work"' EXIT
git clone -q "$here" "$work/realsr"
git -C "$work/realsr" checkout -q "$commit"
mkdir "$work/home"
[ ! -e "$work/shared" ] || { echo "unexpected $work/shared" >&2; exit 2; }

phase() {  # phase NAME COMMAND...: run in the clone with the newcomer's environment, timed
  local name=$1; shift
  local t0=$SECONDS rc=0
  echo "== $name: $*" | tee -a "$log"
  (cd "$work/realsr" && env -i PATH="$PATH" HOME="$work/home" LANG=C.UTF-8 TERM=dumb bash -c "$*") >>"$log" 2>&1 || rc=$?
  printf '%-28s %5d s  rc=%d\n' "$name" $((SECONDS - t0)) "$rc" | tee -a "$log"
  return $rc
}

{
  echo "# fresh machine run $stamp: $(git -C "$here" rev-parse --short "$commit"), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# clone $work/realsr, HOME=$work/home (empty), REALSR_WEIGHTS_DIR unset, no ../shared"
} | tee "$log"
# the README's first command, timed in its two halves
phase "1a. ./setup.sh" './setup.sh'
phase "1b. realsr demo runs/demo" '.venv/bin/realsr demo runs/demo' || true
grep -E "^weights ready|^demo finished|^\| " "$log" | tail -n 12 || true
phase "2. realsr weights verify" '.venv/bin/realsr weights verify' || true
if [ "$tests" = 1 ]; then  # the README's second command
  phase "3. setup + tests" './setup.sh && .venv/bin/python -m pytest -q' || true
  tail -n 3 "$log"
fi
echo "log: $log"
