"""Builds engine._C: the CPU kernels always, the CUDA kernels when torch has CUDA and nvcc exists."""
import glob
import os
import platform
import shutil
import subprocess

import torch
from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def nvcc_toolkit():
    """The CUDA toolkit of the nvcc on PATH as nvcc reports it (`_HERE_`, its real bin folder,
    in a dry run), or None."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    dry_run = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True)
    for line in dry_run.stderr.splitlines():
        if line.startswith("#$ _HERE_="):
            return os.path.dirname(line.split("=", 1)[1].strip())
    return None


# torch.utils.cpp_extension takes the toolkit from CUDA_HOME, else from the folder above
# `which nvcc`: wrong for a wrapper script such as /usr/local/bin/nvcc (no CUDA headers under
# /usr/local, "cuda_runtime.h: No such file"). Ask nvcc itself, before that module is imported.
if torch.version.cuda and not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
    toolkit = nvcc_toolkit()
    if toolkit:
        os.environ["CUDA_HOME"] = toolkit

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def rel(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def cuda_available_for_build():
    # CUDAExtension refuses to build against CPU-only torch, whatever CUDA_HOME says.
    if torch.version.cuda is None or os.environ.get("NOISY_FORCE_CPU") == "1":
        return False
    return shutil.which("nvcc") is not None or os.path.exists(os.path.join(os.environ.get("CUDA_HOME", ""), "bin", "nvcc"))


with_cuda = cuda_available_for_build()
sources = ["csrc/ops.cpp", "csrc/python_module.cpp"] + rel("csrc/cpu/*.cpp")
# at::parallel_for only runs threads when compiled and linked with OpenMP. The kernels raise
# no floating-point traps: -fno-trapping-math lets GCC turn float compares inside the CPU
# kernels' loops into selects, so those loops vectorize (PM's row kernel: 2.3x faster).
cxx_flags = ["-O3", "-fopenmp", "-fno-trapping-math"]
kwargs = dict(
    name="engine._C",
    include_dirs=[os.path.join(ROOT, "csrc", "include")],
    # libmvec: glibc's SIMD exp for float64, used by the CPU kernels on x86-64 (csrc/cpu/kernels.cpp).
    extra_link_args=["-fopenmp"] + (["-lmvec"] if platform.machine() == "x86_64" and platform.libc_ver()[0] == "glibc" else []),
)
if with_cuda:
    extension = CUDAExtension(
        sources=sources + rel("csrc/cuda/*.cu"),
        define_macros=[("WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr", "-std=c++17"]},
        **kwargs,
    )
else:
    extension = CppExtension(sources=sources, extra_compile_args={"cxx": cxx_flags}, **kwargs)

# Name, version and dependencies: pyproject.toml.
setup(
    packages=find_packages(include=["engine", "engine.*"]),
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
