"""main.py --finetune: a new run from a COCO-shaped checkpoint on the toy set's classes starts at epoch 0 with
a fresh optimizer, and continues after a stop with a plain --resume."""
import argparse
import json

import torch

import main as main_module
from tests.tiny_model import tiny_flags
from util.checkpoint import load_checkpoint

TINY = tiny_flags("--max_iters_per_epoch", "1", "--max_eval_iters", "1", "--print_freq", "100",
                  "--num_workers", "0")


def _args(*extra) -> argparse.Namespace:
    parser = argparse.ArgumentParser(parents=[main_module.get_args_parser()])
    return parser.parse_args([*TINY, *map(str, extra)])


def test_a_fine_tuning_run_starts_at_epoch_zero_and_resumes_plainly(tmp_path, capsys):
    from models import build_model

    coco = _args("--num_classes", "91")
    torch.manual_seed(1)  # weights main.py's own initialisation would not give
    state = build_model(coco)[0].state_dict()
    torch.save({"model": state, "args": coco, "epoch": 49, "optimizer": {"state": {}, "param_groups": []},
                "lr_scheduler": {"last_epoch": 50}}, tmp_path / "coco.pth")
    out, checkpoint = tmp_path / "ft", tmp_path / "ft" / "checkpoint.pth"
    main_module.main(_args("--finetune", str(tmp_path / "coco.pth"), "--epochs", "1", "--output_dir", out))
    printed = capsys.readouterr().out
    assert "re-initialised for this data set's classes (20 outputs), as a freshly built model initialises " \
           "them: class_embed.* (2 tensors)" in printed
    saved = load_checkpoint(str(checkpoint))
    assert saved["epoch"] == 0 and saved["model"]["class_embed.0.weight"].shape == (20, 32)
    assert [json.loads(line)["epoch"] for line in (out / "log.txt").read_text().splitlines()] == [0]
    stem = "backbone.0.body.conv1.weight"  # frozen in training (ResNet's stem): still the checkpoint's
    assert torch.equal(saved["model"][stem], state[stem])

    main_module.main(_args("--resume", str(checkpoint), "--epochs", "2", "--output_dir", str(out)))
    assert f"Resumed from {checkpoint} at epoch 1" in capsys.readouterr().out
    assert load_checkpoint(str(checkpoint))["epoch"] == 1
