"""Fixtures shared by the model tests."""
import contextlib

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run small models on one thread: their ops are too small to gain from a second, which only
    adds synchronisation (and contends with other processes on a shared 2-core machine). The op's
    own tests do not use this, so its parallel CPU kernels stay exercised with several threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FakeCuda:
    """Runs code on fake CUDA tensors (shapes, dtypes and devices, no data) on a machine without a GPU.

    Inside ``run()`` reading a tensor back (``.item()``, ``.tolist()``, a data-dependent branch)
    raises ``DataDependentOutputException``, and a copy from host memory to the device raises
    ``AssertionError``: both block the host on a real GPU and break CUDA-graph capture. The op's own
    implementation runs instead of its fake (shape-only) one, so its Python code is checked too;
    ``backend`` "compiled" stands in for the CUDA kernels (which take data pointers only) with an
    empty output of the right shape, "pytorch" runs the pure-PyTorch path as it is.
    """

    def __init__(self, monkeypatch, backend: str) -> None:
        from torch._subclasses.fake_tensor import FakeTensorMode

        from models.ops.functions import extension
        from models.ops.functions import ms_deform_attn_func as func

        self.mode = FakeTensorMode()
        monkeypatch.setattr(func, "_forward_op", func._forward_impl)
        if backend == "compiled":

            class Kernels:
                @staticmethod
                def ms_deform_attn_forward(value, shapes, start, loc, weights, step):
                    n, _, heads, head_dim = value.shape
                    return value.new_empty(n, loc.shape[1], heads * head_dim)

            monkeypatch.setattr(extension, "kernels_for", lambda device: Kernels)
        else:
            monkeypatch.setenv("MSDA_BACKEND", "pytorch")

    def module(self, module: torch.nn.Module) -> torch.nn.Module:
        """Replaces the parameters and buffers of ``module`` by fake CUDA copies, in place."""
        converted = {}

        def fake(t):
            if id(t) not in converted:
                f = self.mode.from_tensor(t.detach())
                with self.mode:
                    f = f.to("cuda")
                is_param = isinstance(t, torch.nn.Parameter)
                converted[id(t)] = torch.nn.Parameter(f, requires_grad=t.requires_grad) if is_param else f
            return converted[id(t)]

        for m in module.modules():
            for store in (m._parameters, m._buffers):
                for name, t in store.items():
                    if t is not None:
                        store[name] = fake(t)
        return module

    @contextlib.contextmanager
    def run(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        class NoHostToDevice(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if func is torch.ops.aten._to_copy.default and args[0].device.type == "cpu":
                    target = kwargs.get("device")
                    assert target is None or torch.device(target).type == "cpu", (
                        f"host-to-device copy of a {tuple(args[0].shape)} tensor to {target}"
                    )
                if func is torch.ops.aten.copy_.default and args[1].device.type == "cpu":
                    assert args[0].device.type == "cpu", f"host-to-device copy_ into {args[0].device}"
                return func(*args, **kwargs)

        with self.mode, NoHostToDevice():
            yield


@pytest.fixture(params=["compiled", "pytorch"])
def fake_cuda(request, monkeypatch):
    """A ``FakeCuda`` for the compiled-kernel path and for the pure-PyTorch path of the op."""
    return FakeCuda(monkeypatch, request.param)
