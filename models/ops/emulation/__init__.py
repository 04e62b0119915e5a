"""The op's CUDA kernels compiled as host C++ and run on the CPU, so tests exercise them without a GPU.

``load()`` builds (once, with ninja) and imports the extension ``msda_cuda_emulation`` from
``msda_emulated.cpp``: the kernel source and launch code of ``src/cuda`` behind the emulator of
``cuda_emulation.h``. Its ``ms_deform_attn_forward`` / ``ms_deform_attn_backward`` take CPU tensors
with the CUDA entry points' signatures. The build goes to ``<repo>/build/cuda_emulation/<hash>``
(``MSDA_EMULATION_BUILD_DIR`` overrides the parent), keyed by the sources, so an unchanged tree
reuses it.
"""

import glob
import hashlib
import os
import sys
import time
from types import ModuleType

import torch

EMULATION_DIR = os.path.dirname(os.path.abspath(__file__))
OPS_DIR = os.path.dirname(EMULATION_DIR)
SRC_DIR = os.path.join(OPS_DIR, "src")
REPO_DIR = os.path.dirname(os.path.dirname(OPS_DIR))
NAME = "msda_cuda_emulation"
CFLAGS = ["-O2", "-g0"]

_loaded: dict[str, ModuleType] = {}
last_build_seconds: float | None = None


def _inputs() -> list[str]:
    """Every file the build reads: this unit, the shim, and the headers and kernels of ``src``."""
    files = glob.glob(os.path.join(EMULATION_DIR, "*.cpp")) + glob.glob(os.path.join(EMULATION_DIR, "*.h"))
    for pattern in ("*.h", "*.cuh"):
        files += glob.glob(os.path.join(SRC_DIR, "**", pattern), recursive=True)
    return sorted(files)


def build_dir() -> str:
    """The build directory for the current sources, compiler flags, torch and Python."""
    digest = hashlib.sha256()
    for path in _inputs():
        digest.update(os.path.relpath(path, OPS_DIR).encode())
        with open(path, "rb") as f:
            digest.update(f.read())
    digest.update(f"{CFLAGS}|{torch.__version__}|{sys.version_info[:2]}".encode())
    parent = os.environ.get("MSDA_EMULATION_BUILD_DIR", os.path.join(REPO_DIR, "build", "cuda_emulation"))
    return os.path.join(parent, digest.hexdigest()[:16])


def load() -> ModuleType:
    """The emulated kernels' module, built on first use (about a minute) and cached."""
    global last_build_seconds
    directory = build_dir()
    if directory in _loaded:
        return _loaded[directory]
    os.makedirs(directory, exist_ok=True)
    from torch.utils import cpp_extension

    start = time.perf_counter()
    module = cpp_extension.load(
        name=NAME,
        sources=[os.path.join(EMULATION_DIR, "msda_emulated.cpp")],
        extra_include_paths=[SRC_DIR, EMULATION_DIR],
        extra_cflags=CFLAGS,
        build_directory=directory,
        verbose=False,
    )
    last_build_seconds = time.perf_counter() - start
    _loaded[directory] = module
    return module
