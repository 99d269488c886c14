#!/usr/bin/env bash
# Regenerate a paper table by executing its notebook with papermill.
#
#   ./reproduce.sh TABLE [--profile smoke|cpu|gpu|paper] [--seeds N] [--device auto|cpu|cuda] [--data-root DIR]
#                        [--attacks A,B,...] [--defenses X,Y,...] [--clean-per-class K] [--from-records]
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
set -euo pipefail
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }  # against the caller's directory

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
as_json_list() { local IFS=,; local items=($1) out="" item; for item in "${items[@]}"; do out+="${out:+, }\"$item\""; done; echo "[$out]"; }

table="" profile="smoke" seeds=1 device="auto" data_root="${PURILIB_DATA_ROOT:-}" list=0 attacks="" defenses=""
clean_per_class="" from_records=False
while [ $# -gt 0 ]; do
  case "$1" in
    --list) list=1 ;;
    --from-records) from_records=True ;;
    --profile) profile="${2:?--profile needs a value}"; shift ;;
    --seeds) seeds="${2:?--seeds needs a value}"; shift ;;
    --device) device="${2:?--device needs a value}"; shift ;;
    --data-root) data_root="${2:?--data-root needs a value}"; shift ;;
    --attacks) attacks="${2:?--attacks needs a value}"; shift ;;
    --defenses) defenses="${2:?--defenses needs a value}"; shift ;;
    --clean-per-class) clean_per_class="${2:?--clean-per-class needs a value}"; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "error: unknown option '$1' (see ./reproduce.sh --help)" >&2; exit 2 ;;
    *) [ -z "$table" ] || { echo "error: one table at a time ('$table' and '$1' given)" >&2; exit 2; }; table="$1" ;;
  esac
  shift
done
case "$seeds" in ''|*[!0-9]*|0) echo "error: --seeds needs a positive integer, not '$seeds'" >&2; exit 2 ;; esac
case "$clean_per_class" in *[!0-9]*|0) echo "error: --clean-per-class needs a positive integer, not '$clean_per_class'" >&2; exit 2 ;; esac
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

plan=$("$python" -m purilib.cli check "$table" "$profile" ${data_root:+"$data_root"}) || exit 2
while read -r table_id notebook; do
  out="${PURILIB_RESULTS_DIR:-$PWD/results}/$table_id/$profile"
  mkdir -p "$out"
  echo "== $table_id, profile $profile, seeds $seeds -> $out/" >&2
  start=$(date +%s)
  params=(-r profile "$profile" -p seeds "$seeds" -r device "$device" -r output_dir "$out" -r data_root "$data_root")
  [ -z "$attacks" ] || params+=(-y "{\"attacks\": $(as_json_list "$attacks")}")
  [ -z "$defenses" ] || params+=(-y "{\"defenses\": $(as_json_list "$defenses")}")
  [ -z "$clean_per_class" ] || params+=(-p clean_per_class "$clean_per_class")
  [ "$from_records" = False ] || params+=(-p from_records True)
  PURILIB_PROGRESS="${PURILIB_PROGRESS:-1}" "$python" -m papermill "notebooks/$notebook" "$out/$notebook" \
    "${params[@]}" --cwd notebooks --log-output --kernel python3
  echo "== $table_id done in $(( $(date +%s) - start )) s: $out/table.md" >&2
done <<< "$plan"
