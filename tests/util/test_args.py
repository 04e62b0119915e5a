"""Flag validation: bad invocations end with one line naming the flag (exit code 2), data and checkpoint
errors with one line naming the file, and notices for flags that are valid but do nothing."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main
from tests.tiny_model import tiny_flags
from util.args import args_notices, args_problem, get_args_parser, validate_args

REPO = Path(__file__).resolve().parents[2]

# A small working toy run (configs/toy_demo.sh, narrower); each case below breaks one thing.
BASE = tiny_flags(
    "--num_workers", "0", "--lr_backbone", "0", "--hidden_dim", "64", "--dim_feedforward", "128",
    "--nheads", "4", "--enc_layers", "2", "--dec_layers", "2", "--num_feature_levels", "3", "--epochs",
    "1", "--max_iters_per_epoch", "1", "--max_eval_iters", "1", "--dec_n_points", "4", "--enc_n_points",
    "4"
)


def _parse(*argv: str) -> argparse.Namespace:
    return argparse.ArgumentParser(parents=[get_args_parser()]).parse_args([*BASE, *argv])


BAD_FLAGS = [
    (["--num_feature_levels", "0"], "--num_feature_levels"),
    (["--num_feature_levels", "2"], "--num_feature_levels"),
    (["--masks", "--num_feature_levels", "1"], "--num_feature_levels"),
    (["--hidden_dim", "100"], "--hidden_dim"),
    (["--nheads", "5"], "--nheads"),
    (["--batch_size", "0"], "--batch_size"),
    (["--batch-size", "-2"], "--batch_size"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr_drop", "0"], "--lr_drop"),
    (["--dropout", "1.5"], "--dropout"),
    (["--num_workers", "-1"], "--num_workers"),
    (["--num_queries", "0"], "--num_queries"),
    (["--enc_layers", "0"], "--enc_layers"),
    (["--dec_layers", "0"], "--dec_layers"),
    (["--dec_n_points", "0"], "--dec_n_points"),
    (["--print_freq", "0"], "--print_freq"),
    (["--seed", "-1"], "--seed"),
    (["--backbone", "resnet999"], "--backbone"),
    (["--dilation"], "--dilation"),  # resnet18 has no bottleneck blocks
    (["--dataset_file", "voc"], "--dataset_file"),
    (["--dataset_file", "coco", "--coco_path", "/nonexistent/coco"], "--coco_path"),
    (["--dataset_file", "coco_panoptic", "--coco_path", "."], "--coco_panoptic_path"),
    (["--bf", "3"], "--bf"),
    (["--bf", "1", "--insert_idx", "9"], "--insert_idx"),
    (["--bf", "1", "--share_bf", "2"], "--share_bf"),
    (["--bf", "1", "--bt_num_layers", "0"], "--bt_num_layers"),
    (["--resume", "/nonexistent/checkpoint.pth"], "--resume"),
    (["--finetune", "/nonexistent/checkpoint.pth"], "--finetune /nonexistent/checkpoint.pth: no such file"),
    (["--finetune", "main.py", "--resume", "main.py"], "--finetune starts a new run"),
    (["--finetune", "main.py", "--eval"], "--finetune trains"),
    (["--finetune", "main.py", "--masks", "--frozen_weights", "main.py"], "--finetune and --frozen_weights"),
    (["--masks", "--frozen_weights", "/nonexistent/detr.pth"], "--frozen_weights"),
    (["--frozen_weights", "main.py"], "--masks"),
    (["--backbone_weights", "/nonexistent/resnet18.pth"], "--backbone_weights"),
    (["--device", "gpu"], "--device"),
    (["--amp", "fp8"], "--amp"),
    (["--image_scale", "0"], "--image_scale must be > 0"),
    (["--position_embedding", "cosine"], "--position_embedding"),
]


@pytest.mark.parametrize("extra,flag", BAD_FLAGS, ids=[" ".join(e) for e, _ in BAD_FLAGS])
def test_bad_flag_ends_with_one_line_naming_it(extra, flag, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main.cli([*BASE, "--toy_root", str(tmp_path / "toy"), *extra])
    out, err = capsys.readouterr()
    assert e.value.code == 2
    assert "Traceback" not in out + err
    last = err.strip().splitlines()[-1]
    assert last.startswith("main.py: error: ") and flag in last, last
    assert not (tmp_path / "toy").exists()  # stopped before touching the data


def test_output_dir_that_cannot_be_created(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for output_dir in (blocker, blocker / "sub"):
        with pytest.raises(SystemExit) as e:
            main.cli([*BASE, "--output_dir", str(output_dir)])
        assert e.value.code == 2
        assert "--output_dir" in capsys.readouterr().err.strip().splitlines()[-1]
    assert args_problem(_parse("--output_dir", str(tmp_path / "new" / "deeper"))) is None
    assert (tmp_path / "new" / "deeper").is_dir()
    # the folder is made only once every flag is good
    assert args_problem(_parse("--output_dir", str(tmp_path / "other"), "--lr", "-1")).startswith("--lr")
    assert not (tmp_path / "other").exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self") or os.geteuid() != 0, reason="needs /proc and root")
def test_output_dir_that_permissions_do_not_rule_out():
    """root passes os.access on /proc but cannot make a folder there."""
    assert args_problem(_parse("--output_dir", "/proc/no_such_folder/exp")).startswith("--output_dir")


def test_public_defaults_and_the_demo_flags_are_valid(tmp_path):
    (tmp_path / "coco").mkdir()
    args = argparse.ArgumentParser(parents=[get_args_parser()]).parse_args(
        ["--coco_path", str(tmp_path / "coco"), "--device", "cpu"])
    assert args_problem(args) is None
    assert args_problem(_parse("--bf", "1", "--insert_idx", "1", "0", "--share_bf", "0")) is None
    assert args_problem(_parse("--num_feature_levels", "1")) is None
    assert args_problem(_parse("--resume", "https://example.org/r50_deformable_detr.pth")) is None


def _notes(capsys, *argv: str) -> list[str]:
    parser = argparse.ArgumentParser(prog="main.py", parents=[get_args_parser()])
    validate_args(parser, parser.parse_args([*BASE, *argv]))
    return [line for line in capsys.readouterr().err.splitlines() if line]


def test_drop_path_is_accepted_and_said_to_do_nothing(capsys):
    assert _parse("--drop_path", "0.1").drop_path == 0.1 and _parse().drop_path == 0.0
    notes = _notes(capsys, "--drop_path", "0.1")
    assert len(notes) == 1 and notes[0].startswith("main.py: warning: --drop_path 0.1 has no effect")
    assert _notes(capsys) == []
    assert _notes(capsys, "--drop-path", "0") == []


def test_remove_difficult_is_accepted_and_said_to_do_nothing(capsys):
    assert _parse("--remove_difficult").remove_difficult and not _parse().remove_difficult
    notes = _notes(capsys, "--remove_difficult")
    assert len(notes) == 1 and notes[0].startswith("main.py: warning: --remove_difficult has no effect")


def test_resume_url_is_what_the_checkpoint_reader_downloads():
    """A path with '://' that is no URL the reader fetches is checked as a file, as the reader would."""
    assert "--resume gs://bucket/ckpt.pth: no such file" in args_problem(_parse("--resume", "gs://bucket/ckpt.pth"))
    assert args_problem(_parse("--resume", "s3://bucket/ckpt.pth")) is None


def test_batchformer_with_one_image_per_device_is_warned(capsys, monkeypatch, tmp_path):
    notes = _notes(capsys, "--bf", "1", "--batch_size", "1")
    assert len(notes) == 1 and "--bf 1 with --batch_size 1" in notes[0] and "itself" in notes[0]
    assert _notes(capsys, "--bf", "1", "--batch_size", "2") == []
    evaluation = ("--eval", "--resume", _checkpoint(tmp_path, "--bf", "1"))
    assert _notes(capsys, "--bf", "1", "--batch_size", "1", *evaluation) == []  # not training
    assert _notes(capsys, "--batch_size", "1") == []
    monkeypatch.setenv("RANK", "3")  # once per run: only the first process says it
    assert _notes(capsys, "--bf", "1", "--batch_size", "1") == []
    assert args_notices(_parse("--bf", "1", "--batch_size", "1"))


def _checkpoint(folder: Path, *flags: str) -> str:
    """A checkpoint of the model ``flags`` build (weights at their initial values), for --eval."""
    from models import build_model

    args = _parse(*flags)
    path = folder / "checkpoint.pth"
    torch.save({"model": build_model(args)[0].state_dict(), "args": args}, path)
    return str(path)


def _run_main(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "main.py", *BASE, *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_as_a_new_user_sees_it(tmp_path):
    """The issue's example, end to end: one line, exit code 2."""
    run = _run_main("--toy_root", str(tmp_path / "toy"), "--num_feature_levels", "0")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        "main.py: error: --num_feature_levels must be an integer >= 1, got 0")


def _small_coco(root: Path) -> Path:
    from datasets.toy import generate

    return generate(root, num_train=2, num_val=2)


def test_data_and_checkpoint_errors_name_the_file(tmp_path):
    empty = tmp_path / "coco"
    empty.mkdir()
    coco = ("--dataset_file", "coco")
    run = _run_main(*coco, "--coco_path", str(empty), "--eval", "--resume", _checkpoint(tmp_path, *coco))
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    assert "instances_val2017.json" in run.stderr.strip().splitlines()[-1]

    not_a_checkpoint = tmp_path / "model.pth"
    not_a_checkpoint.write_text("<html>sign in to download</html>")
    run = _run_main("--dataset_file", "coco", "--coco_path", str(_small_coco(tmp_path / "small")),
                    "--resume", str(not_a_checkpoint), "--eval")
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    assert "model.pth" in run.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("num_workers", ["0", "1"])
def test_unreadable_image_is_reported_in_one_line(tmp_path, num_workers):
    root = _small_coco(tmp_path / "coco")
    for image in (root / "val2017").iterdir():
        image.write_bytes(b"not an image")
    coco = ("--dataset_file", "coco")
    argv = [*BASE, *coco, "--coco_path", str(root), "--eval", "--num_workers", num_workers,
            "--resume", _checkpoint(tmp_path, *coco)]
    with pytest.raises(SystemExit) as e:
        main.cli(argv)
    message = str(e.value.code)
    assert "Traceback" not in message and len(message.splitlines()) == 1
    assert "val2017" in message and "cannot read image" in message


def test_flag_conflict_found_while_running_is_reported_like_a_bad_flag(tmp_path, capsys):
    """Two-stage picks --num_queries of the encoder positions: only the images tell how many there are."""
    root = _small_coco(tmp_path / "coco")
    model = ("--dataset_file", "coco", "--two_stage", "--with_box_refine", "--num_queries", "90000")
    evaluation = ("--coco_path", str(root), "--eval", "--resume", _checkpoint(tmp_path, *model))
    with pytest.raises(SystemExit) as e:
        main.cli([*BASE, *model, *evaluation])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("main.py: error: --num_queries (90000) exceeds the")


def test_eval_without_a_checkpoint_is_refused_outside_the_toy_sets(tmp_path, capsys):
    """A COCO evaluation of untrained weights takes minutes to write an AP of 0 that looks like a result."""
    (tmp_path / "coco").mkdir()
    coco = ("--dataset_file", "coco", "--coco_path", str(tmp_path / "coco"))
    problem = args_problem(_parse(*coco, "--eval"))
    assert problem is not None and problem.startswith("--eval without --resume") and "untrained" in problem
    checkpoint = tmp_path / "checkpoint.pth"
    checkpoint.write_bytes(b"")
    assert args_problem(_parse(*coco, "--eval", "--resume", str(checkpoint))) is None
    # A frozen detector is trained: its boxes are worth evaluating under an untrained mask head.
    frozen = ("--masks", "--frozen_weights", str(checkpoint), "--num_feature_levels", "3")
    assert args_problem(_parse(*coco, "--eval", *frozen)) is None
    # On a toy set it is a quick check of the pipeline: said, not refused.
    notes = _notes(capsys, "--eval")
    assert len(notes) == 1 and "--eval without --resume" in notes[0] and "untrained" in notes[0]
    assert _notes(capsys, "--eval", "--resume", str(checkpoint)) == []
