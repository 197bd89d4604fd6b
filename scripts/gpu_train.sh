#!/usr/bin/env bash
# Go on training the shipped Performer checkpoint on a lent GPU, then measure it.
#
#   PROBE_ONLY=1 bash scripts/gpu_train.sh     # ~30 s: steps/s at this batch size, saved for the run
#   TRAIN_SECONDS=300 bash scripts/gpu_train.sh
#
# A whole session in one device call (starting a machine took 6 of the 15 minutes the first
# time, so there may be no second start): the check, then the probe, training, table and
# benchmarks, with every log packed into one file (the device tool brings back 8 files):
#
#   RUN_BENCH=0 bash scripts/gpu_check.sh; TRAIN_SECONDS=240 PACK=1 bash scripts/gpu_train.sh
#
# The run: `python -m llmppl.models.train --device cuda --init pretrained`, with as many
# optimiser steps as the probe says fit in TRAIN_SECONDS (so the cosine schedule ends
# where the time does; --max-seconds is the backstop), batches built ahead by loader
# workers. Then the held-out table (benchmarks/tasks.py, 500 per row, on the GPU) of
# the new weights and, in what time is left, the op and decoding benchmarks on the GPU.
# Everything lands in $OUT (else build/gpu-train/): model.safetensors and config.json
# (copy both into llmppl/models/weights/ to ship them), log.jsonl, train.log, tasks.md,
# bench_ops.log, bench_decode.log. Environment (defaults): TRAIN_SECONDS (300),
# BATCH_TOKENS (32768), LR (5e-4), WARMUP (300), MIN_LR_RATIO (0.1), SEED (7),
# WORKERS (8), WEIGHTS (the phase-4 mixture), PYTHON (python3), BENCH (1: run the
# benchmarks after the table), TABLE_N (500), DEVICE (cuda; cpu for a smoke test here),
# PACK (0; 1: every file but the weights packed into logs.tar.gz), INIT (pretrained: the
# checkpoint folder to start from), RUN_DIR (/tmp/llmppl-run: the run's own folder), PROBE
# (build/gpu-probe.json: the probe's result, reused when present), MAX_DIGITS (unset: the
# corpus's 1-6 digit operands; e.g. '{"scratchpad":8,"verifier":8,"direct":8}' trains
# longer additions, see BENCHMARKS.md "Longer operands").
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUTDIR="${OUT:-$ROOT/build/gpu-train}"
mkdir -p "$OUTDIR" build
START=$(date +%s)
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export LLMPPL_EXTENSIONS_DIR="${LLMPPL_EXTENSIONS_DIR:-$ROOT/build/gpu-ext}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
PY="${PYTHON:-python3}"
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1 && [ ! -d /tmp/site/pyro ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
[ -d /tmp/site ] && export PYTHONPATH="$PYTHONPATH:/tmp/site"
say() { echo "gpu_train [$(( $(date +%s) - START ))s]: $*" | tee -a "$OUTDIR/summary.txt"; }

BATCH_TOKENS="${BATCH_TOKENS:-32768}"
PHASE4='{"scratchpad":0.30,"direct":0.05,"verifier":0.22,"calculator":0.15,"selection_inference":0.15,"twenty_answerer":0.08,"twenty_questioner":0.05}'
WEIGHTS="${WEIGHTS:-$PHASE4}"
DEVICE="${DEVICE:-cuda}"
COMMON=(--device "$DEVICE" --init "${INIT:-pretrained}" --batch-tokens "$BATCH_TOKENS" --seed "${SEED:-7}"
  --workers "${WORKERS:-8}" --no-progress --weights "$WEIGHTS")
[ -n "${MAX_DIGITS:-}" ] && COMMON+=(--max-digits "$MAX_DIGITS")
PROBE="${PROBE:-build/gpu-probe.json}"  # per run when several train side by side
RUN="${RUN_DIR:-/tmp/llmppl-run}"

if [ "${PROBE_ONLY:-0}" = 1 ] || [ ! -f "$PROBE" ]; then
  rm -rf "$RUN-probe"
  say "probe: 25 s of training at lr 0, batch $BATCH_TOKENS tokens"
  timeout 120 "$PY" -m llmppl.models.train "${COMMON[@]}" --out "$RUN-probe" --steps 100000 --lr 0 \
    --eval-every 0 --save-every 100000 --max-seconds 25 > "$OUTDIR/probe.log" 2>&1
  tail -n 5 "$OUTDIR/probe.log"
  "$PY" - "$PROBE" "$RUN-probe/log.jsonl" <<'PYEOF' || { say "probe FAILED"; exit 1; }
import json, sys
rows = [json.loads(l) for l in open(sys.argv[2]) if '"loss_ema"' in l]
a, b = (rows[0], rows[-1]) if len(rows) > 1 else ({"step": 0, "elapsed": 0.0}, rows[-1])
rate = (b["step"] - a["step"]) / (b["elapsed"] - a["elapsed"])
json.dump({"steps_per_s": rate, "tokens_per_step": b["tokens"] / b["step"]}, open(sys.argv[1], "w"))
print(f"probe: {rate:.2f} steps/s, {rate * b['tokens'] / b['step']:,.0f} tokens/s, loss {b['loss_ema']}")
PYEOF
  say "probe: $(cat $PROBE)"
  [ "${PROBE_ONLY:-0}" = 1 ] && exit 0
fi

TRAIN_SECONDS="${TRAIN_SECONDS:-300}"
STEPS=$("$PY" -c "import json; print(max(50, int(json.load(open('$PROBE'))['steps_per_s'] * $TRAIN_SECONDS * 0.95)))")
say "training: $STEPS steps in about $TRAIN_SECONDS s"
rm -rf "$RUN"
timeout $(( TRAIN_SECONDS + 150 )) "$PY" -m llmppl.models.train "${COMMON[@]}" --out "$RUN" --steps "$STEPS" \
  --lr "${LR:-5e-4}" --warmup "${WARMUP:-300}" --min-lr-ratio "${MIN_LR_RATIO:-0.1}" \
  --eval-every $(( STEPS / 4 + 1 )) --eval-n 64 --save-every 250 --max-seconds $(( TRAIN_SECONDS + 20 )) \
  > "$OUTDIR/train.log" 2>&1
say "training exit $?; $(grep -c . "$RUN"/log.jsonl 2>/dev/null) log lines"
grep eval "$OUTDIR/train.log" | tail -n 5
cp "$RUN"/final/model.safetensors "$RUN"/final/config.json "$RUN"/log.jsonl "$OUTDIR/" \
  || { say "no checkpoint written"; exit 1; }

say "held-out table"
timeout 240 "$PY" benchmarks/tasks.py --checkpoint "$RUN"/final --device "$DEVICE" --n "${TABLE_N:-500}" --batch 500 \
  > "$OUTDIR/tasks.md" 2>&1
cat "$OUTDIR/tasks.md"
if [ "${BENCH:-1}" = 1 ]; then
  say "decode benchmark"
  timeout 150 "$PY" benchmarks/decode.py --device "$DEVICE" --repeats 5 > "$OUTDIR/bench_decode.log" 2>&1
  tail -n 25 "$OUTDIR/bench_decode.log"
  say "op benchmark"
  timeout 200 "$PY" benchmarks/ops.py --device "$DEVICE" --lengths 1024 4096 8192 --repeats 5 \
    > "$OUTDIR/bench_ops.log" 2>&1
  tail -n 30 "$OUTDIR/bench_ops.log"
fi
say "done"
if [ "${PACK:-0}" = 1 ]; then  # everything but the weights into logs.tar.gz
  (cd "$OUTDIR" && find . -maxdepth 1 -type f ! -name model.safetensors ! -name config.json ! -name logs.tar.gz \
    -printf '%P\n' | tar czf logs.tar.gz -T - --remove-files)
fi
