"""main.py's parameter groups with --bf_lr and --bf_weight_decay.

With the defaults the groups are the published three, so an optimizer state saved by any earlier run
still fits; a fourth group holds the BatchFormer's parameters only when one of the flags asks for
values other than the rest's.
"""
import argparse

import pytest
import torch

import main as main_module
from models import build_model

TINY = ("--no_pretrained_backbone --backbone resnet18 --hidden_dim 32 --dim_feedforward 64 --enc_layers 2 "
        "--dec_layers 2 --num_queries 6 --nheads 4 --enc_n_points 2 --dec_n_points 2 --dataset_file toy "
        "--device cpu --bf 1 --insert_idx 0 1 --share_bf 0").split()


def _args(*flags: str) -> argparse.Namespace:
    return argparse.ArgumentParser(parents=[main_module.get_args_parser()]).parse_args([*TINY, *flags])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(_args())[0]


def _names(model, groups) -> list[set[str]]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [{name_of[id(p)] for p in g["params"]} for g in groups]


def _published_groups(model, args) -> list[set[str]]:
    """The recipe in words: backbone.0 at lr_backbone, the sampling offsets and reference points at
    lr * lr_linear_proj_mult, every other trainable parameter at lr."""
    backbone, linear, rest = set(), set(), set()
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "backbone.0" in n:
            backbone.add(n)
        elif "sampling_offsets" in n or "reference_points" in n:
            linear.add(n)
        else:
            rest.add(n)
    return [rest, backbone, linear]


def test_defaults_give_the_published_three_groups(model):
    args = _args()
    assert (args.bf_lr, args.bf_weight_decay) == (1.0, None)
    groups = main_module.build_param_groups(model, args)
    assert len(groups) == 3
    assert _names(model, groups) == _published_groups(model, args)
    assert any(n.startswith("transformer.bf.") for n in _names(model, groups)[0])
    assert [g["lr"] for g in groups] == [args.lr, args.lr_backbone, args.lr * args.lr_linear_proj_mult]
    assert all("weight_decay" not in g for g in groups)  # the optimizer's (--weight_decay)
    # A weight decay equal to --weight_decay asks for nothing new either.
    assert len(main_module.build_param_groups(model, _args("--bf_weight_decay", "1e-4"))) == 3


def test_bf_lr_moves_the_batchformer_to_a_fourth_group(model):
    args = _args("--bf_lr", "0.1", "--lr", "1e-3")
    groups = main_module.build_param_groups(model, args)
    names = _names(model, groups)
    bf = {n for n, _ in model.named_parameters() if n.startswith("transformer.bf.")}
    assert len(groups) == 4 and names[3] == bf and len(bf) > 0
    published = _published_groups(model, args)
    assert names[:3] == [published[0] - bf, published[1], published[2]]
    assert groups[3]["lr"] == pytest.approx(1e-4) and groups[3]["weight_decay"] == args.weight_decay
    optimizer, scheduler = main_module.build_optimizer(model, args)
    assert [g["lr"] for g in optimizer.param_groups][3] == pytest.approx(1e-4)
    for _ in range(args.lr_drop):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[3]["lr"] == pytest.approx(1e-5)  # dropped with the others


def test_bf_weight_decay_alone(model):
    args = _args("--bf_weight_decay", "0")
    optimizer, _ = main_module.build_optimizer(model, args)
    assert len(optimizer.param_groups) == 4
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 1e-4, 1e-4, 0.0]
    assert optimizer.param_groups[3]["lr"] == args.lr


def test_without_a_batchformer_the_flags_add_no_group():
    torch.manual_seed(0)
    plain = build_model(_args("--bf", "0"))[0]
    assert len(main_module.build_param_groups(plain, _args("--bf", "0", "--bf_lr", "0.5"))) == 3


def test_a_default_checkpoint_resumes_and_a_bf_lr_one_is_refused(model, tmp_path):
    args = _args()
    optimizer, scheduler = main_module.build_optimizer(model, args)
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(), "epoch": 3, "args": args}, path)
    resumed = _args("--resume", str(path))
    opt, sched = main_module.build_optimizer(model, resumed)
    main_module._resume(resumed, model, opt, sched, None)
    assert resumed.start_epoch == 4 and len(opt.param_groups) == 3
    other = _args("--resume", str(path), "--bf_lr", "0.1")
    opt, sched = main_module.build_optimizer(model, other)
    with pytest.raises(main_module.CheckpointError, match="--bf_lr"):
        main_module._resume(other, model, opt, sched, None)
