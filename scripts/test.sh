#!/usr/bin/env bash
# The whole test suite: installs missing packages, builds libeapig twice (plain, and with
# AddressSanitizer + UBSan), runs every busted spec against each build, and ends with one line
# "N passed, N failed[, N skipped]" summed over both runs. Both builds treat compiler warnings as
# errors (EAPIG_WERROR), as CI must; users' builds do not.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh || exit 1

build() { # dir, extra cmake args...
  local dir=$1; shift
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DEAPIG_WERROR=ON "$@" >/dev/null && cmake --build "$dir" -j2 >/dev/null
}

# The logs go to a folder of this run's own: a fixed /tmp name would be shared with any other
# checkout's test run at the same time, and one would read the other's half-written log.
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

run_busted() { # build dir, label; prints busted's summary line on the last line
  local dir=$1 label=$2
  echo "== tests against $label build ($dir)" >&2
  EAPIG_BUILD_DIR=$dir busted -o plainTerminal 2>&1 |
    tee "$logs/busted-$label.log" >&2
}

summarize() { # busted log -> "passed failed skipped"
  grep -E '^[0-9]+ successes? / [0-9]+ failures? / [0-9]+ errors? / [0-9]+ pending' "$1" | tail -1 |
    awk '{print $1, $4 + $7, $10}'
}

status=0
build build || { echo "build failed" >&2; status=1; }
build build-sanitize -DEAPIG_SANITIZE=ON || { echo "sanitizer build failed" >&2; status=1; }

passed=0 failed=0 skipped=0
if [ $status -eq 0 ]; then
  run_busted build plain
  read -r p f s < <(summarize "$logs/busted-plain.log" || echo "0 1 0")
  passed=$((passed + ${p:-0})) failed=$((failed + ${f:-1})) skipped=$((skipped + ${s:-0}))
  # LuaJIT is not instrumented: preload the sanitizer runtime; LuaJIT's own allocations at exit
  # are not leaks of ours, so leak detection stays off.
  asan=$(gcc -print-file-name=libasan.so)
  ubsan=$(gcc -print-file-name=libubsan.so)
  LD_PRELOAD="$asan $ubsan" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    EAPIG_SANITIZED=1 run_busted build-sanitize sanitize
  read -r p f s < <(summarize "$logs/busted-sanitize.log" || echo "0 1 0")
  passed=$((passed + ${p:-0})) failed=$((failed + ${f:-1})) skipped=$((skipped + ${s:-0}))
else
  failed=1
fi
if [ "$skipped" -gt 0 ]; then
  echo "$passed passed, $failed failed, $skipped skipped"
else
  echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
