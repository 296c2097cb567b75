#!/usr/bin/env bash
# The GPU checks of issues 3, 4 and 8 in one device run, in order of what is most wanted, each step under its
# own time limit so that a slow one cannot eat the others (about 9 minutes in all).
#
#   Here, once:                  bash ../shared/tools/gpu-wheels.sh && .venv/bin/python benchmarks/gpu_models.py pack
#   Device run 1 (install; the packages stay in /tmp/site while the machine is warm, 30 s after a call):
#       run(carry=[".gpu"], timeout_s=240, command="source .gpu/activate.sh && python3 -c 'import ray, optuna, mlflow'")
#   Device run 2, at once (.gpu and .minilm together are over the 64 MiB a run carries):
#       run(carry=[".minilm"], timeout_s=590, command="bash benchmarks/gpu_session.sh")
#   Then: copy $OUT's results into benchmarks/results/ and python benchmarks/readme_results.py --write.
#
# Steps (results land in benchmarks/results/ there; after each step $OUT holds their .md files and
# results.tar.gz with the JSON and every step's log, so a run cut short still brings back what it finished):
#   1. trial_setup  (#8)  deep copy vs working copy put back, on the GPU
#   2. trial_rate   (#8, #3)  trials/min of searches with 4 Ray actors sharing the GPU (gpus_per_trial 0.25)
#                   against the bare-loop floor; target 1,000 per minute with every trial in Optuna and MLflow
#   3. latency      (#4)  predicted vs measured latency of 30 random MiniLM plans, calibrated on the GPU
#   4. llama        (#4)  the same for a random-init 1.1B Llama, batch-1 decode after 511 tokens, 8 plans
# Dry run on a CPU (writes trial_setup/trial_rate results: `git checkout benchmarks/results` after it):
#   DEVICE=cpu TRIALS=12 PLANS=3 LLAMA=0 WORKERS=1 SETUP_ARGS="--plans 3 --eval 32 --repeats 3" PY=.venv/bin/python \
#   OUT=/tmp/gpu-out bash benchmarks/gpu_session.sh
set -uo pipefail
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1 \
       RAY_USAGE_STATS_ENABLED=0
OUT=${OUT:-/tmp/gpu-out}; DEVICE=${DEVICE:-cuda}; TRIALS=${TRIALS:-300}; PLANS=${PLANS:-30}; LLAMA=${LLAMA:-1}
PY=${PY:-python3}; SETUP_ARGS=${SETUP_ARGS:-}; WORKERS=${WORKERS:-4}
BUDGET=${BUDGET:-560}  # seconds for all steps: run 2's timeout_s (590) less a margin for the last packing
LOGS=/tmp/gpu-session-logs; rm -rf "$LOGS"; mkdir -p "$LOGS" "$OUT"
touch "$LOGS/.start"
profile=$([ "$DEVICE" = cuda ] && echo h100-sxm || echo cpu-local)

pack() {  # what has come back so far: the new results' markdown, and results + logs in one archive
  local new; new=$(find benchmarks/results -newer "$LOGS/.start" -type f | sort)
  for f in $new; do case $f in *.md) cp "$f" "$OUT/";; esac; done
  tar czf "$OUT/results.tar.gz" -C "$LOGS" . -C "$PWD" $new
}

step() {  # step NAME SECONDS COMMAND...: runs it under its limit (cut to what BUDGET leaves), logs, packs
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - SECONDS)) t0=$SECONDS
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 20 ]; then echo "== $name: skipped, $left s of the budget left"; return; fi
  echo "== $name (limit $limit s): $*"
  timeout --signal=INT --kill-after=15 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  tail -n 15 "$LOGS/$name.log"
  echo "== $name: rc $rc after $((SECONDS - t0)) s"
  pack
}

step env 30 bash -c "nvidia-smi 2>/dev/null | head -15; $PY -c 'import torch, ray, optuna, mlflow, transformers; print(torch.__version__, torch.cuda.is_available(), ray.__version__, optuna.__version__, mlflow.__version__, transformers.__version__)'"
step minilm 60 "$PY" benchmarks/gpu_models.py unpack /tmp/minilm --site /tmp/site
step trial_setup 80 "$PY" benchmarks/trial_setup.py --device "$DEVICE" $SETUP_ARGS
step trial_rate 200 "$PY" benchmarks/trial_rate.py --device "$DEVICE" --workers "$WORKERS" --writer-process --trials "$TRIALS"
step latency 90 "$PY" benchmarks/latency_fidelity.py --device "$DEVICE" --profile "$profile" --n-plans "$PLANS" \
    --tag minilm
if [ "$LLAMA" = 1 ]; then
  step llama_build 60 "$PY" benchmarks/gpu_models.py llama1b /tmp/llama1b
  step llama 90 "$PY" benchmarks/latency_fidelity.py --device "$DEVICE" --profile "$profile" --model /tmp/llama1b \
      --mode decode --seq-len 512 --n-plans 8 --rounds 2 --tag llama1b-decode
fi
ls -la "$OUT"
