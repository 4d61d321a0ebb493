#!/usr/bin/env bash
# Install this checkout from the kit folder alone and run `bench.py selftest` within a budget.
# usage (from the root of an attnbench checkout): bash KIT/run.sh [--device cuda|cpu] [--budget SECONDS]
# Defaults: cuda, 300 s, counting the install. Results go to $OUT (a new folder under results/ when
# $OUT is unset): at most 8 files, summary.md always among them. Bad input: one line, exit 2.
set -uo pipefail
start=$(date +%s.%N)
kit=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
device=cuda
budget=300
die() { echo "run.sh: $*" >&2; exit 2; }
usage="usage: bash $0 [--device cuda|cpu] [--budget SECONDS]"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) [ $# -ge 2 ] || die "--device needs a value; $usage"; device=$2; shift 2 ;;
    --device=*) device=${1#*=}; shift ;;
    --budget) [ $# -ge 2 ] || die "--budget needs a value; $usage"; budget=$2; shift 2 ;;
    --budget=*) budget=${1#*=}; shift ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) die "unknown argument '$1'; $usage" ;;
  esac
done
case "$device" in cuda|cpu) ;; *) die "unknown device '$device'; use cuda or cpu" ;; esac
[[ "$budget" =~ ^[0-9]+$ ]] && [ "$budget" -gt 0 ] || die "--budget must be a whole number of seconds > 0, got '$budget'"
[ -f bench.py ] && [ -f pyproject.toml ] && [ -d attnbench ] || die "run it from the root of an attnbench checkout (no bench.py in $PWD)"
[ -f "$kit/SHA256SUMS" ] || die "$kit has no SHA256SUMS: build the kit with \`bench.py kit --out $kit\`"
while read -r sum name; do
  [ -f "$kit/$name" ] || die "the kit folder $kit lacks $name: rebuild it with \`bench.py kit --out $kit\`"
  [ "$(sha256sum "$kit/$name" | cut -d' ' -f1)" = "$sum" ] || die "$kit/$name does not match SHA256SUMS: rebuild the kit"
done < "$kit/SHA256SUMS"
py=${PYTHON:-}
if [ -z "$py" ]; then
  for cand in python3 python; do
    if command -v "$cand" >/dev/null && "$cand" -c "import torch" 2>/dev/null; then py=$cand; break; fi
  done
fi
[ -n "$py" ] && "$py" -c "import torch" 2>/dev/null || die "no python on PATH holds torch (set PYTHON=...)"
OUT=${OUT:-$PWD/results/kit-$device-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT" || die "cannot make the output folder $OUT"
log=$(mktemp "${TMPDIR:-/tmp}/attnbench-install.XXXXXX")
# The kit folder alone: no index, no configured find-links or constraints, no build isolation.
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT PIP_REQUIRE_VIRTUALENV
pipi() { "$py" -m pip install --no-index --find-links "$kit" --no-cache-dir --no-compile "$@" >>"$log" 2>&1; }
have_tools='import sys, setuptools, pytest; sys.exit(int(setuptools.__version__.split(".")[0]) < 61)'
if ! { { "$py" -c "$have_tools" 2>/dev/null || pipi "setuptools>=61" wheel pytest; } && pipi --no-build-isolation -e .; }; then
  die "installing from $kit failed: $(grep -v '^\s*$' "$log" | tail -1) (full log: $log)"
fi
now=$(date +%s.%N)
left=$(awk -v b="$budget" -v s="$start" -v n="$now" 'BEGIN { l = b - (n - s); printf "%d", (l > 1 ? l : 1) }')
spent=$(awk -v s="$start" -v n="$now" 'BEGIN { printf "%.1f", n - s }')
echo "run.sh: installed in $spent s; selftest --device $device --budget $budget (from the start of run.sh) --out $OUT"
export PYTHONUNBUFFERED=1
# selftest keeps the deadline itself (the install counted); timeout is only the backstop for a hung interpreter.
timeout -k 5 $((left + 10)) "$py" bench.py selftest --device "$device" --budget "$budget" --started "$start" \
  --out "$OUT" --install-log "$log" --install-seconds "$spent"
rc=$?
rm -f "$log"
echo "run.sh: exit $rc after $(awk -v s="$start" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - s }') s; results in $OUT"
exit $rc
