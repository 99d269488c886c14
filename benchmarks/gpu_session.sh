#!/usr/bin/env bash
# One prepared GPU session (a lent machine with torch but no papermill), in SECONDS (default 540):
#
#   OUT=/path/for/results PURILIB_DATA_ROOT=/path/to/data benchmarks/gpu_session.sh [SECONDS] [DEVICE]
#
# Phase 1, in parallel on the one GPU (several processes: one leaves the GPU idle most of the time):
#   - benchmarks/gpu_check.py: every attack and defense on CUDA                -> gpu_check.jsonl
#   - per attack (BadNets, Blend): the gpu-profile model, then three processes at once: nft-table1
#     (ANP, RNP, FT, NFT), nft-table1 (I-BAU, AWM, FT-SAM), the nft-study's columns
#                                                                               -> records.tar.gz
# Phase 2, alone on the GPU (clean timings), in the time left: benchmarks/gpu_speed.py -> gpu_speed.jsonl
# Every process writes as it goes; phase 1 stops at 3/4 of SECONDS whatever is unfinished.
# $OUT gets at most 8 plain files (the device tool brings back no deeper folders): gpu.txt, session.log,
# gpu_check.jsonl, gpu_speed.jsonl, records.tar.gz (records + the models' manifests), logs.tar.gz.
# Back here: tar xzf records.tar.gz -C results/ ; then render each notebook from its records:
#   ./reproduce.sh nft-table1 --profile gpu --attacks BadNets,Blend --from-records   (and nft-study)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PURILIB_PROGRESS=0 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
: "${OUT:?set OUT to a folder for the results}"
budget=${1:-540} device=${2:-auto} profile=${PROFILE:-gpu}
export PURILIB_CACHE_DIR="${PURILIB_CACHE_DIR:-/tmp/purilib-cache}"
work=/tmp/purilib-session
rm -rf "$work"; mkdir -p "$OUT" "$work/logs" "$work/results"
start=$(date +%s)
now() { echo $(( $(date +%s) - start )); }
log() { echo "[$(now) s] $*" | tee -a "$OUT/session.log"; }
phase1_end=$(( budget * 3 / 4 ))
until_phase1_end() { local t=$(( phase1_end - $(now) )); echo $(( t > 1 ? t : 1 )); }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" \
  >> "$OUT/gpu.txt" 2>&1
log "decoding CIFAR-10 once (every process reads the cache)"
python3 -c "from purilib.data import load_cifar10; load_cifar10('test')" > "$work/logs/data.log" 2>&1 \
  || log "data: failed (see logs)"

grid() {  # table attack defenses name: one run_grid process, stopped at the end of phase 1
  local t0; t0=$(now)
  timeout "$(until_phase1_end)" python3 benchmarks/run_grid.py "$1" --profile "$profile" --attacks "$2" \
    ${3:+--defenses "$3"} --device "$device" --output-dir "$work/results/$1/$profile" > "$work/logs/$4.log" 2>&1
  log "$4: exit $? after $(( $(now) - t0 )) s"
}

log "phase 1 until ${phase1_end} s"
( timeout "$(until_phase1_end)" python3 benchmarks/gpu_check.py --device "$device" --out "$OUT/gpu_check.jsonl" \
    --cache-dir "$work/cache-check" > "$work/logs/gpu_check.log" 2>&1; log "gpu_check: exit $?" ) &
for attack in BadNets Blend; do
  (
    grid nft-table1 "$attack" "No defense" "model-$attack"  # trains the model (the others load it)
    grid nft-table1 "$attack" "ANP,RNP,FT,NFT" "table1a-$attack" &
    grid nft-table1 "$attack" "I-BAU,AWM,FT-SAM" "table1b-$attack" &
    grid nft-study "$attack" "" "study-$attack" &
    wait
  ) &
done
wait
rm -rf "$work/cache-check"
log "phase 1 done"

left=$(( budget - $(now) - 15 ))
if [ "$left" -gt 30 ]; then
  log "phase 2: gpu_speed for at most $left s"
  timeout "$left" python3 benchmarks/gpu_speed.py --device "$device" --out "$OUT/gpu_speed.jsonl" \
    --batch-sizes 128 --train-steps 50 --defenses "NFT,ANP,FT" --defense-steps 100 \
    > "$work/logs/gpu_speed.log" 2>&1
  log "gpu_speed: exit $?"
fi

# the records and the models' manifests (not their weights), the logs: one file each
mkdir -p "$work/results/manifests"
find "$PURILIB_CACHE_DIR" -name manifest.json 2>/dev/null | while read -r f; do
  cp "$f" "$work/results/manifests/$(basename "$(dirname "$f")").json"; done
tar czf "$OUT/records.tar.gz" -C "$work/results" .
tar czf "$OUT/logs.tar.gz" -C "$work" logs
log "session done; $(find "$work/results" -name '*.json' -path '*records*' | wc -l) records"
