#!/usr/bin/env bash
# On the lent GPU machine, after bench/gpu_stage.sh's parts were carried to /tmp/parts and the
# CIFAR-10 archive to /tmp (see there): installs DALI into /tmp/site, builds engine._C if
# needed, runs each method for 2 epochs on CUDA (mnist5k; smoke.txt), then the training
# benchmarks (bench/bench_training.py: PreAct ResNet-18 on CIFAR-10, batch 128 and 512, DALI
# feed vs batches resident on the GPU, fused ops' share of the epoch). Results in $OUT; the
# table printed last.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
if ! python3 -c "import nvidia.dali" 2>/dev/null; then
  mkdir -p /tmp/unpacked && cat /tmp/parts/part_* | tar -x -C /tmp/unpacked
  python3 -m pip install -q --no-deps --target /tmp/site /tmp/unpacked/wheels/*.whl || exit 1
fi
python3 -c "import engine._C" 2>/dev/null || python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
# First a 2-epoch run of each method on CUDA: the trainer had never run on a GPU, and a crash
# found here costs seconds, not a long run's minutes.
mkdir -p /tmp/smoke
for method in ce nlnl jnpl pmnar bldr l2b pudistill; do  # logs outside $OUT (8 files come back)
  timeout 120 python3 -m engine.train --method $method --epochs 2 --device cuda --out /tmp/smoke/$method \
    > /tmp/smoke/$method.log 2>&1
  rc=$?
  echo "smoke $method rc=$rc: $(tail -1 /tmp/smoke/$method.log)"
  ((rc)) && tail -15 /tmp/smoke/$method.log
done > "$OUT/smoke.txt"
cat "$OUT/smoke.txt"
NOISY_BENCH_CIFAR10=/tmp/cifar10_jpeg_ordered.npz python3 -m pytest bench/bench_training.py --benchmark-only -q \
  -p no:cacheprovider --benchmark-json="$OUT/bench_training.json" > "$OUT/bench_training.log" 2>&1
echo "training benchmarks rc=$?: $(tail -1 "$OUT/bench_training.log")"
python3 bench/report.py "$OUT/bench_training.json" | tee "$OUT/bench_training.md"
