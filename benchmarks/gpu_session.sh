#!/usr/bin/env bash
# One GPU command of the campaign (benchmarks/campaign.toml), on a lent machine with torch but no papermill:
# the units not yet recorded in results/ (SELECT: only those whose id starts so, e.g. t1-gpu-), as many as fit
# in SECONDS (default 540), PROCESSES at once (default 8, the most the first H200 session ran beside each other;
# `python -m purilib campaign plan --processes N` says what N would finish by the queue's estimates, which were
# measured with 4 to 7 processes).
#
#   here, once:    echo /.gpu-data/ >> .git/info/exclude; mkdir -p .gpu-data; cp ../shared/data/cifar10-jpeg.tar.gz .gpu-data/
#   rehearse:      OUT=/tmp/out PURILIB_PYTHON=.venv/bin/python PURILIB_DATA_ROOT=$PWD/.gpu-data PROFILE=smoke PROCESSES=2 \
#                    bash benchmarks/gpu_session.sh 150 cpu   (PURILIB_PYTHON: an interpreter with purilib's dependencies;
#                    with STATE, PURILIB_RESULTS_DIR=/tmp/rehearsal-results too: a 2nd command unpacks the 1st's records there)
#   on the device: OUT=$OUT PURILIB_DATA_ROOT=$PWD/.gpu-data bash benchmarks/gpu_session.sh 540   (carry .gpu-data)
#   back here:     .venv/bin/python -m purilib.campaign unpack <files>/records.tar.gz   (renders every touched table)
#   a 2nd command: STATE=/tmp/purilib-gpu-state on both; the second, called while the machine is still warm (30 s),
#                  takes the first's records as done (unpacked into the device's results/) and its trained models
#                  from the same cache (units on them planned without a model job: `campaign plan --budget 540,210`),
#                  and goes on down the queue with the session's device time left
#
# $OUT gets at most 8 plain files (what the device tool brings back): gpu.txt, session.log, campaign.json,
# records.tar.gz (rewritten after every job: a command killed at its limit still brings back each finished
# cell), logs.tar.gz, gpu_util.csv (nvidia-smi's GPU utilisation and memory every 5 s: is the GPU busy with
# PROCESSES processes, or would more fill it?  issue 23's throughput question); with SPEED_SECONDS=N the last
# N seconds time, in fp32, the training step at batch 128 and the defense loops (gpu_speed.jsonl: reference,
# current and the opt-in compiled loop, SPEED_DEFENSES, default NFT,FT-SAM,ANP,AWM at SPEED_STEPS, 1000).
# Before the campaign, on a GPU, a probe (PROBE_SECONDS, default 90; 0: none) times the current loop against
# the compiled one of PROBE_DEFENSES (default FIP:20,I-BAU:10,Fast FIP:20: the steps torch.compile cannot take,
# replayed as CUDA graphs) into gpu_probe.jsonl; the loops it finds faster and equal run compiled in the
# campaign, their columns estimated faster by as much (campaign run --compile-from).  A probe's ratio includes
# each run's fixed setup (FIP's Fisher diagonal, the warm-up steps), so it understates the gain of a full run.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to a folder for the results}"
budget=${1:-540} device=${2:-auto}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PURILIB_PROGRESS=0 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
export PURILIB_CACHE_DIR="${PURILIB_CACHE_DIR:-/tmp/purilib-cache}"
python=${PURILIB_PYTHON:-python3}
mkdir -p "$OUT"
start=$(date +%s)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} > "$OUT/gpu.txt" 2>&1
if [ -n "${STATE:-}" ]; then  # what earlier commands on this machine finished: done, not run again
  mkdir -p "$STATE"
  for archive in "$STATE"/records-*.tar.gz; do
    [ -e "$archive" ] && "$python" -m purilib.campaign unpack "$archive" --no-render >> "$OUT/gpu.txt" 2>&1
  done
fi
# decoded once here, so that the runner's processes all read the cache instead of decoding at once
"$python" -c "from purilib.data import load_cifar10; load_cifar10('test')" >> "$OUT/gpu.txt" 2>&1
sampler=
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$OUT/gpu_util.csv" 2>&1 &
  sampler=$!
fi
probe=${PROBE_SECONDS:-90} compile_from=
if [ "$device" = cpu ]; then probe=${PROBE_SECONDS:-0}; fi
if [ -n "${STATE:-}" ] && [ -e "$STATE/gpu_probe.jsonl" ]; then  # probed by an earlier command on this machine
  cp "$STATE/gpu_probe.jsonl" "$OUT/gpu_probe.jsonl" && compile_from="$OUT/gpu_probe.jsonl"
elif [ "$probe" -gt 0 ]; then
  timeout "$probe" "$python" benchmarks/gpu_speed.py --device "$device" --bf16 0 --batch-sizes "" \
    --variants current,compiled --compile-on-cpu --defenses "${PROBE_DEFENSES:-FIP:20,I-BAU:10,Fast FIP:20}" \
    --out "$OUT/gpu_probe.jsonl" >> "$OUT/session.log" 2>&1
  compile_from="$OUT/gpu_probe.jsonl"
  if [ -n "${STATE:-}" ] && [ -e "$compile_from" ]; then cp "$compile_from" "$STATE/gpu_probe.jsonl"; fi
fi
left=$(( budget - ($(date +%s) - start) - 10 ))
speed=${SPEED_SECONDS:-0}  # seconds kept at the end for gpu_speed.py on the defenses (reference, current, compiled)
"$python" -m purilib.campaign run --out "$OUT" --budget "$(( left - speed ))" --processes "${PROCESSES:-8}" \
  --device "$device" ${PROFILE:+--profile "$PROFILE"} ${SELECT:+--select "$SELECT"} \
  ${compile_from:+--compile-from "$compile_from"} 2>&1 | tee -a "$OUT/session.log"
status=$?
if [ "$speed" -gt 0 ]; then
  # fp32, as the gpu profile's defenses run and the paper profile's models train (its 250 epochs alone: the
  # step's milliseconds x 97,750 steps; campaign.toml's paper model_s is an extrapolation until then)
  timeout "$speed" "$python" benchmarks/gpu_speed.py --device "$device" --bf16 0 --batch-sizes 128 --defenses "${SPEED_DEFENSES:-NFT,FT-SAM,ANP,AWM}" \
    --defense-steps "${SPEED_STEPS:-1000}" --out "$OUT/gpu_speed.jsonl" >> "$OUT/session.log" 2>&1
fi
if [ -n "${STATE:-}" ] && [ -e "$OUT/records.tar.gz" ]; then cp "$OUT/records.tar.gz" "$STATE/records-$start.tar.gz"; fi
if [ -n "$sampler" ]; then kill "$sampler" 2> /dev/null; fi
exit "$status"
