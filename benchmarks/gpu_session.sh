#!/usr/bin/env bash
# One prepared GPU session (a lent machine with torch but no papermill):
#
#   OUT=/path/for/results PURILIB_DATA_ROOT=/path/to/data benchmarks/gpu_session.sh [SECONDS]
#
# 1. benchmarks/gpu_check.py    every attack and defense on CUDA       -> $OUT/gpu_check.jsonl
# 2. benchmarks/gpu_speed.py    reference loop vs current, with ratios  -> $OUT/gpu_speed.jsonl
# 3. benchmarks/run_grid.py     nft-table1, gpu profile, BadNets + Blend, every column, in the
#                               time left of SECONDS (default 540)     -> $OUT/nft-table1/gpu/records/
# Each step writes as it goes, so a run cut short keeps what finished.  Bring $OUT back, copy the
# records to results/nft-table1/gpu/records/ and render the notebook where papermill is:
#   ./reproduce.sh nft-table1 --profile gpu --attacks BadNets,Blend --from-records
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PURILIB_PROGRESS=0
: "${OUT:?set OUT to a folder for the results}"
budget=${1:-540}
start=$(date +%s)
left() { echo $(( budget - ($(date +%s) - start) )); }
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
timeout "$(left)" python3 benchmarks/gpu_check.py --out "$OUT/gpu_check.jsonl" --cache-dir "$OUT/cache-check"
timeout "$(left)" python3 benchmarks/gpu_speed.py --out "$OUT/gpu_speed.jsonl" --defenses "NFT,ANP,FT,I-BAU"
rm -rf "$OUT/cache-check"  # weights stay out of what comes back
timeout "$(left)" python3 benchmarks/run_grid.py nft-table1 --profile gpu --attacks BadNets,Blend \
  --output-dir "$OUT/nft-table1/gpu" --cache-dir "${PURILIB_CACHE_DIR:-/tmp/purilib-cache}" \
  > "$OUT/run_grid.log" 2>&1
echo "session done in $(( $(date +%s) - start )) s; $(ls "$OUT"/nft-table1/gpu/records 2>/dev/null | wc -l) records"
