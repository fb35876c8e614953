#!/usr/bin/env bash
# The GPU run of docs/gpu_sweep.md in one command, on a machine with GPUs and fp4sweep's
# dependencies: scripts/bench_sweep.py (packed trials against one per GPU), then the gpu_smoke
# sweep, each cut short (the sweep by Ctrl-C, keeping what finished) so that the whole run ends
# within BUDGET seconds. Leaves in OUT_DIR: machine.txt (the cards), bench.json and bench.log,
# smoke.log (the sweep's output and `fp4sweep status`), gpu_util.csv and gpu_apps.log (nvidia-smi
# every second: utilisation per GPU, and which process ran on which GPU), results.tar.gz (the
# sweep's results store), and Ray's logs (ray_logs.tar.gz) when something failed.
#
#   FP4SWEEP_DATA=/path/to/data BUDGET=480 [BENCH_ARGS="--tasks classification"] scripts/device_gpu_sweep.sh OUT_DIR
set -u
out=$(realpath -m "${1:?usage: $0 OUT_DIR}")
budget=${BUDGET:-480}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

{ date -u; nvidia-smi -L; nvidia-smi --query-gpu=index,uuid,name,memory.total,driver_version --format=csv
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'; nproc; } \
  >"$out/machine.txt" 2>&1
nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv -l 1 >"$out/gpu_util.csv" 2>&1 &
util_pid=$!
while sleep 1; do date -u +%T; nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader; done \
  >"$out/gpu_apps.log" 2>&1 &
apps_pid=$!

bench_s=$((budget / 2))
# shellcheck disable=SC2086  # BENCH_ARGS: several words
timeout "$bench_s" python3 scripts/bench_sweep.py ${BENCH_ARGS:-} --out "$out/bench.json" device=cuda >"$out/bench.log" 2>&1
bench_rc=$?
echo "bench_sweep.py: exit status $bench_rc (124: cut at $bench_s s)" >>"$out/bench.log"
[ "$bench_rc" = 0 ] || python3 -m ray.scripts.scripts stop --force >>"$out/bench.log" 2>&1  # a Ray left behind

smoke_s=$((budget - SECONDS - 30))  # what is left, less the status and the archive
timeout --preserve-status -s INT "$smoke_s" python3 -m fp4sweep run +sweep=gpu_smoke device=cuda "results_dir=$out/results" \
  >"$out/smoke.log" 2>&1
smoke_rc=$?
{ echo "fp4sweep run: exit status $smoke_rc (1: some trials failed; 130: interrupted at $smoke_s s, finished trials kept)"
  python3 -m fp4sweep status +sweep=gpu_smoke "results_dir=$out/results"; } >>"$out/smoke.log" 2>&1

kill "$util_pid" "$apps_pid"
tar -czf "$out/results.tar.gz" -C "$out" results && rm -rf "$out/results"
if [ "$bench_rc" != 0 ] || { [ "$smoke_rc" != 0 ] && [ "$smoke_rc" != 130 ]; }; then
  tar -czf "$out/ray_logs.tar.gz" -C /tmp/ray/session_latest logs
fi
echo "done in ${SECONDS} s"
