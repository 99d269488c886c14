#!/usr/bin/env bash
# One GPU command of the campaign (benchmarks/campaign.toml), on a lent machine with torch but no papermill:
# the units not yet recorded in results/, as many as fit in SECONDS (default 540), PROCESSES at once.
#
#   here, once:    echo /.gpu-data/ >> .git/info/exclude; mkdir -p .gpu-data; cp ../shared/data/cifar10-jpeg.tar.gz .gpu-data/
#   rehearse:      OUT=/tmp/out PURILIB_DATA_ROOT=$PWD/.gpu-data PROFILE=smoke bash benchmarks/gpu_session.sh 120 cpu
#   on the device: OUT=$OUT PURILIB_DATA_ROOT=$PWD/.gpu-data bash benchmarks/gpu_session.sh 540   (carry .gpu-data)
#   back here:     .venv/bin/python -m purilib.campaign unpack <files>/records.tar.gz   (renders every touched table)
#
# $OUT gets 5 plain files (the device tool brings back at most 8): gpu.txt, session.log, campaign.json,
# records.tar.gz (rewritten after every group: a command killed at its limit still brings back each finished
# cell), logs.tar.gz.
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
# decoded once here, so that the runner's processes all read the cache instead of decoding at once
"$python" -c "from purilib.data import load_cifar10; load_cifar10('test')" >> "$OUT/gpu.txt" 2>&1
left=$(( budget - ($(date +%s) - start) - 10 ))
"$python" -m purilib.campaign run --out "$OUT" --budget "$left" --processes "${PROCESSES:-6}" --device "$device" \
  ${PROFILE:+--profile "$PROFILE"} 2>&1 | tee "$OUT/session.log"
