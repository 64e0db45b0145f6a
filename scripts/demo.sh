#!/usr/bin/env bash
# The main job on a fresh machine: install missing packages, build, and run `eapig demo` on the
# embedded induction model (writes circuit.json, circuit.svg and curve.svg here).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/deps.sh"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$root/build" -j2 >/dev/null
exec luajit "$root/scripts/eapig" demo "$@"
