"""benchmarks/bf_global_comm.py: its count of encoder positions is the model's, and its byte formula
gives the issue's figure (3 images per GPU on 8 GPUs at 800x1333: about 0.55 GB per insertion in
float32, half in bfloat16)."""
import pytest
import torch

from benchmarks.bf_global_comm import gathered_bytes, tokens
from models import build_model
from util.args import get_args_parser

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("levels", [4, 1])
def test_positions_are_those_of_the_encoder(levels):
    flags = ("--no_pretrained_backbone --backbone resnet18 --hidden_dim 32 --dim_feedforward 32 "
             "--enc_layers 1 --dec_layers 1 --num_queries 4 --nheads 4 --dataset_file toy "
             f"--num_feature_levels {levels}").split()
    torch.manual_seed(0)
    model = build_model(get_args_parser().parse_args(flags))[0].eval()
    for h, w in [(97, 131), (64, 80), (75, 50)]:
        with torch.no_grad():
            _, state = model.forward_with_state([torch.zeros(3, h, w)])
        assert state.transformer.memory.shape[1] == tokens(h, w, levels), (h, w)


def test_the_published_setting_gathers_about_half_a_gigabyte():
    assert tokens(800, 1333) == 100 * 167 + 50 * 84 + 25 * 42 + 13 * 21
    b32 = gathered_bytes(3, 8, 800, 1333, 256, 4)
    assert b32["held"] == pytest.approx(0.55e9, rel=0.01)
    assert b32["received"] == pytest.approx(b32["held"] * 7 / 8)
    assert gathered_bytes(3, 8, 800, 1333, 256, 2)["held"] == b32["held"] / 2
    assert gathered_bytes(3, 1, 800, 1333)["received"] == 0
