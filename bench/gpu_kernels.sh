#!/usr/bin/env bash
# The GPU checks of the fused ops in ONE device call: `bash bench/gpu_kernels.sh`, run with
# timeout_s=600. A drawn task has 15 minutes of device time in all, the machine's start
# included, so every step runs under a share of one deadline (BUDGET_S seconds from the start,
# default 500), most valuable first, and leaves its output in $OUT even when cut off:
#   1. build engine._C with CUDA against the machine's torch,
#   2. the op tests' CUDA cases (CPU == CUDA included; CI runs the CPU ones),
#   3. the loss benchmarks: fused, eager and a device-to-device copy, fp32 and bf16, and the
#      device time of each kernel and host time of each op of the fused and eager losses
#      (bench/kernel_times.py; at 128x10 the host's share),
#   4. compute-sanitizer memcheck and racecheck on the CPU == CUDA tests,
#   5. torch.compile of the references, one size at a time (each size compiles 10 graphs),
#      merged into one JSON after each size so that a cut-off keeps the sizes done.
# Needs no DALI. $OUT gets at most 8 files (the device tool returns no more): summary.txt,
# build.log, op_tests.log, sanitizer.log, bench.log, bench_fused_eager.json,
# bench_compiled.json, bench.md. The last lines printed are bench/report.py's table and the
# kernel times. For a shorter rerun: BENCH_K (a pytest -k filter of step 3's benchmarks, e.g.
# "65536x1000") and COMPILED_SIZES (step 5's sizes; empty: none).
set -uo pipefail
shopt -s nullglob  # a glob of JSONs that were never written expands to nothing
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
DEADLINE=$(($(date +%s) + ${BUDGET_S:-500}))
PARTS=$(mktemp -d)  # per-step files stay out of $OUT (its file limit)

say() { echo "$*" | tee -a "$OUT/summary.txt"; }
# done_step NAME STATUS [DETAIL]: one summary line per step.
done_step() { say "$1: rc=$2 (124: cut off, 125: not started, 9: sanitizer errors) ${3:-}"; }
# capped SECONDS CMD...: runs CMD under timeout for at most SECONDS and the time left;
# status 124: cut off by the timeout, 125: not started (under 30 s left).
capped() {
  local cap=$1 left=$((DEADLINE - $(date +%s)))
  shift
  ((left < cap)) && cap=$left
  ((cap < 30)) && return 125
  timeout "$cap" "$@"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; date -u; } | tee -a "$OUT/summary.txt"

if ! capped 240 python3 -m pip install --no-deps --no-build-isolation -e . > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  exit 1
fi
python3 -c "import torch, engine.losses; assert torch.cuda.is_available(); print('engine._C built; CUDA kernels:',
torch._C._dispatch_has_kernel_for_dispatch_key('noisy::nl_forward', 'CUDA'))" | tee -a "$OUT/summary.txt"

# -k cuda: every test parametrized on the cuda device, and all of test_cuda_matches_cpu.py.
OP_TESTS="tests/test_losses.py tests/test_sampling.py tests/test_weights.py tests/test_errors.py tests/test_cuda_matches_cpu.py"
capped 200 python3 -m pytest $OP_TESTS -k cuda -q -p no:cacheprovider > "$OUT/op_tests.log" 2>&1
done_step "op tests (cuda)" $? "$(tail -1 "$OUT/op_tests.log")"

BENCH="python3 -m pytest bench/bench_losses.py --benchmark-only -q -p no:cacheprovider"
capped 150 $BENCH -k "not compiled${BENCH_K:+ and ($BENCH_K)}" --benchmark-json="$OUT/bench_fused_eager.json" > "$OUT/bench.log" 2>&1
done_step "loss benchmarks, fused / eager / copy" $?
for case in "65536x1000 float32" "65536x1000 bfloat16" "128x10 float32"; do
  capped 60 python3 bench/kernel_times.py $case >> "$PARTS/kernel_times.md" 2>&1
  done_step "kernel and host times, $case" $?
done

for tool in memcheck racecheck; do
  capped 90 compute-sanitizer --tool "$tool" --error-exitcode 9 \
    python3 -m pytest tests/test_cuda_matches_cpu.py -q -p no:cacheprovider > "$PARTS/$tool.log" 2>&1
  done_step "compute-sanitizer $tool" $? "$(grep -E 'ERROR SUMMARY|passed|failed' "$PARTS/$tool.log" | tail -2 | tr '\n' ' ')"
  { echo "=== $tool"; cat "$PARTS/$tool.log"; } >> "$OUT/sanitizer.log"
done

for size in ${COMPILED_SIZES-4096x100 65536x1000 1024x100 128x10}; do
  capped 200 $BENCH -k "compiled and $size" --benchmark-json="$PARTS/compiled_$size.json" >> "$OUT/bench.log" 2>&1
  done_step "loss benchmarks, compiled at $size" $?
  python3 - "$OUT/bench_compiled.json" "$PARTS"/compiled_*.json <<'EOF'
import json, sys
merged = {"benchmarks": []}
for path in sys.argv[2:]:
    try:
        with open(path) as f:
            merged["benchmarks"] += json.load(f)["benchmarks"]
    except json.JSONDecodeError:  # a size cut off while pytest-benchmark wrote its file
        pass
with open(sys.argv[1], "w") as f:
    json.dump(merged, f)
EOF
done

{ python3 bench/report.py "$OUT"/bench_*.json; echo; cat "$PARTS/kernel_times.md"; } | tee "$OUT/bench.md"
