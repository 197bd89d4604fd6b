#!/usr/bin/env bash
# A lent-GPU session's main device call: checks and training together.
#
#   bash scripts/gpu_session.sh                      # one run from the shipped weights
#   RUN_B="SEED=9 BATCH_TOKENS=98304 LR=7e-4" bash scripts/gpu_session.sh   # two variants
#
# 1. build the FAVOR+ extension once (scripts/gpu_check.sh's build step);
# 2. start the training run(s) (scripts/gpu_train.sh, each into its own folder of $OUT);
# 3. meanwhile run the GPU checks (scripts/gpu_check.sh: the error probe, op tests, kernel
#    input checks, model tests);
# 4. when the runs have their held-out tables, the decoding and op benchmarks on the GPU
#    in the time left before DEADLINE seconds;
# 5. pack every log into $OUT/logs.tar.gz (the device tool brings back a few files: each
#    run's weights and config, and that archive).
#
# What the second H200 session measured (BENCHMARKS.md): two runs side by side share the
# GPU (13.8 and 5.6 steps/s against 28.8 for one run alone; 1.45M tokens/s together
# against 1.36M), so a second run is a comparison, not free time. The machine started in
# about a minute both times that session (six the first session), and a warm machine is
# given back after 30 s idle: a follow-up call must be ready before the first one ends.
#
# Environment (defaults): TRAIN_SECONDS (300), DEADLINE (450: benchmarks end by then),
# RUN_A / RUN_B (extra environment for each run, as "NAME=value ..." words, e.g. INIT,
# SEED, BATCH_TOKENS, LR, WARMUP; RUN_B empty: no second run), WEIGHTS (the mixture).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUTDIR="${OUT:-$ROOT/build/gpu-session}"
mkdir -p "$OUTDIR/check" "$OUTDIR/a"
START=$(date +%s)
export PYTHONUNBUFFERED=1
export LLMPPL_EXTENSIONS_DIR="${LLMPPL_EXTENSIONS_DIR:-$ROOT/build/gpu-ext}"
say() { echo "gpu_session [$(( $(date +%s) - START ))s]: $*" | tee -a "$OUTDIR/session.txt"; }

# the phase-6 mixture: less of what is met (scratchpad), more of what is not
PHASE6='{"scratchpad":0.16,"direct":0.04,"verifier":0.30,"calculator":0.16,"selection_inference":0.22,"twenty_answerer":0.07,"twenty_questioner":0.05}'
export WEIGHTS="${WEIGHTS:-$PHASE6}"
export TRAIN_SECONDS="${TRAIN_SECONDS:-300}" BENCH=0 PACK=0 WORKERS="${WORKERS:-6}"
RUN_A="${RUN_A:-SEED=12 BATCH_TOKENS=32768 LR=5e-4}"
RUN_B="${RUN_B:-}"
RUNS=(a)
[ -n "$RUN_B" ] && RUNS+=(b) && mkdir -p "$OUTDIR/b"
say "weights $WEIGHTS; A: $RUN_A; B: ${RUN_B:-none}; $TRAIN_SECONDS s each"

# 1. the build, alone (the runs and the checks share it)
OUT="$OUTDIR/check" RUN_BENCH=0 ONLY_BUILD=1 bash scripts/gpu_check.sh > "$OUTDIR/check/build_step.txt" 2>&1
say "build: exit $? ($(grep -c . "$OUTDIR/check/build_step.txt") lines)"
tail -n 3 "$OUTDIR/check/build_step.txt"

# 2. the run(s)
PIDS=()
for r in "${RUNS[@]}"; do
  if [ "$r" = a ]; then extra=$RUN_A; else extra=$RUN_B; fi
  # shellcheck disable=SC2086  # RUN_A / RUN_B are lists of words on purpose
  env $extra OUT="$OUTDIR/$r" PROBE="$OUTDIR/$r/probe.json" RUN_DIR="/tmp/llmppl-$r" bash scripts/gpu_train.sh \
    > "$OUTDIR/$r/run.txt" 2>&1 &
  PIDS+=($!)
done

# 3. the checks, meanwhile
OUT="$OUTDIR/check" RUN_BENCH=0 bash scripts/gpu_check.sh > "$OUTDIR/check/stdout.txt" 2>&1
say "checks: exit $?"
grep -E "gpu_check \[" "$OUTDIR/check/stdout.txt" | tail -n 14
grep -E "^(cpu|cuda) " "$OUTDIR/check/throw_probe.log" 2> /dev/null

for i in "${!RUNS[@]}"; do
  wait "${PIDS[$i]}"
  r=${RUNS[$i]}
  say "run $r: exit $?"
  grep -E "gpu_train \[|probe:" "$OUTDIR/$r/run.txt" | tail -n 6
  grep -E "^\|" "$OUTDIR/$r/tasks.md" 2> /dev/null
done

# 4. benchmarks in the time left (the carried wheels, pyro among them, are in /tmp/site)
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
[ -d /tmp/site ] && export PYTHONPATH="$PYTHONPATH:/tmp/site"
left() { echo $(( ${DEADLINE:-450} - ($(date +%s) - START) )); }
if ! "$PY" -c "import transformers" > /dev/null 2>&1; then
  say "decode benchmark: skipped (no transformers here for its softmax GPT-2)"
elif [ "$(left)" -gt 40 ]; then
  say "decode benchmark ($(left) s left)"
  timeout "$(left)" "$PY" benchmarks/decode.py --device cuda --repeats 3 > "$OUTDIR/bench_decode.log" 2>&1
  say "decode benchmark: exit $?"; tail -n 25 "$OUTDIR/bench_decode.log"
fi
if [ "$(left)" -gt 30 ]; then
  say "op benchmark ($(left) s left)"
  timeout "$(left)" "$PY" benchmarks/ops.py --device cuda --lengths 1024 4096 --repeats 5 > "$OUTDIR/bench_ops.log" 2>&1
  say "op benchmark: exit $?"; tail -n 30 "$OUTDIR/bench_ops.log"
fi

# 5. pack: everything but the weights and configs
say "done"
(cd "$OUTDIR" && find . -type f ! -name model.safetensors ! -name config.json ! -name logs.tar.gz -printf '%P\n' \
  | tar czf logs.tar.gz -T - --remove-files)
ls -la "$OUTDIR" "$OUTDIR"/a
