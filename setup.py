"""pip build entry: the Python package, plus the native library when a CUDA toolchain is there.

The native part (CMakeLists.txt) needs nvcc (CUDA_HOME, default /usr/local/cuda), a CUDA build of
torch, cmake >= 3.26, ninja and the nvidia-cutlass headers. Without nvcc, or with
ATTNX_CUDA_ARCHS=none, the install is pure Python and every op runs its reference.

Environment: ATTNX_CUDA_ARCHS (default 90a; "none" skips the native build), ATTNX_KERNELS
(all | ci), MAX_JOBS (parallel compile jobs), CUDA_HOME, CUTLASS_DIR.
"""
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
LIB = "libattnx_ops.so"


def _nvcc():
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    return nvcc if os.path.exists(nvcc) else None


class CMakeBuild(build_ext):
    def run(self):
        archs = os.environ.get("ATTNX_CUDA_ARCHS", "90a")
        nvcc = _nvcc()
        if archs.lower() == "none" or nvcc is None:
            why = "ATTNX_CUDA_ARCHS=none" if nvcc else "no nvcc found (set CUDA_HOME)"
            print(f"attnx: building the pure-Python package only ({why}); every op runs its reference.")
            return
        build_dir = os.environ.get("ATTNX_BUILD_DIR", os.path.join(ROOT, "build", "native"))
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        cfg = ["cmake", "-S", ROOT, "-B", build_dir, "-G", "Ninja", f"-DCMAKE_CUDA_COMPILER={nvcc}",
               f"-DPython3_EXECUTABLE={sys.executable}", f"-DATTNX_CUDA_ARCHS={archs}",
               f"-DATTNX_KERNELS={os.environ.get('ATTNX_KERNELS', 'all') or 'all'}"]
        print("attnx:", " ".join(cfg), flush=True)
        subprocess.check_call(cfg)
        subprocess.check_call(["cmake", "--build", build_dir, "--parallel", jobs])
        for dest in {os.path.join(ROOT, "python", "attnx"), os.path.join(self.build_lib, "attnx")}:
            if os.path.isdir(dest):
                shutil.copy2(os.path.join(build_dir, LIB), os.path.join(dest, LIB))
        print(f"attnx: native library built ({build_dir}/{LIB})")


try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70
    from wheel.bdist_wheel import bdist_wheel


class PlatformWheel(bdist_wheel):
    """py3-none-<platform>: the native library uses the LibTorch stable ABI and no Python C API,
    so one wheel serves every Python 3 and every torch from 2.11 on (on this platform)."""

    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self):
        _, _, plat = super().get_tag()
        return "py3", "none", plat


setup(
    ext_modules=[Extension("attnx._native_build", sources=[])],  # a hook: CMakeBuild does the work
    cmdclass={"build_ext": CMakeBuild, "bdist_wheel": PlatformWheel},
    package_data={"attnx": [LIB]},
)
