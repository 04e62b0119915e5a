"""The first-use (JIT) build of the extension, for real: ninja, nvcc, CUDA kernels included.

It runs in a subprocess where the installed extension cannot be imported, as for a user who
skipped make.sh. The build goes to build/msda_jit_test in the checkout and is kept: ninja rebuilds
only what changed, so after the first run (a few minutes, one GPU architecture) it takes seconds.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from models.ops import build_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BUILD_DIR = os.path.join(ROOT, "build", "msda_jit_test")

# The installed extension hidden; then the first op call, on CPU tensors, against the PyTorch path.
SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class HideInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "MultiScaleDeformableAttention":
                raise ImportError("hidden by the test: not installed")

    sys.meta_path.insert(0, HideInstalled())
    import torch
    from models.ops.functions import extension, ms_deform_attn, ms_deform_attn_core_pytorch

    shapes = torch.tensor([[4, 5], [2, 3]])
    start = torch.tensor([0, 20])
    value = torch.rand(2, 26, 2, 8, dtype=torch.float64)
    loc = torch.rand(2, 3, 2, 2, 2, 2, dtype=torch.float64)
    weights = torch.rand(2, 3, 2, 2, 2, dtype=torch.float64)
    out = ms_deform_attn(value, shapes, start, loc, weights)
    module = extension._state["module"]
    assert module is not None, extension._state["error"]
    torch.testing.assert_close(out, ms_deform_attn_core_pytorch(value, shapes, loc, weights))
    print("loaded", module.__file__)
    print("compiled_with_cuda", module.compiled_with_cuda())
    """
)


@pytest.mark.skipif(not build_config.cuda_build_possible()[0], reason="no nvcc or a CPU-only torch")
def test_first_use_build_compiles_the_cuda_kernels():
    env = dict(os.environ)
    env.update(
        PYTHONPATH=ROOT,
        MSDA_BACKEND="cpp",
        MSDA_JIT="1",
        MSDA_JIT_CUDA="1",  # CUDA kernels although no GPU is visible here
        MSDA_BUILD_DIR=BUILD_DIR,
        TORCH_CUDA_ARCH_LIST=build_config.CI_CUDA_ARCH_LIST,
        MAX_JOBS=env.get("MAX_JOBS", str(os.cpu_count() or 2)),
    )
    env.pop("CUDA_HOME", None)  # the build must find the toolkit itself
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"loaded {BUILD_DIR}" in proc.stdout
    assert "compiled_with_cuda True" in proc.stdout


def test_first_use_build_waits_for_cuda_home(monkeypatch):
    """torch.utils.cpp_extension reads CUDA_HOME once, when imported: the build must set it first."""
    from models.ops.functions import extension

    calls = []
    monkeypatch.setattr(build_config, "cuda_build_possible", lambda: (True, ""))
    monkeypatch.setattr(build_config, "find_cuda_home", lambda: "/opt/the-toolkit")
    monkeypatch.setattr(build_config, "pip_cuda_include_dir", lambda home, build: calls.append(home))
    monkeypatch.setenv("MSDA_JIT_CUDA", "1")
    monkeypatch.setenv("CUDA_HOME", "/usr/local")  # restored afterwards: the build overwrites it
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    monkeypatch.setenv("MSDA_BUILD_DIR", "/nonexistent-never-written")
    monkeypatch.setattr(extension.os, "makedirs", lambda *a, **k: None)

    def fake_load(**kwargs):
        from torch.utils import cpp_extension

        calls.append(cpp_extension.CUDA_HOME)
        calls.append(kwargs["with_cuda"])
        return "module"

    import torch.utils.cpp_extension

    monkeypatch.setattr(torch.utils.cpp_extension, "load", fake_load)
    monkeypatch.setattr(torch.utils.cpp_extension, "CUDA_HOME", "/usr/local")
    assert extension._jit_build() == "module"
    assert calls == ["/opt/the-toolkit", "/opt/the-toolkit", True]
