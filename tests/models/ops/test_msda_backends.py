"""models/ops/functions/extension.py and build_config.py: backend choice, fallback, build settings."""

import importlib
import os
import sys
import warnings

import pytest
import torch

from models.ops import build_config
from models.ops.functions import extension, ms_deform_attn


@pytest.fixture
def no_extension(monkeypatch):
    """The extension as if it were not installed and the first-use build were off."""
    monkeypatch.setattr(extension, "_state", {"loaded": False, "module": None, "error": "", "warned": set()})
    real_import = importlib.import_module

    def fake_import(name, *args):
        if name == "MultiScaleDeformableAttention":
            raise ImportError("No module named 'MultiScaleDeformableAttention'")
        return real_import(name, *args)

    monkeypatch.setattr(extension.importlib, "import_module", fake_import)
    monkeypatch.setenv("MSDA_JIT", "0")
    monkeypatch.setenv("MSDA_BACKEND", "auto")


def test_unknown_backend_is_rejected(monkeypatch, inputs):
    monkeypatch.setenv("MSDA_BACKEND", "cuda-please")
    with pytest.raises(ValueError, match="MSDA_BACKEND must be one of auto, cpp, pytorch"):
        ms_deform_attn(*inputs([(3, 3)]))


def test_missing_extension_falls_back_with_one_warning(no_extension, inputs, reference):
    value, shapes, start, loc, weights = inputs([(3, 4), (2, 2)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ms_deform_attn(value, shapes, start, loc, weights)
        ms_deform_attn(value, shapes, start, loc, weights)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1
    assert "sh models/ops/make.sh" in messages[0] and "MSDA_JIT=0" in messages[0]
    torch.testing.assert_close(out, reference(value, [(3, 4), (2, 2)], loc, weights))


def test_forced_compiled_backend_without_extension_is_an_error(no_extension, monkeypatch, inputs):
    monkeypatch.setenv("MSDA_BACKEND", "cpp")
    with pytest.raises(RuntimeError, match="MSDA_BACKEND=cpp, but .*sh models/ops/make.sh"):
        ms_deform_attn(*inputs([(3, 3)]))


def test_failed_first_use_build_falls_back(no_extension, monkeypatch, inputs):
    monkeypatch.setenv("MSDA_JIT", "1")

    def broken_build():
        raise RuntimeError("Error building extension: ninja not found")

    monkeypatch.setattr(extension, "_jit_build", broken_build)
    with pytest.warns(RuntimeWarning, match="first-use build failed.*ninja not found"):
        out = ms_deform_attn(*inputs([(3, 3)], n_queries=2))
    assert out.shape == (2, 2, 8)


def test_forced_pytorch_backend_never_loads_the_extension(no_extension, monkeypatch, inputs):
    monkeypatch.setenv("MSDA_BACKEND", "pytorch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ms_deform_attn(*inputs([(3, 3)]))
    assert not extension._state["loaded"]


def test_sources_follow_the_layout():
    names = [os.path.relpath(f, build_config.SRC_DIR) for f in build_config.sources(with_cuda=True)]
    assert "vision.cpp" in names
    assert any(n.startswith("cpu" + os.sep) and n.endswith(".cpp") for n in names)
    assert any(n.startswith("cuda" + os.sep) and n.endswith(".cu") for n in names)
    assert not any(n.endswith(".cu") for n in build_config.sources(with_cuda=False))


def test_cuda_arch_list(monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "7.5")
    assert build_config.cuda_arch_list() == "7.5"
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(build_config, "nvcc_arches", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert build_config.cuda_arch_list() == build_config.DEFAULT_CUDA_ARCH_LIST
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (9, 0) if i else (8, 6))
    assert build_config.cuda_arch_list() == "8.6;9.0"


NVCC_12 = {"5.0", "6.0", "7.0", "7.2", "7.5", "8.0", "8.6", "8.7", "8.9", "9.0"}
NVCC_13 = {"7.5", "8.0", "8.6", "8.7", "8.8", "8.9", "9.0", "10.0", "11.0", "12.0"}


@pytest.fixture
def no_gpu_no_override(monkeypatch):
    """A GPU-less machine (a login node, CI) where neither TORCH_CUDA_ARCH_LIST nor CI is set."""
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize(
    ("supported", "expected", "left_out"),
    [
        (NVCC_12, "7.0;7.5;8.0;8.6;8.9;9.0+PTX", None),
        (NVCC_13, "7.5;8.0;8.6;8.9;9.0+PTX", "7.0"),
        ({"7.0", "7.5", "8.0", "8.6"}, "7.0;7.5;8.0;8.6+PTX", "8.9, 9.0"),  # an old nvcc: PTX of its newest
        ({"10.0", "12.0"}, "12.0+PTX", None),
    ],
)
def test_default_arches_cover_v100_to_h100_within_what_nvcc_supports(
    no_gpu_no_override, monkeypatch, supported, expected, left_out
):
    monkeypatch.setattr(build_config, "nvcc_arches", lambda: supported)
    arches, why = build_config.cuda_arch_choice()
    assert arches == expected
    assert "TORCH_CUDA_ARCH_LIST overrides" in why
    if left_out:
        assert f"cannot build for {left_out} (left out)" in why


def test_ci_builds_one_architecture_unless_told_otherwise(no_gpu_no_override, monkeypatch):
    monkeypatch.setattr(build_config, "nvcc_arches", lambda: NVCC_13)
    monkeypatch.setenv("CI", "true")
    assert build_config.cuda_arch_list() == build_config.CI_CUDA_ARCH_LIST
    assert ";" not in build_config.CI_CUDA_ARCH_LIST
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6;8.9")
    assert build_config.cuda_arch_choice() == ("8.6;8.9", "from TORCH_CUDA_ARCH_LIST")


def test_nvcc_arches_are_read_from_nvcc(tmp_path):
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text("#!/bin/sh\necho compute_75 compute_80 compute_90 compute_100 compute_103\n")
    nvcc.chmod(0o755)
    assert build_config.nvcc_arches(str(tmp_path)) == {"7.5", "8.0", "9.0", "10.0", "10.3"}
    nvcc.write_text("#!/bin/sh\nexit 1\n")
    assert build_config.nvcc_arches(str(tmp_path)) is None


def test_pip_headers_fill_only_what_the_toolkit_lacks(tmp_path, monkeypatch):
    toolkit = tmp_path / "cuda"
    (toolkit / "include").mkdir(parents=True)
    (toolkit / "include" / "cuda_runtime.h").write_text("toolkit")
    wheel = tmp_path / "site" / "nvidia" / "cu13" / "include"
    wheel.mkdir(parents=True)
    for name in ("cuda_runtime.h", "cublas_v2.h", "cusparse.h"):
        (wheel / name).write_text("wheel")
    monkeypatch.setattr(build_config, "_nvidia_package_roots", lambda: [str(tmp_path / "site" / "nvidia")])
    shim = build_config.pip_cuda_include_dir(str(toolkit), str(tmp_path / "build"))
    assert sorted(os.listdir(shim)) == ["cublas_v2.h", "cusparse.h"]
    assert (tmp_path / "build" / "pip_cuda_include" / "cublas_v2.h").read_text() == "wheel"


def test_cuda_build_needs_nvcc(monkeypatch):
    monkeypatch.setattr(build_config, "find_cuda_home", lambda: None)
    possible, why = build_config.cuda_build_possible()
    assert not possible and ("nvcc was not found" in why or "CPU-only" in why)


def test_build_config_imports_without_torch_at_module_level():
    assert "torch" not in build_config.__dict__
    assert sys.modules["models.ops.build_config"] is build_config
