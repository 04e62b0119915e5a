"""main.py: the parser it re-exports, the parameter groups, optimizer, scheduler and checkpoint names."""
import argparse

import pytest
import torch
from torch import nn

import main as main_module


def _parse(*argv) -> argparse.Namespace:
    return argparse.ArgumentParser(parents=[main_module.get_args_parser()]).parse_args(list(argv))


def test_get_args_parser_has_the_public_defaults():
    parser = main_module.get_args_parser()
    assert isinstance(parser, argparse.ArgumentParser) and parser.add_help is False
    args = _parse()
    assert (args.lr, args.lr_backbone, args.lr_linear_proj_mult) == (2e-4, 2e-5, 0.1)
    assert args.lr_backbone_names == ["backbone.0"]
    assert args.lr_linear_proj_names == ["reference_points", "sampling_offsets"]
    assert (args.batch_size, args.epochs, args.lr_drop, args.clip_max_norm) == (2, 50, 40, 0.1)
    assert (args.amp, args.max_iters_per_epoch, args.eval_every) == (None, 0, 1)
    assert _parse("--batch-size", "3", "--amp").batch_size == 3
    assert _parse("--amp").amp == "bf16" and _parse("--amp", "fp16").amp == "fp16"
    with pytest.raises(SystemExit):
        _parse("--amp", "fp8")


class _Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])  # backbone.0 = CNN, .1 = pos
        self.backbone[0].bias.requires_grad_(False)  # a frozen parameter
        self.sampling_offsets = nn.Linear(2, 2)
        self.reference_points = nn.Linear(2, 1)
        self.class_embed = nn.Linear(2, 3)


def test_param_groups_follow_the_recipe():
    model = _Detector()
    args = _parse("--lr", "1e-3", "--lr_backbone", "1e-4", "--lr_linear_proj_mult", "0.5")
    groups = main_module.build_param_groups(model, args)
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert ids[1] == {id(model.backbone[0].weight)}  # only trainable backbone.0 params
    assert ids[2] == {id(p) for m in (model.sampling_offsets, model.reference_points) for p in m.parameters()}
    rest = {id(p) for m in (model.backbone[1], model.class_embed) for p in m.parameters()}
    assert ids[0] == rest
    assert [g["lr"] for g in groups] == [1e-3, 1e-4, 5e-4]


def test_optimizer_and_scheduler_choices():
    model = _Detector()
    opt, sched = main_module.build_optimizer(model, _parse("--lr_drop", "3"))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == 1e-4
    assert isinstance(sched, torch.optim.lr_scheduler.StepLR) and sched.step_size == 3
    opt, sched = main_module.build_optimizer(model, _parse("--sgd", "--lr_drop_epochs", "8", "5"))
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    lrs = []
    for _ in range(9):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2e-4] * 5 + [2e-5] * 3 + [2e-6])


def test_extra_checkpoints_before_lr_drops_and_every_five_epochs():
    args = _parse("--lr_drop", "7")
    names = {e: [p.rsplit("/", 1)[1] for p in main_module._checkpoint_paths("/x", e, args)]
             for e in range(15)}
    assert names[0] == ["checkpoint.pth"]
    assert names[4] == ["checkpoint.pth", "checkpoint0004.pth"]
    assert names[6] == ["checkpoint.pth", "checkpoint0006.pth"]  # the epoch before the lr drop
    assert names[9] == ["checkpoint.pth", "checkpoint0009.pth"]
    assert names[13] == ["checkpoint.pth", "checkpoint0013.pth"]  # StepLR drops again
    assert sum(len(v) == 2 for v in names.values()) == 5
    names = [main_module._checkpoint_paths("/x", e, _parse("--lr_drop_epochs", "3", "8")) for e in range(10)]
    assert [e for e, v in enumerate(names) if len(v) == 2] == [2, 4, 7, 9]


def test_frozen_weights_require_masks():
    with pytest.raises(ValueError, match="--masks"):
        main_module.main(_parse("--frozen_weights", "x.pth", "--device", "cpu"))


def test_cuda_device_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--device cuda: CUDA is not available"):
        main_module.main(_parse())


def _checkpoint_after(path, epochs_done: int, *flags) -> str:
    """A checkpoint of _Detector written after ``epochs_done`` epochs of a run with ``flags``."""
    args = _parse(*flags)
    model = _Detector()
    opt, sched = main_module.build_optimizer(model, args)
    for _ in range(epochs_done):
        opt.step()
        sched.step()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "lr_scheduler": sched.state_dict(), "epoch": epochs_done - 1, "args": args}, path)
    return str(path)


def _resumed_lrs(ckpt: str, *flags, later_epochs: int = 0) -> list[float]:
    """Group lrs of the first resumed epoch (or ``later_epochs`` epochs after it)."""
    args = _parse("--resume", ckpt, *flags)
    model = _Detector()
    opt, sched = main_module.build_optimizer(model, args)
    main_module._resume(args, model, opt, sched, None)
    for _ in range(later_epochs):
        opt.step()
        sched.step()
    return [g["lr"] for g in opt.param_groups]


def test_resume_takes_lr_drop_from_the_command_line(tmp_path):
    # Stopped after epoch 28 of a --lr_drop 40 run; resumed with --lr_drop 25: epoch 29 is past the drop.
    ckpt = _checkpoint_after(tmp_path / "c.pth", 29, "--lr_drop", "40")
    assert _resumed_lrs(ckpt, "--lr_drop", "40") == pytest.approx([2e-4, 2e-5, 2e-5])
    assert _resumed_lrs(ckpt, "--lr_drop", "25") == pytest.approx([2e-5, 2e-6, 2e-6])
    # ... and the schedule goes on from there: the second drop comes at epoch 50.
    assert _resumed_lrs(ckpt, "--lr_drop", "25", later_epochs=20) == pytest.approx([2e-5, 2e-6, 2e-6])
    assert _resumed_lrs(ckpt, "--lr_drop", "25", later_epochs=21) == pytest.approx([2e-6, 2e-7, 2e-7])


def test_resume_takes_lr_from_the_command_line(tmp_path):
    ckpt = _checkpoint_after(tmp_path / "c.pth", 29, "--lr_drop", "40")
    lrs = _resumed_lrs(ckpt, "--lr", "1e-4", "--lr_backbone", "3e-5", "--lr_linear_proj_mult", "0.5")
    assert lrs == pytest.approx([1e-4, 3e-5, 5e-5])
    # Already past a drop when resumed: the new lrs come dropped.
    ckpt = _checkpoint_after(tmp_path / "d.pth", 45, "--lr_drop", "40")
    assert _resumed_lrs(ckpt, "--lr", "1e-4") == pytest.approx([1e-5, 2e-6, 1e-6])


@pytest.mark.parametrize("saved", [["--lr_drop_epochs", "30", "40"], ["--lr_drop", "40"]])
def test_resume_takes_lr_drop_epochs_from_the_command_line(tmp_path, saved):
    ckpt = _checkpoint_after(tmp_path / "c.pth", 29, *saved)
    flags = ["--lr_drop_epochs", "20", "35"]
    assert _resumed_lrs(ckpt, *flags) == pytest.approx([2e-5, 2e-6, 2e-6])
    assert _resumed_lrs(ckpt, *flags, later_epochs=5) == pytest.approx([2e-5, 2e-6, 2e-6])
    assert _resumed_lrs(ckpt, *flags, later_epochs=6) == pytest.approx([2e-6, 2e-7, 2e-7])
    assert _resumed_lrs(ckpt, *flags, later_epochs=20) == pytest.approx([2e-6, 2e-7, 2e-7])
