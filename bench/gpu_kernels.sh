#!/usr/bin/env bash
# The GPU checks of the fused ops in ONE device call: `bash bench/gpu_kernels.sh` (about 5-10
# minutes). Builds engine._C with CUDA against the machine's torch, runs the op tests on CUDA
# (CPU == CUDA included), compute-sanitizer memcheck and racecheck on the CUDA tests, and the
# loss benchmarks (fp32 and bf16, with a device-to-device copy as the bandwidth reference).
# Needs no DALI: the op tests and benchmarks import only torch and engine._C. Logs and JSON
# go to $OUT; the last lines printed are the table of bench/report.py.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; date -u; } | tee "$OUT/device.txt"

if ! python3 -m pip install --no-deps --no-build-isolation -e . > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  exit 1
fi
python3 -c "import torch, engine.losses; assert torch.cuda.is_available(); print('engine._C built; CUDA kernels:',
torch._C._dispatch_has_kernel_for_dispatch_key('noisy::nl_forward', 'CUDA'))"

OP_TESTS="tests/test_losses.py tests/test_sampling.py tests/test_weights.py tests/test_errors.py tests/test_cuda_matches_cpu.py"
python3 -m pytest $OP_TESTS -q -p no:cacheprovider > "$OUT/op_tests.log" 2>&1
echo "op tests rc=$?: $(tail -1 "$OUT/op_tests.log")"

for tool in memcheck racecheck; do
  timeout 240 compute-sanitizer --tool "$tool" --error-exitcode 9 \
    python3 -m pytest tests/test_cuda_matches_cpu.py -q -p no:cacheprovider > "$OUT/sanitizer_$tool.log" 2>&1
  echo "compute-sanitizer $tool rc=$? (9: errors found, 124: timed out): $(grep -E 'ERROR SUMMARY|passed|failed' "$OUT/sanitizer_$tool.log" | tail -2 | tr '\n' ' ')"
done

python3 -m pytest bench/bench_losses.py --benchmark-only -q -p no:cacheprovider \
  --benchmark-json="$OUT/bench_losses.json" > "$OUT/bench_losses.log" 2>&1
echo "loss benchmarks rc=$?"
python3 bench/report.py "$OUT/bench_losses.json" | tee "$OUT/bench_losses.md"
