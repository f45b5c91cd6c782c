#!/bin/bash
# usage: docs/cpu/scripts/record_run.sh NAME [run-real flags...]  -> docs/cpu/NAME.json and NAME.txt
# (run from the repository root on an otherwise idle machine; the .txt holds the report, the
# phase log and /usr/bin/time -v, headed by the load average read just before)
set -u
tmp=$(mktemp -d)
name=$1; shift
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE
start=$(date -u '+%Y-%m-%d %H:%M:%S')
load=$(cat /proc/loadavg)
others=$(pgrep -c -f python || true)
/usr/bin/time -v .venv/bin/hart-edu run-real --random-weights --threads 2 "$@" --json docs/cpu/$name.json \
  > $tmp/$name.stdout 2> $tmp/$name.stderr
rc=$?
{
  echo "# hart-edu run-real --random-weights --threads 2 $* (env: OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE; no MALLOC_ variable: run-real sets the 16 MiB mmap threshold itself), started $start UTC, exit $rc"
  echo "# load average just before (1, 5, 15 min, running/total, last pid): $load; python processes on the machine (pgrep -c -f python): $others"
  echo
  echo "## report (stdout)"
  cat $tmp/$name.stdout
  echo
  echo "## phase log and /usr/bin/time -v (stderr; progress-bar redraws removed)"
  tr '\r' '\n' < $tmp/$name.stderr | sed -E 's/HART scales:.*\]//' | grep -v "^\s*$\|DeprecationWarning\|torch.ao.quantization\|^For migrations\|^[0-9]\. \|^see https\|quantize_dynamic\|qweight = "
} > docs/cpu/$name.txt
echo "done $name rc=$rc"
rm -rf "$tmp"
