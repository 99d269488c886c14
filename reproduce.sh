#!/usr/bin/env bash
# Regenerate a paper table by executing its notebook with papermill.
#
#   ./reproduce.sh TABLE [--profile smoke|cpu|gpu|paper] [--seeds N] [--device auto|cpu|cuda] [--data-root DIR]
#                        [--attacks A,B,...] [--defenses X,Y,...] [--clean-per-class K] [--model NAME]
#                        [--from-records] [--workers N|auto] [--executor local|ray] [--ray-address ADDR]
#   ./reproduce.sh --list
#
# TABLE is a table id (nft-table1) or a table number (table1: Table 1 of every
# paper that has one).  Results, and the executed notebook that is their record,
# go to results/<table>/<profile>/.  The first run creates .venv from the
# project's files; set PURILIB_PYTHON to use an existing interpreter instead
# (one that already has purilib and papermill installed).  PURILIB_RESULTS_DIR
# moves the results folder; PURILIB_DATA_ROOT / --data-root says where CIFAR-10 is.
# --attacks / --defenses run part of the grid (names as in --list); --clean-per-class
# gives every defense K clean images per class (1: one-shot; default: the profile's).  --from-records
# trains nothing: it tabulates the records already in the results folder (e.g. made on a GPU machine).
# --model: every model of the grid is this network (default: the one the paper names; resnet18: the
# NFT / FIP authors' own).  --workers N: N jobs at once (local processes, one GPU each where there are GPUs;
# default auto: one per core on the CPU for the smoke profile, else 1);
# --executor ray: the jobs on a Ray cluster ($RAY_ADDRESS or --ray-address; a local one if neither).
set -euo pipefail
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }  # against the caller's directory

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }
fail() { echo "error: $1" >&2; exit 2; }

table="" profile="smoke" seeds=1 device="auto" data_root="${PURILIB_DATA_ROOT:-}" list=0 attacks="" defenses=""
clean_per_class="" from_records=False model="" workers=auto executor=local ray_address=""
while [ $# -gt 0 ]; do
  case "$1" in
    --list) list=1 ;;
    --from-records) from_records=True ;;
    --profile|--seeds|--device|--data-root|--attacks|--defenses|--clean-per-class|--model|--workers|--executor|--ray-address)
      { [ $# -ge 2 ] && [ -n "$2" ] && [ "${2#--}" = "$2" ]; } || fail "$1 needs a value (see ./reproduce.sh --help)"
      case "$1" in
        --profile) profile="$2" ;; --seeds) seeds="$2" ;; --device) device="$2" ;; --data-root) data_root="$2" ;;
        --attacks) attacks="$2" ;; --defenses) defenses="$2" ;; --clean-per-class) clean_per_class="$2" ;;
        --model) model="$2" ;; --workers) workers="$2" ;; --executor) executor="$2" ;;
        --ray-address) ray_address="$2" ;;
      esac
      shift ;;
    -h|--help) usage; exit 0 ;;
    -*) fail "unknown option '$1' (see ./reproduce.sh --help)" ;;
    *) [ -z "$table" ] || fail "one table at a time ('$table' and '$1' given)"; table="$1" ;;
  esac
  shift
done
case "$seeds" in ''|*[!0-9]*|0) fail "--seeds needs a positive integer, not '$seeds'" ;; esac
case "$clean_per_class" in *[!0-9]*|0) fail "--clean-per-class needs a positive integer, not '$clean_per_class'" ;; esac
case "$workers" in auto) ;; ''|*[!0-9]*|0) fail "--workers needs a positive integer or 'auto', not '$workers'" ;; esac
# the notebook runs in notebooks/: hand it absolute paths
[ -n "$data_root" ] && data_root=$(absolute "$data_root")
for var in PURILIB_CACHE_DIR PURILIB_RESULTS_DIR; do
  [ -n "${!var:-}" ] && export "$var=$(absolute "${!var}")"
done
cd "$(dirname "$0")"
[ -n "$data_root" ] || data_root="$PWD/data"

# --- the environment: PURILIB_PYTHON, else .venv (created on first use)
python="${PURILIB_PYTHON:-}"
if [ -z "$python" ]; then
  python=.venv/bin/python
  if [ ! -x "$python" ] || ! "$python" -c "import purilib, papermill" 2>/dev/null; then
    echo "Creating .venv (one time): python3 -m venv .venv && pip install -c constraints.txt -e '.[notebooks,test]'" >&2
    python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -c constraints.txt -e '.[notebooks,test]'
  fi
fi

if [ "$list" = 1 ]; then exec "$python" -m purilib.cli list; fi
[ -n "$table" ] || { usage; exit 2; }

# every request checked before any kernel starts: one line naming the fix, exit status 2
plan=$("$python" -m purilib.cli check "$table" "$profile" --data-root "$data_root" --device "$device" \
  --attacks "$attacks" --defenses "$defenses" --seeds "$seeds" ${clean_per_class:+--clean-per-class "$clean_per_class"} ${model:+--model "$model"} --executor "$executor") \
  || exit 2

# killing this script stops papermill and its kernel too: they run in a process group of their own
child="" running=""
stop() {
  if [ -n "$child" ]; then
    kill -TERM -- "-$child" 2>/dev/null; wait "$child" 2>/dev/null || true
    # an interrupted run's notebook goes beside the last good one, never over it
    [ -f "$running" ] && mv -f "$running" "${running%/*}/${notebook%.ipynb}.failed.ipynb"
  fi
  exit 130
}
trap stop INT TERM HUP
while IFS=$'\t' read -r table_id notebook attack_list defense_list; do
  out="${PURILIB_RESULTS_DIR:-$PWD/results}/$table_id/$profile"
  mkdir -p "$out"
  echo "== $table_id, profile $profile, seeds $seeds -> $out/" >&2
  start=$(date +%s)
  params=(-r profile "$profile" -p seeds "$seeds" -r device "$device" -r output_dir "$out" -r data_root "$data_root")
  [ "$attack_list" = null ] || params+=(-y "{\"attacks\": $attack_list}")
  [ "$defense_list" = null ] || params+=(-y "{\"defenses\": $defense_list}")
  [ -z "$clean_per_class" ] || params+=(-p clean_per_class "$clean_per_class")
  [ "$from_records" = False ] || params+=(-p from_records True)
  [ -z "$model" ] || params+=(-r model "$model")
  [ "$workers" = auto ] || params+=(-p workers "$workers")
  [ "$executor" = local ] || params+=(-r executor "$executor")
  [ -z "$ray_address" ] || params+=(-r ray_address "$ray_address")
  # the executed notebook is the record of the run: written beside the last good one, moved over it
  # only when the run succeeded; a failed run's stays as <notebook>.failed.ipynb
  running="$out/.${notebook%.ipynb}.running.ipynb"
  PURILIB_PROGRESS="${PURILIB_PROGRESS:-1}" setsid "$python" -m papermill "notebooks/$notebook" "$running" \
    "${params[@]}" --cwd notebooks --log-output --kernel python3 &
  child=$!
  status=0; wait "$child" || status=$?
  child=""
  if [ "$status" != 0 ]; then
    mv -f "$running" "$out/${notebook%.ipynb}.failed.ipynb" 2>/dev/null || true
    echo "== $table_id FAILED (status $status): $out/${notebook%.ipynb}.failed.ipynb; the last good record is untouched" >&2
    exit "$status"
  fi
  mv -f "$running" "$out/$notebook"
  rm -f "$out/${notebook%.ipynb}.failed.ipynb"
  echo "== $table_id done in $(( $(date +%s) - start )) s: $out/table.md" >&2
done <<< "$plan"
"$python" -m purilib.cli index "${PURILIB_RESULTS_DIR:-$PWD/results}" >&2 || true  # results/README.md's index
