#!/usr/bin/env bash
# Regenerate a paper table: its notebook executed by papermill, results in results/<table>/<profile>/.
#
#   ./reproduce.sh TABLE [--profile smoke|cpu|gpu|paper] [--seeds N] [--device auto|cpu|cuda] [--data-root DIR]
#                        [--attacks A,B,...] [--defenses X,Y,...] [--clean-per-class K] [--model NAME]
#                        [--from-records] [--workers N|auto] [--executor local|ray] [--ray-address ADDR]
#   ./reproduce.sh --list
#
# TABLE is a table id (nft-table1) or a table number (table1: Table 1 of every paper that has one).
# --attacks / --defenses run part of the grid (names as in --list); --clean-per-class gives every defense
# K clean images per class (1: one-shot); --from-records trains nothing: it tabulates the records already in
# the results folder (e.g. made on a GPU machine); --model: every model's network (resnet18: the NFT / FIP
# authors' own); --workers N: N jobs at once; --executor ray: the jobs on a Ray cluster.
# PURILIB_DATA_ROOT / --data-root: where CIFAR-10 is (default ./data); PURILIB_CACHE_DIR: the model cache;
# PURILIB_RESULTS_DIR moves the results folder.
#
# This script sets up the environment (.venv from the project's files, on first use; or PURILIB_PYTHON, an
# interpreter that has purilib and papermill) and hands over to `python -m purilib run`, which does the rest.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PURILIB_PYTHON:-}"
if [ -z "$python" ]; then
  python="$here/.venv/bin/python"
  if [ ! -x "$python" ] || ! "$python" -c "import purilib, papermill" 2>/dev/null; then
    echo "Creating .venv (one time): python3 -m venv .venv && pip install -c constraints.txt -e '.[notebooks,test]'" >&2
    python3 -m venv "$here/.venv"
    "$python" -m pip install -q --upgrade pip
    (cd "$here" && "$python" -m pip install -q -c constraints.txt -e '.[notebooks,test]')
  fi
fi
case "${1:-}" in
  --list) exec "$python" -m purilib list ;;
  -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' ;;
  "") sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  *) exec "$python" -m purilib run "$@" ;;
esac
