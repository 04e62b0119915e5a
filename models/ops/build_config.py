"""How the extension ``MultiScaleDeformableAttention`` is compiled: sources, flags, CUDA detection.

Shared by ``models/ops/setup.py`` (ahead-of-time build, ``sh models/ops/make.sh``) and the
first-use JIT build in ``functions/extension.py``, so both compile the same thing. It imports only
the standard library at module level, so setup.py can load it before anything is installed.
"""

import glob
import os
import shutil
import sys

EXTENSION_NAME = "MultiScaleDeformableAttention"
OPS_DIR = os.path.dirname(os.path.abspath(__file__))
SRC_DIR = os.path.join(OPS_DIR, "src")
# Without a visible GPU: Ampere and Hopper as SASS, plus PTX of the newest so later GPUs JIT it.
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"

CXX_FLAGS = ["-O3", "-g0"]
NVCC_FLAGS = ["-O3"]


def sources(with_cuda: bool) -> list[str]:
    """Absolute paths of ``src/*.cpp``, ``src/cpu/*.cpp`` and, for a CUDA build, ``src/cuda/*.cu``."""
    patterns = ["*.cpp", os.path.join("cpu", "*.cpp")]
    if with_cuda:
        patterns.append(os.path.join("cuda", "*.cu"))
    found = sorted(f for p in patterns for f in glob.glob(os.path.join(SRC_DIR, p)))
    if not any(os.path.dirname(f) == SRC_DIR for f in found):
        raise FileNotFoundError(f"{EXTENSION_NAME}: no C++ sources found in {SRC_DIR}/*.cpp")
    return found


def find_cuda_home() -> str | None:
    """The CUDA toolkit holding nvcc: CUDA_HOME / CUDA_PATH, /usr/local/cuda, nvcc on PATH, or pip's."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    on_path = shutil.which("nvcc")
    if on_path:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(on_path))))
    candidates += [os.path.dirname(os.path.dirname(p)) for p in _glob_packages(os.path.join("bin", "nvcc"))]
    for home in candidates:
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return home
    return None


def _nvidia_package_roots() -> list[str]:
    """Directories of the ``nvidia`` namespace package that pip's CUDA wheels install into."""
    try:
        import nvidia
    except ImportError:
        return []
    return sorted({os.path.abspath(p) for p in getattr(nvidia, "__path__", [])})


def _glob_packages(relative: str) -> list[str]:
    """``nvidia/<package>/<relative>`` for every pip CUDA package (cu13, cu12 style and per-library)."""
    return sorted(f for root in _nvidia_package_roots() for f in glob.glob(os.path.join(root, "*", relative)))


def pip_cuda_include_dir(cuda_home: str, build_dir: str) -> str | None:
    """A directory of links to the pip-shipped CUDA headers that the toolkit at ``cuda_home`` lacks.

    torch's CUDA headers include cuBLAS, cuSPARSE, cuSOLVER ... headers that a bare nvcc toolkit
    may not have; the torch wheel brings them in ``site-packages/nvidia/cu13/include`` (cu12:
    ``nvidia/<library>/include``). Only the missing ones are linked, so the toolkit's own runtime
    headers, which match its nvcc, still win.
    """
    toolkit = os.path.join(cuda_home, "include")
    links = os.path.join(build_dir, "pip_cuda_include")
    os.makedirs(links, exist_ok=True)
    linked = False
    for include in _glob_packages("include"):
        for entry in os.listdir(include):
            target = os.path.join(links, entry)
            if os.path.exists(os.path.join(toolkit, entry)) or os.path.lexists(target):
                continue
            os.symlink(os.path.join(include, entry), target)
            linked = True
    return links if linked or os.listdir(links) else None


def cuda_build_possible() -> tuple[bool, str]:
    """Whether a CUDA build can be made here, and why not when it cannot."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    if os.environ.get("FORCE_CPU", "0") == "1":
        return False, "FORCE_CPU=1"
    if find_cuda_home() is None:
        return False, "nvcc was not found (set CUDA_HOME or put nvcc on PATH)"
    return True, ""


def cuda_arch_list() -> str:
    """TORCH_CUDA_ARCH_LIST if set, else the visible GPUs' architectures, else the default list."""
    chosen = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if chosen:
        return chosen
    try:
        import torch

        if torch.cuda.is_available():
            caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
            return ";".join(f"{major}.{minor}" for major, minor in caps)
    except Exception as err:  # a broken driver must not stop a build that needs no GPU
        print(
            f"{EXTENSION_NAME}: could not query the GPU ({err}); using the default arch list", file=sys.stderr
        )
    return DEFAULT_CUDA_ARCH_LIST


def prepare_cuda_env() -> tuple[str, str]:
    """Sets CUDA_HOME and TORCH_CUDA_ARCH_LIST for torch.utils.cpp_extension; returns both.

    Call before importing torch.utils.cpp_extension: it reads CUDA_HOME when imported.
    """
    home = find_cuda_home()
    if home is None:
        raise RuntimeError(f"{EXTENSION_NAME}: nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
    os.environ["CUDA_HOME"] = home
    arch = cuda_arch_list()
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    return home, arch


def openmp_flags() -> list[str]:
    """-fopenmp when the compiler is GCC/Clang on Linux, so at::parallel_for runs over all cores."""
    return ["-fopenmp"] if sys.platform.startswith("linux") else []


def describe(with_cuda: bool) -> str:
    if with_cuda:
        return f"CPU + CUDA kernels (arch {os.environ.get('TORCH_CUDA_ARCH_LIST', cuda_arch_list())})"
    return f"CPU kernels only ({cuda_build_possible()[1]})"


def extension(base_dir: str, build_dir: str):
    """The setuptools extension, sources relative to ``base_dir`` (the directory of the setup.py).

    Decides CPU-only or CPU + CUDA, prints which, and prepares the CUDA environment.
    """
    with_cuda, _ = cuda_build_possible()
    include_dirs = [SRC_DIR]
    if with_cuda:
        home, _ = prepare_cuda_env()
        shim = pip_cuda_include_dir(home, build_dir)
        include_dirs += [shim] if shim else []
    print(f"{EXTENSION_NAME}: building {describe(with_cuda)}", file=sys.stderr)
    from torch.utils import cpp_extension

    if with_cuda:
        # cpp_extension reads CUDA_HOME when first imported; a wrapper nvcc on PATH misleads it.
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
    kind = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
    return kind(
        name=EXTENSION_NAME,
        sources=[os.path.relpath(f, base_dir) for f in sources(with_cuda)],
        include_dirs=include_dirs,
        define_macros=[("WITH_CUDA", None)] if with_cuda else [],
        extra_compile_args={"cxx": CXX_FLAGS + openmp_flags(), "nvcc": NVCC_FLAGS},
        extra_link_args=openmp_flags(),
    )


def build_key() -> str:
    """A hash of everything the build depends on; make.sh skips the build when it is unchanged."""
    import hashlib

    import torch

    with_cuda, _ = cuda_build_possible()
    digest = hashlib.sha256()
    for path in sorted(sources(with_cuda) + glob.glob(os.path.join(SRC_DIR, "**", "*.h"), recursive=True)):
        digest.update(path.encode())
        with open(path, "rb") as f:
            digest.update(f.read())
    for path in (os.path.abspath(__file__), os.path.join(OPS_DIR, "setup.py")):
        with open(path, "rb") as f:
            digest.update(f.read())
    arch = cuda_arch_list() if with_cuda else ""
    digest.update(f"{sys.executable}|{torch.__version__}|{with_cuda}|{arch}".encode())
    return digest.hexdigest()


if __name__ == "__main__":
    print(build_key())
