"""--bf_scope: the BatchFormer over every rank's images (``AcrossRanks``) and the common padding, in one
process. The collectives are replaced by their results for a simulated second rank; the two-process
runs are in tests/test_bf_global_distributed.py."""
import argparse

import pytest
import torch
from torch import nn

import models.batchformer as bfm
from models import build_model
from models.batchformer import AcrossRanks, build_batchformer, pad_to_common_size
from util.args import args_notices, args_problem, get_args_parser
from util.misc import nested_tensor_from_tensor_list

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ("--no_pretrained_backbone --backbone resnet18 --hidden_dim 32 --dim_feedforward 64 --enc_layers 2 "
         "--dec_layers 2 --num_queries 6 --nheads 4 --enc_n_points 2 --dec_n_points 2 --dataset_file toy "
         "--device cpu").split()


def _simulate_two_ranks(monkeypatch, gathered: list[torch.Tensor]) -> None:
    """This process is rank 0 of two; the i-th gather returns ``gathered[i]`` (every rank's rows)."""
    calls = iter(gathered)

    def gather(x):
        every = next(calls)
        torch.testing.assert_close(every[: x.shape[0]], x, rtol=1e-5, atol=1e-6)  # rank 0's rows first
        return every

    monkeypatch.setattr(bfm, "get_world_size", lambda: 2)
    monkeypatch.setattr(bfm, "all_gather_rows", gather)


@pytest.mark.parametrize("depth", [1, 2])
def test_local_queries_over_every_rank_equal_the_layer_on_the_whole_batch(monkeypatch, depth):
    torch.manual_seed(0)
    bf = build_batchformer(32, num_layers=depth).eval()
    everything = torch.randn(5, 7, 32)  # (B, L, C): rank 0 holds 2 images, rank 1 holds 3
    # What each layer of the plain module sees on the whole batch is what rank 0 gathers before it.
    inputs, x = [], everything
    for layer in bf.layers if depth > 1 else [bf]:
        inputs.append(x)
        x = layer(x)
    _simulate_two_ranks(monkeypatch, inputs)
    torch.testing.assert_close(AcrossRanks(bf)(everything[:2]), bf(everything)[:2], rtol=1e-5, atol=1e-6)


def test_one_process_runs_the_module_itself():
    bf = build_batchformer(32).eval()
    x = torch.randn(3, 4, 32)
    assert torch.equal(AcrossRanks(bf)(x), bf(x))


def test_gradient_reaches_the_local_rows_through_queries_and_keys(monkeypatch):
    """The gathered tensor is differentiable: rank 0's rows get the gradient of both their uses."""
    torch.manual_seed(0)
    bf = build_batchformer(32).eval()
    x = torch.randn(2, 3, 32, requires_grad=True)
    other = torch.randn(3, 3, 32)
    monkeypatch.setattr(bfm, "get_world_size", lambda: 2)
    monkeypatch.setattr(bfm, "all_gather_rows", lambda t: torch.cat([t, other]))
    AcrossRanks(bf)(x).sum().backward()
    reference = x.detach().clone().requires_grad_()
    bf(torch.cat([reference, other]))[:2].sum().backward()
    torch.testing.assert_close(x.grad, reference.grad, rtol=1e-5, atol=1e-6)


def test_padding_to_the_largest_size_of_every_rank(monkeypatch):
    images = [torch.randn(3, 20, 30), torch.randn(3, 24, 18)]
    samples = nested_tensor_from_tensor_list(images)
    assert pad_to_common_size(samples) is samples  # one process: nothing to do
    monkeypatch.setattr(bfm, "max_over_ranks", lambda size: (28, 32))  # another rank has a larger image
    padded = pad_to_common_size(samples)
    # What one process gives the four images together: each image at the top left, zeros and a True
    # mask elsewhere.
    reference = nested_tensor_from_tensor_list([*images, torch.zeros(3, 28, 32)])
    assert torch.equal(padded.tensors, reference.tensors[:2])
    assert torch.equal(padded.mask, reference.mask[:2])


def _args(*flags: str) -> argparse.Namespace:
    return get_args_parser().parse_args([*SMALL, *flags])


def test_device_scope_plans_the_modules_themselves():
    model = build_model(_args("--bf", "1", "--insert_idx", "0", "1", "--share_bf", "0"))[0].train()
    plan = model.transformer.batchformer_plan()
    assert not plan.across_ranks and not model.transformer.batchformer_spans_ranks()
    assert all(plan.layers[i] is model.transformer.bf[str(i)] for i in (0, 1))


def test_global_scope_plans_every_rank_where_the_batchformer_runs():
    model = build_model(_args("--bf", "1", "--bf_scope", "global"))[0]
    plan = model.transformer.train().batchformer_plan()
    assert plan.across_ranks and isinstance(plan.layers[0], AcrossRanks)
    assert plan.layers[0].bf is model.transformer.bf
    assert not model.eval().transformer.batchformer_spans_ranks()  # skipped at test: plain padding
    eval_bf = build_model(_args("--bf", "1", "--bf_scope", "global", "--eval_bf"))[0].eval()
    assert eval_bf.transformer.batchformer_spans_ranks()


def test_global_scope_in_one_process_equals_device_scope():
    outputs = []
    for scope in ("device", "global"):
        torch.manual_seed(0)
        model = build_model(_args("--bf", "1", "--bf_scope", scope, "--dropout", "0"))[0].train()
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        g = torch.Generator().manual_seed(1)
        outputs.append(model([torch.randn(3, 64, 80, generator=g), torch.randn(3, 48, 64, generator=g)]))
    assert outputs[0]["num_streams"] == outputs[1]["num_streams"] == 2
    assert torch.equal(outputs[0]["pred_logits"], outputs[1]["pred_logits"])
    assert torch.equal(outputs[0]["pred_boxes"], outputs[1]["pred_boxes"])


def test_scope_flags():
    assert _args().bf_scope == "device"
    assert _args("--bf-scope", "global").bf_scope == "global"
    with pytest.raises(SystemExit):
        _args("--bf_scope", "node")
    problem = args_problem(_args("--bf", "1", "--bf_scope", "global", "--masks"))
    assert problem and problem.startswith("--bf_scope global does not support --masks")
    assert args_notices(_args("--bf_scope", "global", "--bf_lr", "0.1")) == [
        "--bf_scope and --bf_lr without --bf: there is no BatchFormer, so they have no effect"]
    assert args_notices(_args("--bf", "1", "--bf_scope", "global", "--bf_lr", "0.1")) == []
    # One image per process: the device scope is warned about, the global one is the remedy.
    assert len(args_notices(_args("--bf", "7", "--batch_size", "1"))) == 1
    assert args_notices(_args("--bf", "1", "--batch_size", "1", "--bf_scope", "global")) == []
