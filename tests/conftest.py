import os
from pathlib import Path

# pytest-xdist's workers share the cores: each gets its share as torch / OpenMP threads, which
# the training runs it starts inherit. Two workers of 2 threads each on 2 cores spent 1.6 times
# as long on the training tests (threads waiting for descheduled ones). A user's setting stays.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    _CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(max(1, _CORES // _WORKERS))

import pytest  # noqa: E402  (after OMP_NUM_THREADS: torch reads it when it loads)
import torch  # noqa: E402
from torch.utils.cpp_extension import load  # noqa: E402

import engine.losses  # noqa: F401  (loads the ops)
from run_testing import session_folder

FLOAT_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# The CUDA cases show as skipped without a GPU, not as absent.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="needs a CUDA GPU"))]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(scope="session")
def emulated(tmp_path_factory):
    """tests/cuda_emulation.cpp built once per session: the CUDA kernels' row code on host threads
    (test_cuda_emulation.py, test_op_inputs.py)."""
    root = Path(__file__).resolve().parent.parent
    return load(
        name="noisy_cuda_emulation",
        sources=[str(root / "tests" / "cuda_emulation.cpp")],
        extra_include_paths=[str(root / "csrc"), str(root / "csrc" / "include")],
        extra_cflags=["-O1"],
        # torch builds in it under a lock: one worker builds, the others wait and load it
        build_directory=str(session_folder(tmp_path_factory, "cuda_emulation")),
    )


def strided_copy(z, device="cpu"):
    """z's values on `device` in a [B, C] view with strides (2, 2B): neither rows nor columns
    contiguous. Built on the device, since .to() would copy a strided view contiguously."""
    B, C = z.shape
    columns = torch.zeros(C, 2 * B, device=device, dtype=z.dtype)
    columns[:, ::2] = z.t().to(device)
    return columns.t()[::2]


def tolerances(dtype):
    """(rtol, atol) for a fused result on `dtype` inputs against the float64 reference of the
    same input values: float32 arithmetic for fp32/bf16/fp16, plus the rounding of the
    gradient to the input dtype."""
    return {
        torch.float64: (1e-10, 1e-12),
        torch.float32: (1e-5, 1e-5),
        torch.bfloat16: (1e-2, 1e-4),
        torch.float16: (2e-3, 1e-5),
    }[dtype]
