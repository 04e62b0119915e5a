import os
import subprocess
import sys

import pytest
import torch

from benchmark import benchmark, get_benchmark_arg_parser
from tests.tiny_model import tiny_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMALL = tiny_flags(
    "--dim_feedforward", "32", "--nheads", "4", "--num_feature_levels", "4", "--dec_n_points", "4",
    "--enc_n_points", "4", "--dataset_file", "coco"
)


def test_defaults_follow_the_public_benchmark():
    args = get_benchmark_arg_parser().parse_args([])
    assert (args.batch_size, args.num_iters, args.warm_iters, args.image_size) == (1, 300, 5, None)
    assert get_benchmark_arg_parser().parse_args(["--num-iters", "7"]).num_iters == 7


def test_synthetic_images_give_a_positive_rate():
    args = get_benchmark_arg_parser().parse_args(
        [*SMALL, "--image_size", "64", "80", "--num_iters", "2", "--warm_iters", "1", "--batch_size", "2"])
    fps = benchmark(args)
    assert 0 < fps < float("inf")


def test_resume_loads_the_checkpoint(tmp_path):
    from models import build_model

    args = get_benchmark_arg_parser().parse_args([*SMALL, "--image_size", "64", "96", "--num_iters", "1"])
    model, _, _ = build_model(args)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": model.state_dict()}, path)
    args.resume = str(path)
    assert benchmark(args) > 0
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    args.resume = str(tmp_path / "broken.pth")
    with pytest.raises(Exception, match="broken.pth"):
        benchmark(args)


def test_clear_errors(tmp_path):
    parser = get_benchmark_arg_parser()
    with pytest.raises(SystemExit, match="too small"):
        benchmark(parser.parse_args([*SMALL, "--image_size", "8", "8"]))
    with pytest.raises(SystemExit, match="--num_iters"):
        benchmark(parser.parse_args([*SMALL, "--image_size", "64", "96", "--num_iters", "0"]))
    missing = ["--dataset_file", "coco", "--coco_path", str(tmp_path / "nowhere"), "--num_iters", "1"]
    with pytest.raises(SystemExit, match="--image_size"):
        benchmark(parser.parse_args([*SMALL, *missing]))
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--device cpu"):
            benchmark(parser.parse_args([*SMALL[2:], "--device", "cuda", "--image_size", "64", "96"]))


def _checkpoint(tmp_path, *flags: str) -> str:
    """A checkpoint with its args, as main.py writes it, of the model ``flags`` build."""
    from models import build_model

    args = get_benchmark_arg_parser().parse_args([*SMALL, *flags])
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": build_model(args)[0].state_dict(), "epoch": 0, "args": args}, path)
    return str(path)


def test_the_architecture_comes_from_the_checkpoint(tmp_path, monkeypatch):
    """As in test.py: the model flags are the checkpoint's, no need to repeat them (nor possible to
    forget one and time another model)."""
    import benchmark as script

    path = _checkpoint(tmp_path, "--with_box_refine", "--num_queries", "7")
    timed = []
    real = script.nested_tensor_from_tensor_list
    monkeypatch.setattr(script, "nested_tensor_from_tensor_list", lambda images: timed.append(images) or
                        real(images))
    args = get_benchmark_arg_parser().parse_args(["--device", "cpu", "--resume", path, "--image_size", "64",
                                                  "80", "--num_iters", "1", "--warm_iters", "0"])
    assert benchmark(args) > 0 and len(timed) == 1


BENCHMARK_ERRORS = [
    (["--backbone", "foo"], "--backbone must be one of"),
    (["--hidden_dim", "48"], "--hidden_dim must be a multiple of 32"),
    (["--resume", "/nonexistent/checkpoint.pth"], "checkpoint not found: '/nonexistent/checkpoint.pth'"),
]


@pytest.mark.parametrize("flags, expected", BENCHMARK_ERRORS, ids=[e for _, e in BENCHMARK_ERRORS])
def test_user_errors_end_in_one_line(flags, expected, tmp_path):
    proc = subprocess.run([sys.executable, "benchmark.py", "--device", "cpu", "--image_size", "64", "64",
                           "--num_iters", "1", *flags], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("benchmark.py: error: ") and expected in last, proc.stderr
