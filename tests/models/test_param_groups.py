"""One builder of optimizer groups: Deformable DETR's three, DETR's two, and the BatchFormer's own."""
import argparse

from torch import nn

from models.param_groups import param_groups, param_groups_from_args
from util.args import get_args_parser, parse_args


class _Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])  # the CNN, a learned position code
        self.sampling_offsets = nn.Linear(2, 2)
        self.bf = nn.Linear(2, 2)
        self.class_embed = nn.Linear(2, 3)


def _groups(model, *argv):
    args = parse_args(argparse.ArgumentParser(parents=[get_args_parser()]), list(argv))
    name_of = {id(p): n.rsplit(".", 1)[0] for n, p in model.named_parameters()}
    return [({name_of[id(p)] for p in g["params"]}, g["lr"]) for g in param_groups_from_args(model, args)]


def test_deformable_detr_has_three_groups_and_detr_two():
    model = _Detector()
    assert _groups(model, "--lr", "1e-3") == [
        ({"bf", "class_embed", "backbone.1"}, 1e-3), ({"backbone.0"}, 2e-5), ({"sampling_offsets"}, 1e-4)]
    for meta_arch in ("detr", "conditional_detr"):  # "backbone" in the name: the position code too
        assert _groups(model, "--meta_arch", meta_arch) == [
            ({"bf", "class_embed", "sampling_offsets"}, 1e-4), ({"backbone.0", "backbone.1"}, 1e-5)]


def test_bf_lr_and_bt_decay_give_the_batchformer_its_group():
    model = _Detector()
    groups = _groups(model, "--meta_arch", "detr", "--bf_lr", "0.1")
    assert groups[-1] == ({"bf"}, 1e-5) and len(groups) == 3
    parser = argparse.ArgumentParser(parents=[get_args_parser()])
    args = parse_args(parser, ["--meta_arch", "detr", "--bt_decay", "0"])
    assert param_groups_from_args(model, args)[-1]["weight_decay"] == 0.0


def test_rules_take_in_order_and_the_batchformer_before_them():
    model = _Detector()
    groups = param_groups(model, 1.0, rules=[(["backbone", "bf"], 0.5), (["backbone.0"], 0.1)],
                          bf_lr_mult=2.0, bf_weight_decay=0.3, weight_decay=0.2)
    sizes = [len(g["params"]) for g in groups]
    assert sizes == [4, 4, 0, 2] and [g["lr"] for g in groups] == [1.0, 0.5, 0.1, 2.0]
    assert [g["weight_decay"] for g in groups] == [0.2, 0.2, 0.2, 0.3]
