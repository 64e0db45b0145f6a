#!/usr/bin/env bash
# Benchmark (not a test): whole `eapig` processes on a random GPT-2-small-sized f32 checkpoint
# (12 layers, 12 heads, d_model 768, d_mlp 3072, vocab 50257: 0.5 GB of safetensors), measured
# with /usr/bin/time -v (wall clock and peak RSS):
#   - eapig info (load time alone);
#   - eapig attribute: 8 rows x 20 tokens, batch 8, EAP-IG-inputs with 5 steps;
#   - eapig sweep over 10 circuit sizes against 10 separate `eapig evaluate` runs of those sizes.
# Run from the repository root after building: bash scripts/bench_process.sh [workdir]
# The model and data are written once into workdir (default: a fresh temporary folder, removed
# at the end unless given) and reused by later runs that name the same folder.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ ! -x /usr/bin/time ]; then echo "bench_process: /usr/bin/time is missing (apt-get install time)" >&2; exit 1; fi
keep=1
work=${1:-}
if [ -z "$work" ]; then work=$(mktemp -d); keep=0; fi
mkdir -p "$work"
cleanup() { if [ "$keep" = 0 ]; then rm -rf -- "$work"; fi; }
trap cleanup EXIT

if [ ! -f "$work/model/model.safetensors" ]; then
  echo "writing a random GPT-2-small-sized checkpoint and 8 rows of 20 tokens into $work ..." >&2
  mkdir -p "$work/model"
  BENCH_WORK=$work luajit -e '
    package.path = "./lua/?.lua;./lua/?/init.lua;./build/?.lua;" .. package.path
    package.cpath = "./build/?.so;" .. package.cpath
    local train = require("eapig.apps.train")
    local work = os.getenv("BENCH_WORK")
    -- GPT-2 initialisation (std 0.02), saved as transformers saves GPT2LMHeadModel, float32
    local raw = train.new_model({ family = "gpt2", layers = 12, heads = 12, d_model = 768, d_mlp = 3072,
      vocab = 50257, n_ctx = 1024 })
    train.save_pretrained(raw, work .. "/model")
    local rng = require("eapig.rng").new(7)
    local f = assert(io.open(work .. "/data.jsonl", "wb"))
    local function id() return math.floor((rng:normal() * 1e6) % 50257) end
    for _ = 1, 8 do
      local clean, corrupted = {}, {}
      for p = 1, 20 do
        clean[p] = id()
        corrupted[p] = p > 10 and id() or clean[p]
      end
      f:write(("{\"clean\": [%s], \"corrupted\": [%s], \"correct\": %d, \"incorrect\": %d}\n"):format(
        table.concat(clean, ", "), table.concat(corrupted, ", "), id(), id()))
    end
    f:close()
  '
fi

eapig=("$root/scripts/eapig")
# Runs a command under /usr/bin/time -v; prints "label: wall s, peak RSS MB".
measure() {
  local label=$1; shift
  /usr/bin/time -v -o "$work/time.txt" "$@" > "$work/out.txt" 2> "$work/err.txt" || {
    cat "$work/err.txt" >&2; echo "bench_process: $label failed" >&2; exit 1; }
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, t, ":"); s = 0;
    for (i = 1; i <= n; i++) s = s * 60 + t[i]; print s }' "$work/time.txt")
  rss=$(awk -F': ' '/Maximum resident set size/ { printf "%.0f", $2 / 1024 }' "$work/time.txt")
  printf '%-44s %7.2f s wall  %6s MB peak RSS\n' "$label" "$wall" "$rss"
  echo "$wall" > "$work/last_wall.txt"
}

measure "eapig info" "${eapig[@]}" info --model "$work/model" --json
n_edges=$(luajit -e 'local s = io.read("*a"); print(s:match("\"n_edges\":%s*(%d+)"))' < "$work/out.txt")
measure "eapig attribute (EAP-IG-inputs, 5 steps)" "${eapig[@]}" attribute --model "$work/model" \
  --data "$work/data.jsonl" --method EAP-IG-inputs --ig-steps 5 --batch-size 8 --quiet --out "$work/graph.json"

sizes="0.001,0.002,0.005,0.01,0.02,0.05,0.1,0.2,0.5,1.0"
measure "eapig sweep (10 sizes)" "${eapig[@]}" sweep --model "$work/model" --data "$work/data.jsonl" \
  --graph "$work/graph.json" --sizes "$sizes" --quiet --out "$work/sweep.svg"
sweep_wall=$(cat "$work/last_wall.txt")
total=0
IFS=, read -r -a fractions <<< "$sizes"
for frac in "${fractions[@]}"; do
  n=$(awk -v f="$frac" -v e="$n_edges" 'BEGIN { printf "%d", f * e + 0.5 }')
  [ "$n" -ge 1 ] || n=1
  "${eapig[@]}" circuit --graph "$work/graph.json" --topn "$n" --out "$work/circuit.json" > /dev/null
  measure "eapig evaluate (top $n edges)" "${eapig[@]}" evaluate --model "$work/model" --data "$work/data.jsonl" \
    --graph "$work/circuit.json" --quiet
  total=$(awk -v a="$total" -v b="$(cat "$work/last_wall.txt")" 'BEGIN { print a + b }')
done
awk -v t="$total" -v s="$sweep_wall" 'BEGIN { printf "10 evaluates %.2f s, one sweep %.2f s: sweep %.1fx faster\n", t, s, t / s }'
