#!/usr/bin/env bash
# On the lent GPU machine: Nsight Compute's view of the fused row-loss kernel (CE, NL, PM at
# 65536 x 1000 float32, one forward + backward each): speed of light, memory and compute
# workload, occupancy and warp stall reasons, for what bench/kernel_times.py cannot say (why
# the kernel runs below the copy bandwidth). `bash bench/gpu_profile.sh`; report in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
python3 -c "import engine._C" 2>/dev/null || python3 -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/build.log" 2>&1 || exit 1
cd bench
timeout 150 ncu --clock-control none -k regex:row_loss_kernel -c 3 \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
  --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \
  python3 -c "
from bench_losses import FUSED, logits_and_batch
z, batch = logits_and_batch(65536, 1000, 'float32')
for loss in ('ce', 'nl', 'pm'):
    FUSED[loss](z, batch).backward()
" > "$OUT/ncu.txt" 2>&1
echo "ncu rc=$?"
grep -E "row_loss_kernel|Duration|Memory Throughput|DRAM Throughput|L1/TEX Hit|L2 Hit|Compute \(SM\) Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Executed Ipc A|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|Stall|Block Limit" "$OUT/ncu.txt" | cut -c1-150
