#!/usr/bin/env bash
# Run HERE (not on the GPU machine): stages what the lent GPU machine lacks for the training
# benchmarks. It has torch, pytest and pytest-benchmark but no DALI and no internet, and one
# device call carries at most 64 MiB. So: the DALI wheel and its dependencies for the machine's
# Python (3.12) go into one archive split into 60 MB parts, gpu_carry/part_aa, _ab, ...; the
# CIFAR-10 archive is copied beside them. Carry them one call each while the machine is warm
# (30 s), e.g. run(command="mkdir -p /tmp/parts && cp gpu_carry/part_aa /tmp/parts/",
# carry=["gpu_carry/part_aa"]), then run `bash bench/gpu_training.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
# The versions this checkout runs with (its .venv, as CI installs it), unpinned where absent.
PACKAGES="nvidia-dali-cuda130 nvidia-nvimgcodec-cu13 nvidia-libnvcomp-cu13 nvidia-nvjpeg nvidia-nvjpeg2k-cu13
  nvidia-nvtiff-cu13 astunparse gast libcst makefun nvtx optree mlxtend pandas python-dateutil tzdata six pyyaml"
PINNED=$(python3 -c "
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        print(f'{name}=={version(name)}')
    except PackageNotFoundError:
        print(name)" $PACKAGES)
rm -rf gpu_carry && mkdir -p gpu_carry/wheels
# shellcheck disable=SC2086
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  -d gpu_carry/wheels $PINNED
tar -cf - -C gpu_carry wheels | split -b 60M - gpu_carry/part_
rm -rf gpu_carry/wheels
cp ../shared/data/cifar10_jpeg_ordered.npz gpu_carry/
ls -l gpu_carry
