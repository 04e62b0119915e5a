"""The detector's eval forward never blocks the host: checked on fake CUDA tensors without a GPU.

On a GPU a host synchronisation (reading a tensor back, copying host memory to the device) stalls
the pipeline of kernel launches and makes the forward impossible to capture in a CUDA graph.
"""

import pytest
import torch

from models import build_model
from tests.tiny_model import tiny_flags
from util.args import get_args_parser, parse_args

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = tiny_flags(
    "--enc_layers", "2", "--dec_layers", "2", "--num_queries", "5", "--nheads", "4",
    "--num_feature_levels", "4"
)
CONFIGS = {
    "base": [],
    "two_stage": ["--with_box_refine", "--two_stage"],
    "bf": ["--bf", "1"],
    "bf_eval_bf": ["--bf", "1", "--eval_bf"],
    "masks": ["--masks"],
    # DETR: one level, a softmax head with "no object" (21 logits), BatchFormerV2 after every layer
    "detr": ["--meta_arch", "detr", "--num_feature_levels", "1"],
    "detr_bf_eval_bf": ["--meta_arch", "detr", "--num_feature_levels", "1", "--bf", "3", "--eval_bf", "1"],
    "detr_masks": ["--meta_arch", "detr", "--num_feature_levels", "1", "--masks", "--nheads", "8"],
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_eval_forward_reads_nothing_back(fake_cuda, name):
    # parse_args: the detector's own defaults (--meta_arch) under the flags, as main.py parses them
    model, _, _ = build_model(parse_args(get_args_parser(), [*TINY, *CONFIGS[name]]))
    model = fake_cuda.module(model.eval())
    with fake_cuda.run(), torch.no_grad():
        images = [torch.randn(3, 40, 56, device="cuda"), torch.randn(3, 32, 44, device="cuda")]
        out = model(images)
    logits = 21 if "detr" in name else 20
    assert out["pred_logits"].shape == (2, 5, logits) and out["pred_boxes"].shape == (2, 5, 4)
    assert out["pred_boxes"].device.type == "cuda"
