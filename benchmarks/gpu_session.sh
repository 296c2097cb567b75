#!/usr/bin/env bash
# The GPU checks in device runs (parts A, B, C), each step under its own time limit so that a slow one cannot eat
# the others. Run A carries the packages (.gpu, about 56 MB); run B, started at once while the machine is warm (the packages
# stay in /tmp/site), carries MiniLM (.minilm, 45 MB): together they are over the 64 MiB one run carries.
#
#   Here, once:   bash ../shared/tools/gpu-wheels.sh zstandard && .venv/bin/python benchmarks/gpu_models.py pack
#   Device run A: run(carry=[".gpu", ".minilm/tokenizer.json", ".minilm/tokenizer_config.json", ".minilm/vocab.txt",
#                            ".minilm/special_tokens_map.json"], timeout_s=300, command="source .gpu/activate.sh && PART=A bash benchmarks/gpu_session.sh")
#   Device run B: run(carry=[".minilm"], timeout_s=480, command="PART=B bash benchmarks/gpu_session.sh")
#   Device run C (the latency steps alone, MiniLM's shape with random weights: latency does not depend on them;
#   each model's calibration takes a minute or two on an H200, so give this part a run of its own):
#       run(carry=[".gpu", the four tokenizer files, ".minilm/config.json"], timeout_s=600,
#           command="source .gpu/activate.sh && PART=C BUDGET=570 bash benchmarks/gpu_session.sh")
#   Then: copy $OUT's results into benchmarks/results/ and python benchmarks/readme_results.py --write.
#
# Steps (results land in benchmarks/results/ there; after each step $OUT holds their .md files and
# results.tar.gz with the JSON and every step's log, so a run cut short still brings back what it finished):
#   A  decode       SmolLM2-135M-shaped decode ms/token: bf16 vs int8 / int4 weight-only kernels (gpu_decode.py)
#   A  llama        predicted vs measured latency of a random-init 1.1B Llama, batch-1 decode after 511 tokens
#   B  quickstart   examples/quickstart.yaml end to end on the GPU, 4 Ray actors sharing it (gpu_quickstart.py)
#   B  trial_rate   trials/min of searches with 4 Ray actors sharing the GPU (gpus_per_trial 0.25) against the
#                   bare-loop floor; target 1,000 per minute with every trial in Optuna and MLflow
#   B  latency      predicted vs measured latency of 30 random MiniLM plans, calibrated on the GPU
#   B  trial_setup  deep copy vs working copy put back, on the GPU
# Dry run on a CPU (writes *_cpu / cpu results: `git status` and remove them after it):
#   DEVICE=cpu TRIALS=12 PLANS=3 WORKERS=2 SETUP_ARGS="--plans 3 --eval 32 --repeats 3" PY=.venv/bin/python \
#   OUT=/tmp/gpu-out PART=B bash benchmarks/gpu_session.sh
set -uo pipefail
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1 \
       RAY_USAGE_STATS_ENABLED=0
OUT=${OUT:-/tmp/gpu-out}; DEVICE=${DEVICE:-cuda}; TRIALS=${TRIALS:-150}; PLANS=${PLANS:-30}
PY=${PY:-python3}; SETUP_ARGS=${SETUP_ARGS:-}; WORKERS=${WORKERS:-4}
PART=${PART:-B}
BUDGET=${BUDGET:-$([ "$PART" = A ] && echo 270 || echo 450)}  # seconds for all steps: the run's timeout_s less a margin
LOGS=/tmp/gpu-session-logs; rm -rf "$LOGS"; mkdir -p "$LOGS" "$OUT"
touch "$LOGS/.start"
profile=$([ "$DEVICE" = cuda ] && echo h100-sxm || echo cpu-local)

pack() {  # what has come back so far: the new results' markdown, and results + logs in one archive
  local new; new=$(find benchmarks/results -newer "$LOGS/.start" -type f | sort)
  for f in $new; do case $f in *.md) cp "$f" "$OUT/";; esac; done
  if [ -n "$new" ]; then tar czf "$OUT/results.tar.gz" -C "$LOGS" . -C "$PWD" $new
  else tar czf "$OUT/results.tar.gz" -C "$LOGS" .; fi
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

step env 20 bash -c "nvidia-smi 2>/dev/null | head -15; $PY -c 'import torch, ray, optuna, mlflow, transformers; print(torch.__version__, torch.cuda.is_available(), ray.__version__, optuna.__version__, mlflow.__version__, transformers.__version__)'"
if [ "$PART" = A ]; then
  step decode 60 "$PY" benchmarks/gpu_decode.py --device "$DEVICE"
  step llama_build 50 "$PY" benchmarks/gpu_models.py llama1b /tmp/llama1b
  step llama 100 "$PY" benchmarks/latency_fidelity.py --device "$DEVICE" --profile "$profile" --model /tmp/llama1b \
      --mode decode --seq-len 512 --n-plans 8 --rounds 2 --tag llama1b-decode
elif [ "$PART" = C ]; then  # the latency checks alone, in one run with the packages: MiniLM's shape, random weights
  step minilm_shape 30 "$PY" benchmarks/gpu_models.py minilm-shape /tmp/minilm-shape
  step latency 250 "$PY" benchmarks/latency_fidelity.py --device "$DEVICE" --profile "$profile" --model /tmp/minilm-shape \
      --n-plans "$PLANS" --tag minilm-shape
  step llama_build 40 "$PY" benchmarks/gpu_models.py llama1b /tmp/llama1b
  step llama 250 "$PY" benchmarks/latency_fidelity.py --device "$DEVICE" --profile "$profile" --model /tmp/llama1b \
      --mode decode --seq-len 512 --n-plans 8 --rounds 2 --tag llama1b-decode
else
  step minilm 40 "$PY" benchmarks/gpu_models.py unpack /tmp/minilm --site /tmp/site
  step quickstart 120 "$PY" benchmarks/gpu_quickstart.py --device "$DEVICE" --workers "$WORKERS"
  step trial_rate 200 "$PY" benchmarks/trial_rate.py --device "$DEVICE" --workers "$WORKERS" --writer-process --trials "$TRIALS"
  step latency 90 "$PY" benchmarks/latency_fidelity.py --device "$DEVICE" --profile "$profile" --n-plans "$PLANS" \
      --tag minilm
  step trial_setup 60 "$PY" benchmarks/trial_setup.py --device "$DEVICE" $SETUP_ARGS
fi
ls -la "$OUT"
