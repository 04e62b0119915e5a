"""--bf 7, the public single-stream mode: in training the BatchFormer's output replaces the batch (no
second stream, targets not duplicated); at test the layer is skipped.

References: the two-stream mode (--bf 1), whose second stream is the batch passed through the
BatchFormer at every insert index, and the model without a BatchFormer (--bf 0) at test.
"""
import pytest
import torch
from torch import nn

from models import build_model
from util.args import args_problem, get_args_parser
from util.misc import nested_tensor_from_tensor_list

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ("--no_pretrained_backbone --backbone resnet18 --hidden_dim 32 --dim_feedforward 64 --enc_layers 3 "
         "--dec_layers 2 --num_queries 6 --nheads 4 --enc_n_points 2 --dec_n_points 2 --dataset_file toy "
         "--dropout 0 --device cpu").split()


def _build(*flags: str):
    args = get_args_parser().parse_args([*SMALL, *flags])
    torch.manual_seed(0)
    model, criterion, _ = build_model(args)
    for m in model.modules():  # the BatchFormer's own dropout (0.5) too, so that passes can be compared
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(m, nn.MultiheadAttention):
            m.dropout = 0.0
    return model, criterion


def _samples():
    g = torch.Generator().manual_seed(3)
    sizes = [(64, 80), (48, 64), (64, 56)]
    return nested_tensor_from_tensor_list([torch.randn(3, h, w, generator=g) for h, w in sizes])


@pytest.mark.parametrize("insert", [["0"], ["0", "2"]], ids=["one_index", "two_indices"])
def test_training_replaces_the_batch_by_the_batchformer_output(insert):
    single, _ = _build("--bf", "7", "--insert_idx", *insert)
    two_stream, _ = _build("--bf", "1", "--insert_idx", *insert)
    two_stream.load_state_dict(single.state_dict())
    out = single.train()(_samples())
    reference = two_stream.train()(_samples())
    assert out["num_streams"] == 1 and out["pred_logits"].shape[0] == 3
    torch.testing.assert_close(out["pred_logits"], reference["pred_logits"][3:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["pred_boxes"], reference["pred_boxes"][3:], rtol=1e-5, atol=1e-5)
    # Not the plain model: the BatchFormer changed the batch.
    plain = two_stream(_samples())["pred_logits"][:3]
    assert not torch.allclose(out["pred_logits"], plain, atol=1e-3)


def test_at_test_the_batchformer_is_skipped_unless_eval_bf():
    single, _ = _build("--bf", "7")
    plain, _ = _build("--bf", "0")
    missing, unexpected = plain.load_state_dict(single.state_dict(), strict=False)
    assert missing == [] and unexpected and all(k.startswith("transformer.bf.") for k in unexpected)
    out = single.eval()(_samples())
    assert out["num_streams"] == 1
    assert torch.equal(out["pred_logits"], plain.eval()(_samples())["pred_logits"])
    with_eval_bf, _ = _build("--bf", "7", "--eval_bf")
    with_eval_bf.load_state_dict(single.state_dict())
    trained_pass = single.train()(_samples())["pred_logits"]
    at_test = with_eval_bf.eval()(_samples())["pred_logits"]
    torch.testing.assert_close(at_test, trained_pass, rtol=1e-5, atol=1e-5)


def test_bf_7_is_accepted_and_other_values_are_not():
    args = get_args_parser().parse_args([*SMALL, "--bf", "7"])
    assert args_problem(args) is None
    args.bf = 2
    problem = args_problem(args)
    assert problem.startswith("--bf must be 0 (off) or a mode of --meta_arch deformable_detr (1 two streams")
    assert "; 7 single stream" in problem and problem.endswith("got 2")
