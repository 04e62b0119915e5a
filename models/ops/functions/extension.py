"""Finding the compiled kernels and choosing the backend of the op for a device.

Backends: the compiled CPU kernels, the compiled CUDA kernels (both in the extension
``MultiScaleDeformableAttention``) and the pure-PyTorch path. ``MSDA_BACKEND`` picks one:

- ``auto`` (default): the compiled kernels of the tensor's device when there are any, else the
  pure-PyTorch path with one warning that says how to build the extension;
- ``cpp``: the compiled kernels, an error when the tensor's device has none;
- ``pytorch``: always the pure-PyTorch path.

When the extension is not installed, the first call that wants it builds it with ninja into
``MSDA_BUILD_DIR`` (default ``~/.cache/msda``), with CUDA kernels when a GPU is visible (or
``MSDA_JIT_CUDA=1``); ``MSDA_JIT=0`` turns that build off.
"""

import importlib
import os
import sys
import warnings
from types import ModuleType

import torch

BACKENDS = ("auto", "cpp", "pytorch")
BUILD_HINT = "build it with `sh models/ops/make.sh`"

_state: dict = {"loaded": False, "module": None, "error": "", "warned": set()}


def requested_backend() -> str:
    choice = os.environ.get("MSDA_BACKEND", "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"MSDA_BACKEND must be one of {', '.join(BACKENDS)}; got {choice!r}")
    return choice


def _jit_build() -> ModuleType:
    """Compiles the extension with ninja into ``MSDA_BUILD_DIR`` and imports it.

    CUDA kernels are included when a GPU is visible (or ``MSDA_JIT_CUDA=1``) and nvcc and a CUDA
    build of torch are found; the architectures are the visible GPUs' (see build_config).
    """
    from .. import build_config as cfg

    want_cuda = torch.cuda.is_available() or os.environ.get("MSDA_JIT_CUDA", "0") == "1"
    with_cuda = want_cuda and cfg.cuda_build_possible()[0]
    build_dir = os.environ.get("MSDA_BUILD_DIR", os.path.join(os.path.expanduser("~"), ".cache", "msda"))
    build_dir = os.path.join(build_dir, f"torch{torch.__version__}-{'cuda' if with_cuda else 'cpu'}")
    os.makedirs(build_dir, exist_ok=True)
    what = cfg.describe(with_cuda)  # before prepare_cuda_env sets TORCH_CUDA_ARCH_LIST
    include_dirs = [cfg.SRC_DIR]
    if with_cuda:
        home, _ = cfg.prepare_cuda_env()
        shim = cfg.pip_cuda_include_dir(home, build_dir)
        include_dirs += [shim] if shim else []
    from torch.utils import cpp_extension

    if with_cuda:
        # Read once when the module was first imported, maybe before prepare_cuda_env and from a
        # wrapper nvcc on PATH: point it at the toolkit found above.
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
    print(
        f"{cfg.EXTENSION_NAME} is not installed: building {what} in {build_dir}; "
        "this happens once",
        file=sys.stderr,
    )
    return cpp_extension.load(
        name=cfg.EXTENSION_NAME,
        sources=cfg.sources(with_cuda),
        extra_include_paths=include_dirs,
        extra_cflags=cfg.CXX_FLAGS + cfg.openmp_flags() + (["-DWITH_CUDA"] if with_cuda else []),
        extra_cuda_cflags=cfg.NVCC_FLAGS + ["-DWITH_CUDA"],
        extra_ldflags=cfg.openmp_flags(),
        with_cuda=with_cuda,
        build_directory=build_dir,
        verbose=False,
    )


def compiled_extension() -> ModuleType | None:
    """The extension module, importing (or, the first time, JIT-building) it; None if unavailable."""
    if _state["loaded"]:
        return _state["module"]
    _state["loaded"] = True
    try:
        _state["module"] = importlib.import_module("MultiScaleDeformableAttention")
        return _state["module"]
    except ImportError as err:
        _state["error"] = f"import failed: {err}"
    if os.environ.get("MSDA_JIT", "1") == "0":
        _state["error"] += "; the first-use build is off (MSDA_JIT=0)"
        return None
    try:
        _state["module"] = _jit_build()
    except Exception as err:  # any build failure means: fall back, never crash
        last_line = (str(err).strip().splitlines() or [""])[-1]
        _state["error"] += f"; first-use build failed: {type(err).__name__}: {last_line}"
    return _state["module"]


def compiled_device_types() -> tuple[str, ...]:
    """Device types the compiled kernels serve here (empty when the extension is unavailable)."""
    ext = compiled_extension()
    if ext is None:
        return ()
    return ("cpu", "cuda") if ext.compiled_with_cuda() else ("cpu",)


def _warn_once(key: str, message: str) -> None:
    if key not in _state["warned"]:
        _state["warned"].add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def kernels_for(device: torch.device) -> ModuleType | None:
    """The compiled module to run on ``device``, or None for the pure-PyTorch path."""
    choice = requested_backend()
    if choice == "pytorch":
        return None
    if device.type in compiled_device_types():
        return _state["module"]
    if _state["module"] is None:
        reason = f"the extension MultiScaleDeformableAttention is unavailable ({_state['error']})"
    else:
        reason = f"MultiScaleDeformableAttention was built without kernels for {device.type}"
    if choice == "cpp":
        raise RuntimeError(f"MSDA_BACKEND=cpp, but {reason}; {BUILD_HINT}")
    _warn_once(
        device.type,
        f"ms_deform_attn: {reason}; using the slower pure-PyTorch path on {device.type}. "
        f"To get the compiled kernels, {BUILD_HINT} (MSDA_BACKEND=pytorch silences this).",
    )
    return None
