#!/usr/bin/env bash
# The fuzz campaign (tests/fuzz/README.md): builds the libFuzzer harnesses with clang
# (AddressSanitizer + UBSan) and runs each in turn for SECONDS (default 1800) over a work corpus
# grown from the committed seeds, then the Lua mutation harness against the sanitizer build for
# the same time per target. Stops at the first crash, leak or hang, leaving the reproducer in
# build-fuzz/findings. Usage: bash scripts/fuzz.sh [SECONDS] [HARNESS...]
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-1800}
shift || true
harnesses=${*:-"file_tensor tokenizer_bin tokenizer_model gpt2_pairs gguf lua"}
bash scripts/deps.sh || exit 1
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER=clang -DEAPIG_FUZZ=ON >/dev/null || exit 1
mkdir -p build-fuzz/findings
for h in $harnesses; do
  if [ "$h" = lua ]; then
    cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=Release -DEAPIG_SANITIZE=ON >/dev/null &&
      cmake --build build-sanitize -j2 >/dev/null || exit 1
    echo "== lua_mutate ($seconds s per target)"
    LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
      ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
      EAPIG_BUILD_DIR=build-sanitize luajit tests/fuzz/lua_mutate.lua --seconds "$seconds" || exit 1
    continue
  fi
  cmake --build build-fuzz -j2 --target "fuzz_$h" >/dev/null || exit 1
  mkdir -p "build-fuzz/corpus/$h"
  echo "== fuzz_$h ($seconds s)"
  "build-fuzz/fuzz_$h" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="build-fuzz/findings/$h-" "build-fuzz/corpus/$h" "tests/fuzz/corpus/$h" 2>&1 |
    grep -E "^#[0-9]+ +(INITED|DONE)|ERROR|SUMMARY|stat::number_of_executed_units|^Done" || exit 1
  [ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
done
