"""How the extension ``MultiScaleDeformableAttention`` is compiled: sources, flags, CUDA detection.

Shared by ``models/ops/setup.py`` (ahead-of-time build, ``sh models/ops/make.sh``) and the
first-use JIT build in ``functions/extension.py``, so both compile the same thing. It imports only
the standard library at module level, so setup.py can load it before anything is installed.
"""

import glob
import os
import shutil
import subprocess
import sys

EXTENSION_NAME = "MultiScaleDeformableAttention"
OPS_DIR = os.path.dirname(os.path.abspath(__file__))
SRC_DIR = os.path.join(OPS_DIR, "src")
# Without a visible GPU: V100, T4, A100, RTX 30, RTX 40/L4/L40 and H100/H200 as SASS, plus PTX of
# the newest so later GPUs JIT it. Architectures the installed nvcc cannot target are left out.
DEFAULT_CUDA_ARCH_LIST = "7.0;7.5;8.0;8.6;8.9;9.0+PTX"
# CI (CI=true) has no GPU and only checks that the kernels compile: one architecture is enough.
CI_CUDA_ARCH_LIST = "8.0"

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


def nvcc_arches(cuda_home: str | None = None) -> set[str] | None:
    """Architectures nvcc can compile for, as "7.5", "9.0", ...; None when nvcc cannot be asked."""
    home = cuda_home or find_cuda_home()
    if home is None:
        return None
    try:
        listed = subprocess.run(
            [os.path.join(home, "bin", "nvcc"), "--list-gpu-arch"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    found = {a.split("_", 1)[1] for a in listed if a.startswith("compute_")}
    return {f"{a[:-1]}.{a[-1]}" for a in found if a.isdigit()} or None


def default_arch_list(supported: set[str] | None) -> tuple[str, str]:
    """The default list cut to what nvcc supports, and a note naming what was left out (or "")."""
    wanted = DEFAULT_CUDA_ARCH_LIST.split(";")
    if supported is None:
        return DEFAULT_CUDA_ARCH_LIST, ""
    kept = [a for a in wanted if a.removesuffix("+PTX") in supported]
    dropped = [a.removesuffix("+PTX") for a in wanted if a not in kept]
    if not kept:
        newest = max(supported, key=lambda a: tuple(int(x) for x in a.split(".")))
        return f"{newest}+PTX", f"this nvcc supports none of {DEFAULT_CUDA_ARCH_LIST}"
    if not kept[-1].endswith("+PTX"):
        kept[-1] += "+PTX"
    note = f"this nvcc cannot build for {', '.join(dropped)} (left out)" if dropped else ""
    return ";".join(kept), note


def cuda_arch_choice() -> tuple[str, str]:
    """The CUDA architectures to build for, and where the choice came from.

    TORCH_CUDA_ARCH_LIST if set; else the visible GPUs'; else, in CI (CI=true), the one
    architecture of CI_CUDA_ARCH_LIST; else the default list, cut to what nvcc supports.
    """
    chosen = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if chosen:
        return chosen, "from TORCH_CUDA_ARCH_LIST"
    try:
        import torch

        if torch.cuda.is_available():
            caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
            return ";".join(f"{major}.{minor}" for major, minor in caps), "the visible GPUs'"
    except Exception as err:  # a broken driver must not stop a build that needs no GPU
        print(
            f"{EXTENSION_NAME}: could not query the GPU ({err}); using the default arch list", file=sys.stderr
        )
    if os.environ.get("CI", "").lower() in ("1", "true"):
        return CI_CUDA_ARCH_LIST, "CI=true: one architecture, to check that the kernels compile"
    arches, note = default_arch_list(nvcc_arches())
    why = "no visible GPU: the default list; TORCH_CUDA_ARCH_LIST overrides it"
    return arches, f"{why}; {note}" if note else why


def cuda_arch_list() -> str:
    """The CUDA architectures to build for (see ``cuda_arch_choice``)."""
    return cuda_arch_choice()[0]


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
    """What a build makes, for the build's output: the kernels, and the CUDA architectures and why."""
    if with_cuda:
        arches, why = cuda_arch_choice()
        return f"CPU + CUDA kernels (arch {arches}: {why})"
    return f"CPU kernels only ({cuda_build_possible()[1]})"


def extension(base_dir: str, build_dir: str):
    """The setuptools extension, sources relative to ``base_dir`` (the directory of the setup.py).

    Decides CPU-only or CPU + CUDA, prints which, and prepares the CUDA environment.
    """
    with_cuda, _ = cuda_build_possible()
    # Before prepare_cuda_env, which sets TORCH_CUDA_ARCH_LIST: the note says why these arches.
    print(f"{EXTENSION_NAME}: building {describe(with_cuda)}", file=sys.stderr)
    include_dirs = [SRC_DIR]
    if with_cuda:
        home, _ = prepare_cuda_env()
        shim = pip_cuda_include_dir(home, build_dir)
        include_dirs += [shim] if shim else []
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
    headers = [
        f for ext in ("h", "cuh") for f in glob.glob(os.path.join(SRC_DIR, "**", f"*.{ext}"), recursive=True)
    ]
    for path in sorted(sources(with_cuda) + headers):
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
    # make.sh: `build_config.py` prints the build key, `build_config.py describe` what it builds.
    if sys.argv[1:] == ["describe"]:
        print(describe(cuda_build_possible()[0]))
    else:
        print(build_key())
