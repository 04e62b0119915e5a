"""test.py: evaluates a checkpoint with the architecture its args record, as main.py --eval does."""
import argparse
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

import main as main_module
from tests.tiny_model import tiny_flags
from util.args import FlagError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tiny model of tests/test_end_to_end.py, but with flags away from every default that has a tensor
# or changes the forward: test.py has to find each of them in the checkpoint.
MODEL = tiny_flags(
    "--dec_layers", "2", "--dec_n_points", "3", "--with_box_refine", "--position_embedding_scale", "5.0"
)
RUN = ["--device", "cpu", "--num_workers", "0", "--print_freq", "1", "--batch_size", "2",
       "--max_eval_iters", "1"]


def _load_test_py():
    """test.py under another module name: ``test`` is also the standard library's test package."""
    spec = importlib.util.spec_from_file_location("deformable_detr_test_py", os.path.join(ROOT, "test.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = _load_test_py()


def _parse(*argv: str) -> argparse.Namespace:
    return argparse.ArgumentParser(parents=[main_module.get_args_parser()]).parse_args(list(argv))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """One epoch of two iterations of the tiny model (weights away from their initial values)."""
    out = tmp_path_factory.mktemp("train")
    main_module.main(_parse(*MODEL, *RUN, "--epochs", "1", "--max_iters_per_epoch", "2", "--eval_every", "0",
                            "--output_dir", str(out)))
    return str(out / "checkpoint.pth")


def test_without_model_flags_evaluates_like_main_eval_with_them(checkpoint, tmp_path, capsys):
    main_module.main(_parse(*MODEL, *RUN, "--resume", checkpoint, "--eval",
                            "--output_dir", str(tmp_path / "main")))
    script.cli(["--resume", checkpoint, *RUN, "--output_dir", str(tmp_path / "test")])
    out = capsys.readouterr().out
    assert "--backbone resnet18" in out and "--with_box_refine" in out and "--dataset_file toy" in out
    for name in ("eval_stats.json", "results_bbox.json"):
        by_main = json.loads((tmp_path / "main" / name).read_text())
        by_test = json.loads((tmp_path / "test" / name).read_text())
        assert by_test == by_main, name
    stats = json.loads((tmp_path / "test" / "eval_stats.json").read_text())["coco_eval_bbox"]
    assert len(stats) == 12


def test_flags_given_override_the_checkpoint_with_a_notice(checkpoint, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(main_module, "main", lambda args, detector: seen.append((args, detector)))
    script.cli(["--resume", checkpoint, *RUN, "--position_embedding_scale", "2.0", "--hidden_dim", "32",
                "--set_cost_class", "1"])
    args, detector = seen[0]
    assert args.eval and args.position_embedding_scale == 2.0 and args.hidden_dim == 32
    assert (args.backbone, args.num_feature_levels, args.dec_n_points) == ("resnet18", 1, 3)
    assert args.with_box_refine and args.dataset_file == "toy" and args.set_cost_class == 1
    assert args.no_pretrained_backbone  # every weight comes from the checkpoint
    assert args.arch_overrides == ["position_embedding_scale"]  # --hidden_dim is the checkpoint's
    assert detector.model.transformer.decoder.num_layers == 2 and detector.criterion.matcher.cost_class == 1
    out = capsys.readouterr().out
    assert "--position_embedding_scale 2.0 from the command line overrides the checkpoint's 5.0" in out
    assert "--set_cost_class 1.0 from the command line overrides the checkpoint's 2" in out
    assert "--hidden_dim 32 from the command line" not in out


def test_an_override_is_evaluated_not_refused(checkpoint, tmp_path, capsys):
    """The user chose the flag: the architecture check lets it through (the tensors still have to fit)."""
    script.cli(["--resume", checkpoint, *RUN, "--position_embedding_scale", "2.0",
                "--output_dir", str(tmp_path)])
    assert "--position_embedding_scale 2.0 from the command line overrides the checkpoint's 5.0" in (
        capsys.readouterr().out)
    assert len(json.loads((tmp_path / "eval_stats.json").read_text())["coco_eval_bbox"]) == 12
    expected = r"test.py: error: .*shape.*query_embed.weight checkpoint \[10, 64\] vs model \[7, 64\]"
    with pytest.raises(SystemExit, match=expected):
        script.cli(["--resume", checkpoint, *RUN, "--num_queries", "7"])


def test_checkpoint_without_args_uses_the_command_line(checkpoint, tmp_path, monkeypatch, capsys):
    bare = tmp_path / "bare.pth"
    torch.save({"model": torch.load(checkpoint, weights_only=False)["model"]}, bare)
    seen = []
    monkeypatch.setattr(main_module, "main", lambda args, detector: seen.append(args))
    script.cli(["--resume", str(bare), *RUN, *MODEL])
    assert seen[0].hidden_dim == 32 and seen[0].backbone == "resnet18" and seen[0].arch_overrides == []
    assert "records no args" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"test.py: error: .*bare.pth was trained with a different model"):
        script.cli(["--resume", str(bare), *RUN, "--dataset_file", "toy"])  # and it has to fit them


def _run_test_py(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, os.path.join(ROOT, "test.py"), *argv], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)


GZIP = b"\x1f\x8b\x08\x00" + bytes(64)


@pytest.mark.parametrize("content, expected", [(None, "checkpoint not found"), (b"", "is empty"),
                                               (GZIP, "is not a torch checkpoint")])
def test_bad_checkpoint_is_one_error_naming_the_file(tmp_path, content, expected):
    path = tmp_path / "r50_deformable_detr.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit) as info:
        script.cli(["--resume", str(path), "--device", "cpu"])
    message = str(info.value.code)
    assert message.startswith("test.py: error: ") and str(path) in message and expected in message
    assert "\n" not in message


def test_html_checkpoint_ends_the_process_with_one_line_and_no_traceback(tmp_path):
    path = tmp_path / "r50_deformable_detr.pth"
    path.write_bytes(b"<!DOCTYPE html><html><title>Google Drive - Virus scan warning</title></html>")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "test.py"), "--resume", str(path),
                           "--device", "cpu"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("test.py: error: ") and str(path) in proc.stderr
    assert "HTML page" in proc.stderr


def test_resume_is_required(capsys):
    with pytest.raises(SystemExit) as info:
        script.cli(["--device", "cpu"])
    assert info.value.code == 2 and "test.py: error: --resume is required" in capsys.readouterr().err


def test_flags_taken_from_the_checkpoint_are_validated(checkpoint, tmp_path, capsys):
    """A COCO checkpoint needs --coco_path: said as main.py says it, before anything is built."""
    saved = torch.load(checkpoint, weights_only=False)
    saved["args"].dataset_file = "coco"
    path = tmp_path / "coco.pth"
    torch.save(saved, path)
    with pytest.raises(SystemExit) as info:
        script.cli(["--resume", str(path), *RUN, "--coco_path", str(tmp_path / "nowhere")])
    assert info.value.code == 2
    assert "test.py: error: --coco_path" in capsys.readouterr().err


def test_a_flag_conflict_found_while_running_ends_like_a_bad_flag(checkpoint, tmp_path, monkeypatch, capsys):
    """A FlagError raised once the data is seen (two-stage --num_queries above the encoder positions)
    is a user error in test.py as in main.py: one line, exit code 2."""
    def conflict(args, detector):
        raise FlagError("--num_queries (300) exceeds the 120 encoder positions of this batch")

    monkeypatch.setattr(main_module, "main", conflict)
    with pytest.raises(SystemExit) as info:
        script.cli(["--resume", checkpoint, *RUN, "--output_dir", str(tmp_path)])
    assert info.value.code == 2
    assert "test.py: error: --num_queries (300) exceeds" in capsys.readouterr().err


# Flags away from their defaults that change what the evaluation computes or prints, though not
# which tensors the model has: the BatchFormer at inference, the matcher's costs, the loss weights.
EVALUATION = ("--bf", "1", "--insert_idx", "0", "--eval_bf", "--set_cost_class", "1", "--set_cost_giou",
              "3", "--cls_loss_coef", "3", "--bbox_loss_coef", "4", "--giou_loss_coef", "1", "--focal_alpha",
              "0.4", "--no_aux_loss")


def test_the_test_loss_is_the_training_runs_evaluation_loss(tmp_path, monkeypatch, capsys):
    """Every flag that changes the evaluation travels with the checkpoint, and the notice lists it."""
    flags = tiny_flags("--dec_layers", "2", *EVALUATION)
    trained = main_module.main(_parse(*flags, *RUN, "--epochs", "1", "--max_iters_per_epoch", "1",
                                      "--output_dir", str(tmp_path / "train")))
    tested = script.cli(["--resume", str(tmp_path / "train" / "checkpoint.pth"), *RUN])
    assert tested["loss"] == pytest.approx(trained["loss"], rel=1e-6)
    assert set(tested) == set(trained)  # the same terms: no auxiliary ones without --no_aux_loss
    notice = next(line for line in capsys.readouterr().out.splitlines() if "(from its args)" in line)
    for token in ("--eval_bf 1", "--set_cost_class 1.0", "--cls_loss_coef 3.0", "--focal_alpha 0.4",
                  "--no_aux_loss"):
        assert token in notice, (token, notice)
    # With --eval_bf an image's result depends on its batch: a batch size other than training's is said.
    monkeypatch.setattr(main_module, "main", lambda args, detector: None)
    script.cli(["--resume", str(tmp_path / "train" / "checkpoint.pth"), *RUN, "--batch_size", "1"])
    assert "the checkpoint's run used 2, this one 1" in capsys.readouterr().out


def test_a_checkpoint_damaged_on_disk_is_one_error_naming_it(checkpoint, tmp_path):
    """Not the 'boxes contain NaN ... did the loss diverge?' traceback that its garbage weights gave."""
    from tests.util.test_checkpoint import _overwrite_inside_storage

    damaged = tmp_path / "checkpoint.pth"
    damaged.write_bytes(open(checkpoint, "rb").read())
    _overwrite_inside_storage(damaged)
    proc = _run_test_py("--resume", str(damaged), *RUN)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == proc.stderr.strip().splitlines()[-1]
    assert proc.stderr.startswith(f"test.py: error: checkpoint '{damaged}' is corrupt")


def test_the_checkpoint_is_read_once(checkpoint, tmp_path, monkeypatch):
    """Its flags and its weights come from one read (with its checksums verified, a large file costs)."""
    reads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: reads.append(args[0]) or real(*args, **kwargs))
    script.cli(["--resume", checkpoint, *RUN, "--output_dir", str(tmp_path)])
    assert reads == [checkpoint]


def test_help_says_it_is_the_evaluation_command_not_a_test_suite():
    proc = _run_test_py("--help")
    assert proc.returncode == 0
    assert "The evaluation command (not a test suite" in " ".join(proc.stdout.split())
    assert script.__doc__.startswith("The evaluation command (not a test suite)")
