#!/usr/bin/env bash
# The GPU lease rehearsed on CPU: build the kit, make a virtual environment holding only the twelve
# packages a bare image is assumed to have, clone this checkout afresh, run the kit's run.sh there
# with --device cpu, then assert what a lease would bring back. Exit 1 on any failed assertion.
# usage: scripts/kit_rehearsal.sh [BUDGET_SECONDS]   (run with the python that has attnbench's dependencies)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
budget=${1:-120}
py=${PYTHON:-python}
work=$(mktemp -d "${TMPDIR:-/tmp}/attnbench-rehearsal.XXXXXX")
echo "rehearsal: working in $work"
t0=$(date +%s)
"$py" bench.py kit --out "$work/kit"
git clone -q "$root" "$work/checkout"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --no-compile torch==2.13.0
"$work/venv/bin/pip" install -q --no-compile numpy pandas seaborn click scipy matplotlib pillow scikit-image \
  safetensors nvidia-ml-py tqdm
"$work/venv/bin/pip" uninstall -q -y setuptools 2>/dev/null || true   # the kit must bring its own
echo "rehearsal: kit and environment ready in $(( $(date +%s) - t0 )) s"
start=$(date +%s.%N)
set +e
(cd "$work/checkout" && env -u PYTHONPATH PATH="$work/venv/bin:$PATH" OUT="$work/out" bash "$work/kit/run.sh" --device cpu --budget "$budget")
rc=$?
set -e
took=$(awk -v s="$start" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - s }')
echo "rehearsal: run.sh exit $rc in $took s (budget $budget s)"
"$py" - "$work/out" "$budget" "$took" "$rc" <<'PY'
import sys
from pathlib import Path

from attnbench.kit import out_problems
from attnbench.selftest import SHAPES, plan

out, budget, took, rc = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
steps = ["install"] + [s.name for s in plan("cpu", SHAPES["cpu"], out, out)]
problems = out_problems(out, steps)
if rc not in (0, 1):
    problems.append(f"run.sh exited {rc} (0: every step passed, 1: a step failed or timed out)")
if took > budget * 1.1:
    problems.append(f"run.sh took {took:.1f} s, over the budget {budget:.0f} s + 10 %")
for p in problems:
    print(f"rehearsal: {p}", file=sys.stderr)
print("rehearsal: " + ("FAILED" if problems else "passed") + f": {sorted(p.name for p in out.iterdir())}")
sys.exit(1 if problems else 0)
PY
# The gate runs once: inside run.sh's selftest when it finished there, else here.
check_line=$(grep '^| e-check |' "$work/out/summary.md" || true)
case "$check_line" in
  *"| ok"*) echo "rehearsal: the gate passed inside run.sh" ;;
  *"FAILED"*) echo "rehearsal: the gate failed inside run.sh: $check_line" >&2; exit 1 ;;
  *) echo "rehearsal: the gate did not finish inside run.sh's budget; running it here"; "$py" bench.py check --device cpu ;;
esac
rm -rf "$work"
