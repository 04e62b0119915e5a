"""Every trainable parameter of each published configuration gets a gradient, so DistributedDataParallel
runs without find_unused_parameters, the public default; main.py builds it so unless told otherwise."""
import argparse
import json

import pytest
import torch
import torch.distributed as dist

import main as main_module
from engine import train_one_epoch
from models import build_model
from tests.tiny_model import tiny_flags
from util.misc import nested_tensor_from_tensor_list

TINY = tiny_flags(
    "--enc_layers", "2", "--dec_layers", "2", "--num_workers", "0", "--print_freq", "1",
    "--num_feature_levels", "4"
)

CONFIGS = {
    "base": [],
    "single_scale": ["--num_feature_levels", "1"],
    "refine": ["--with_box_refine"],
    "two_stage": ["--two_stage"],
    "refine_two_stage": ["--with_box_refine", "--two_stage"],
    "bf": ["--bf", "1"],
    "bf_two_stage": ["--bf", "1", "--with_box_refine", "--two_stage"],
    "bf_two_indices": ["--bf", "1", "--insert_idx", "0", "1"],
    "bf_two_indices_separate": ["--bf", "1", "--insert_idx", "0", "1", "--share_bf", "0"],
    "masks": ["--masks"],
    "masks_bf": ["--masks", "--bf", "1"],
    # Only the mask head trains: the detector's parameters do not require a gradient.
    "masks_frozen_detector": ["--masks", "--frozen_weights", "detector.pth"],
}


def _parse(*flags) -> argparse.Namespace:
    return argparse.ArgumentParser(parents=[main_module.get_args_parser()]).parse_args([*TINY, *flags])


def _batch() -> list:
    g = torch.Generator().manual_seed(0)
    sizes = [(64, 80), (48, 64)]
    images = nested_tensor_from_tensor_list([torch.randn(3, h, w, generator=g) for h, w in sizes])
    targets = []
    for h, w in sizes:
        masks = torch.zeros(2, h, w, dtype=torch.bool)
        masks[0, 4:20, 8:40] = True
        masks[1, 10:40, 30:60] = True
        targets.append({"labels": torch.tensor([1, 5]), "masks": masks,
                        "boxes": torch.tensor([[0.3, 0.25, 0.4, 0.3], [0.55, 0.5, 0.4, 0.6]])})
    return [(images, tuple(targets))]


@pytest.mark.parametrize("flags", CONFIGS.values(), ids=CONFIGS.keys())
def test_every_trainable_parameter_gets_a_gradient(flags):
    args = _parse(*flags)
    model, criterion, _ = build_model(args)
    optimizer, _ = main_module.build_optimizer(model, args)
    train_one_epoch(model, criterion, _batch(), optimizer, torch.device("cpu"), 0, args.clip_max_norm)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) > 10
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    if args.frozen_weights:
        assert not [n for n in trainable if n.startswith("detr.")]


@pytest.fixture
def one_process_group(monkeypatch):
    """main.py's distributed path in this process: a one-rank gloo group instead of a launcher's."""

    def init(args):
        args.distributed, args.rank, args.world_size, args.gpu, args.dist_backend = True, 0, 1, 0, "gloo"
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)

    monkeypatch.setattr(main_module.dist_utils, "init_distributed_mode", init)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize("flags, expected", [([], False), (["--find_unused_parameters"], True)],
                         ids=["default", "opt_in"])
def test_ddp_looks_for_unused_parameters_only_when_asked(one_process_group, monkeypatch, tmp_path,
                                                         flags, expected):
    """The published BatchFormerV2 command (--bf 1) trains under DDP without the slow search."""
    seen = []

    def recording(model, *args, **kwargs):
        seen.append(model.find_unused_parameters)
        return train_one_epoch(model, *args, **kwargs)

    monkeypatch.setattr(main_module, "train_one_epoch", recording)
    args = _parse("--bf", "1", "--batch_size", "2", "--epochs", "1", "--max_iters_per_epoch", "2",
                  "--eval_every", "0", "--output_dir", str(tmp_path), *flags)
    main_module.main(args)
    assert seen == [expected]
    log = json.loads((tmp_path / "log.txt").read_text())
    assert torch.isfinite(torch.tensor(log["train_loss"]))
