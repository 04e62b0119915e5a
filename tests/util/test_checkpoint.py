"""Atomic checkpoint writes, weights-only reads, and state-dict loading that reports its gaps."""
import argparse
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from tests.tiny_model import tiny_flags
from util import checkpoint as ckpt
from util.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint


def _original_format(epoch: int = 3) -> dict:
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, 40)
    args = argparse.Namespace(lr=2e-4, lr_drop_epochs=None, backbone="resnet50", masks=False)
    return {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "lr_scheduler": sched.state_dict(), "epoch": epoch, "args": args}


def test_round_trip_keeps_namespace_and_tensors(tmp_path):
    obj = _original_format()
    path = str(tmp_path / "checkpoint.pth")
    save_checkpoint(obj, path)
    back = load_checkpoint(path)
    assert back["epoch"] == 3
    assert isinstance(back["args"], argparse.Namespace) and back["args"].lr == 2e-4
    for k, v in obj["model"].items():
        assert torch.equal(back["model"][k], v)
    assert back["optimizer"]["state"][0]["exp_avg"].equal(obj["optimizer"]["state"][0]["exp_avg"])
    assert os.listdir(tmp_path) == ["checkpoint.pth"]


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pth")
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def crash_mid_write(obj, f):
        with open(f, "wb") as half:
            half.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt("killed during the write")

    monkeypatch.setattr(ckpt.torch, "save", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    back = load_checkpoint(path)
    assert back["epoch"] == 1 and torch.equal(back["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["checkpoint.pth"], "the temporary file must be cleaned up"


def test_process_killed_during_write_leaves_loadable_checkpoint(tmp_path):
    """A real SIGKILL in the middle of torch.save: the previous checkpoint still loads."""
    path = tmp_path / "checkpoint.pth"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.getcwd()!r})
        import torch
        from util import checkpoint as ckpt
        ckpt.save_checkpoint({{"epoch": 1, "w": torch.arange(1000.)}}, {str(path)!r})
        real_save = torch.save
        def save_then_die(obj, f):
            real_save(obj, f)
            os.kill(os.getpid(), signal.SIGKILL)
        ckpt.torch.save = save_then_die
        ckpt.save_checkpoint({{"epoch": 2, "w": torch.zeros(1000)}}, {str(path)!r})
    """)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    back = load_checkpoint(str(path))
    assert back["epoch"] == 1 and torch.equal(back["w"], torch.arange(1000.0))


class _Payload:
    """Unpickling this object would create the marker file (it is what a malicious checkpoint does)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_checkpoint_carrying_code_is_refused_and_code_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = str(tmp_path / "evil.pth")
    torch.save({"model": {"w": torch.ones(1)}, "epoch": 0, "extra": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(path)
    assert not marker.exists()
    # The payload is real: the unsafe loader does run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_missing_and_truncated_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found.*nope.pth"):
        load_checkpoint(str(tmp_path / "nope.pth"))
    path = tmp_path / "cut.pth"
    save_checkpoint({"w": torch.ones(100)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pth"):
        load_checkpoint(str(path))


def test_file_url_is_downloaded_then_loaded_safely(tmp_path, monkeypatch):
    src = tmp_path / "remote.pth"
    save_checkpoint(_original_format(epoch=7), str(src))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    back = load_checkpoint(src.as_uri())
    assert back["epoch"] == 7
    cached = os.listdir(tmp_path / "hub" / "checkpoints")
    assert len(cached) == 1 and cached[0].endswith("-remote.pth"), cached


class _Net(nn.Module):
    def __init__(self, classes: int = 2, extra: bool = False):
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, classes)
        if extra:
            self.mask_head = nn.Linear(4, 1)


def test_load_model_state_reports_missing_and_unexpected(capsys):
    src = _Net(extra=True)
    dst = _Net()
    report = load_model_state(dst, src.state_dict(), name="ckpt")
    assert report.unexpected == ["mask_head.weight", "mask_head.bias"]
    assert report.missing == []
    assert torch.equal(dst.body.weight, src.body.weight)
    report = load_model_state(_Net(extra=True), _Net().state_dict())
    assert sorted(report.missing) == ["mask_head.bias", "mask_head.weight"]
    assert "missing keys (2" in capsys.readouterr().out


def test_shape_mismatch_names_the_keys():
    with pytest.raises(CheckpointError, match=r"head.weight checkpoint \[3, 4\] vs model \[2, 4\]"):
        load_model_state(_Net(classes=2), _Net(classes=3).state_dict())
    dst = _Net(classes=2)
    report = load_model_state(dst, _Net(classes=3).state_dict(), allow_shape_mismatch=True)
    assert [k for k, _, _ in report.mismatched] == ["head.weight", "head.bias"]
    assert sorted(report.missing) == ["head.bias", "head.weight"]


# --- loading on every torch the requirements allow ------------------------------------------------


def _requirement_floor(name: str) -> tuple[int, int]:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "requirements.txt")) as f:
        for line in f:
            spec = line.split("#")[0].strip()
            if spec.startswith(name + ">="):
                major, minor = spec[len(name) + 2:].split(".")[:2]
                return int(major), int(minor)
    raise AssertionError(f"requirements.txt gives no floor for {name}")


def test_requirement_floors_pair_torch_with_its_torchvision():
    """torchvision 0.N+15 is the release built for torch 2.N; a floor pair that disagrees cannot install."""
    torch_floor, vision_floor = _requirement_floor("torch"), _requirement_floor("torchvision")
    assert torch_floor[0] == 2 and vision_floor == (0, torch_floor[1] + 15)
    # The first torch whose weights-only unpickler takes user-allowed globals (add_safe_globals).
    assert torch_floor >= (2, 4)


def test_loads_where_torch_lacks_the_safe_globals_context_manager(tmp_path, monkeypatch):
    """torch 2.4 has add_safe_globals but not safe_globals (2.5): a checkpoint with args still loads."""
    path = str(tmp_path / "checkpoint.pth")
    save_checkpoint(_original_format(epoch=5), path)
    before = torch.serialization.get_safe_globals()
    monkeypatch.delattr(torch.serialization, "safe_globals")
    try:
        back = load_checkpoint(path)
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)
    assert back["epoch"] == 5 and isinstance(back["args"], argparse.Namespace)


# --- files that are not checkpoints ----------------------------------------------------------------


def test_empty_file_gets_its_own_message(tmp_path):
    path = tmp_path / "r50_deformable_detr.pth"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"^checkpoint '[^']*/r50_deformable_detr.pth' is empty"):
        load_checkpoint(str(path))


_DRIVE_PAGE = (b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>"
               b"<body>Google Drive can't scan this file for viruses.<form action=\"/uc\"></form>"
               b"</body></html>")


def test_html_page_saved_as_checkpoint_is_named_as_such(tmp_path):
    path = tmp_path / "r50_deformable_detr.pth"
    path.write_bytes(b"\n  " + _DRIVE_PAGE)
    with pytest.raises(CheckpointError, match=r"^checkpoint '[^']*r50_deformable_detr.pth' is an HTML page"):
        load_checkpoint(str(path))


def test_truncated_file_is_called_truncated(tmp_path):
    path = tmp_path / "cut.pth"
    save_checkpoint(_original_format(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CheckpointError, match=r"^checkpoint '[^']*cut.pth' is truncated \(\d+ bytes"):
        load_checkpoint(str(path))


def test_other_binary_is_not_taken_for_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"\x1f\x8b\x08\x00" + bytes(200))  # a gzip stream
    with pytest.raises(CheckpointError, match=r"^checkpoint '[^']*weights.pth' is not a torch checkpoint"):
        load_checkpoint(str(path))


# --- numpy values in args --------------------------------------------------------------------------


def _numpy_args() -> argparse.Namespace:
    import numpy as np

    return argparse.Namespace(lr=np.float64(2e-4), epochs=np.int64(50), dtype=np.dtype("float32"),
                              masks=np.bool_(False), scale=np.float32(6.25), lr_drop=40)


def _check_numpy_args(args: argparse.Namespace) -> None:
    import numpy as np

    assert args.lr == np.float64(2e-4) and type(args.lr) is np.float64
    assert args.epochs == 50 and type(args.epochs) is np.int64
    assert args.dtype == np.dtype("float32") and not args.masks and args.scale == np.float32(6.25)


def test_numpy_scalars_and_dtypes_in_args_load_without_running_code(tmp_path):
    path = tmp_path / "derived.pth"
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 1, "args": _numpy_args()}, path)
    back = load_checkpoint(str(path))
    _check_numpy_args(back["args"])
    assert torch.equal(back["model"]["w"], torch.ones(2))


def test_numpy_1_checkpoint_names_load(tmp_path):
    """Checkpoints written under numpy 1.x name the scalar constructor numpy.core.multiarray.scalar."""
    path = tmp_path / "numpy1.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": _numpy_args()}, path,
               _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    assert data.count(b"cnumpy._core.multiarray\nscalar\n") == 1  # protocol 2 GLOBAL, memoised once
    path.write_bytes(data.replace(b"cnumpy._core.multiarray\nscalar\n", b"cnumpy.core.multiarray\nscalar\n"))
    _check_numpy_args(load_checkpoint(str(path))["args"])


def test_numpy_arrays_still_need_trust(tmp_path):
    """Only scalars and dtypes are allowed: an object array could carry anything."""
    import numpy as np

    path = tmp_path / "array.pth"
    torch.save({"args": argparse.Namespace(mean=np.array([1.0, 2.0]))}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(str(path))


# --- downloads -------------------------------------------------------------------------------------


@pytest.fixture
def http_files(monkeypatch):
    """A local HTTP server (127.0.0.1) answering each path-with-query from a dict of bytes."""
    import http.server
    import threading

    files: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    yield f"http://127.0.0.1:{server.server_address[1]}", files
    server.shutdown()
    server.server_close()


def _bytes_of(obj, tmp_path) -> bytes:
    path = tmp_path / "tmp_bytes.pth"
    torch.save(obj, path)
    data = path.read_bytes()
    path.unlink()
    return data


def test_share_links_with_the_same_last_segment_do_not_collide(tmp_path, monkeypatch, http_files):
    base, files = http_files
    files["/uc?id=AAA&export=download"] = _bytes_of(_original_format(epoch=11), tmp_path)
    files["/uc?id=BBB&export=download"] = _bytes_of(_original_format(epoch=22), tmp_path)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert load_checkpoint(base + "/uc?id=AAA&export=download")["epoch"] == 11
    assert load_checkpoint(base + "/uc?id=BBB&export=download")["epoch"] == 22
    cached = sorted(os.listdir(tmp_path / "hub" / "checkpoints"))
    assert len(cached) == 2 and all(name.endswith("uc") for name in cached), cached
    # Cached: a second load reads the file without asking the server.
    files.clear()
    assert load_checkpoint(base + "/uc?id=AAA&export=download")["epoch"] == 11


def test_downloaded_html_page_is_refused_and_not_cached(tmp_path, monkeypatch, http_files):
    base, files = http_files
    url = base + "/file/d/XYZ/view?usp=sharing"
    files["/file/d/XYZ/view?usp=sharing"] = _DRIVE_PAGE
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(CheckpointError, match=r"XYZ/view\?usp=sharing.* an HTML page"):
        load_checkpoint(url)
    assert os.listdir(tmp_path / "hub" / "checkpoints") == []
    # Once the server sends the file, the same URL loads (nothing bad was left in the cache).
    files["/file/d/XYZ/view?usp=sharing"] = _bytes_of(_original_format(epoch=4), tmp_path)
    assert load_checkpoint(url)["epoch"] == 4


def test_failed_download_names_the_url(tmp_path, monkeypatch, http_files):
    base, _ = http_files
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(CheckpointError, match=r"could not download checkpoint http://127.0.0.1:\d+/gone.pth"):
        load_checkpoint(base + "/gone.pth")


# --- aliases ---------------------------------------------------------------------------------------


class _SharedHead(nn.Module):
    """Two names for one module, as the refine decoder's bbox_embed is also transformer.decoder.bbox_embed."""

    def __init__(self):
        super().__init__()
        self.bbox_embed = nn.Linear(4, 4)
        self.decoder = nn.Module()
        self.decoder.bbox_embed = self.bbox_embed
        self.query_embed = nn.Embedding(3, 4)


def test_missing_report_resolves_aliases(capsys):
    src = _SharedHead()
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("decoder.")}
    dst = _SharedHead()
    report = load_model_state(dst, state)
    assert report.missing == [] and report.clean
    assert torch.equal(dst.decoder.bbox_embed.weight, src.bbox_embed.weight)
    assert "missing" not in capsys.readouterr().out
    # A key whose every alias is absent is still missing.
    report = load_model_state(_SharedHead(), {k: v for k, v in state.items() if "bbox_embed" not in k})
    assert sorted(report.missing) == ["bbox_embed.bias", "bbox_embed.weight", "decoder.bbox_embed.bias",
                                      "decoder.bbox_embed.weight"]


# --- checkpoints of another architecture -----------------------------------------------------------

TINY = tiny_flags("--enc_layers", "2", "--dec_layers", "2")


def _tiny_args(*extra: str) -> argparse.Namespace:
    from util.args import get_args_parser

    return argparse.ArgumentParser(parents=[get_args_parser()]).parse_args(TINY + list(extra))


def _tiny_checkpoint(*flags: str, with_args: bool = True) -> dict:
    from models import build_model

    args = _tiny_args(*flags)
    model, _, _ = build_model(args)
    checkpoint = {"model": model.state_dict(), "epoch": 0}
    if with_args:
        checkpoint["args"] = args
    return checkpoint


def _resume_into(checkpoint: dict, tmp_path, *flags: str):
    """main._resume of ``checkpoint`` into a model built from ``flags``; returns that model."""
    import main as main_module
    from models import build_model

    path = str(tmp_path / "ckpt.pth")
    torch.save(checkpoint, path)
    args = _tiny_args("--resume", path, *flags)
    model, _, _ = build_model(args)
    optimizer, scheduler = main_module.build_optimizer(model, args)
    main_module._resume(args, model, optimizer, scheduler, None)
    return model


def test_two_stage_checkpoint_into_base_config_stops_naming_each_flag(tmp_path):
    checkpoint = _tiny_checkpoint("--with_box_refine", "--two_stage")
    with pytest.raises(CheckpointError) as info:
        _resume_into(checkpoint, tmp_path, "--eval")
    message = str(info.value)
    assert "ckpt.pth" in message and "\n" not in message
    assert "--with_box_refine (checkpoint True, this run False)" in message
    assert "--two_stage (checkpoint True, this run False)" in message
    assert "pass --with_box_refine --two_stage" in message
    assert "--allow_partial_load" in message and "test.py" in message
    # Training from it is no resume either.
    with pytest.raises(CheckpointError, match="--two_stage"):
        _resume_into(checkpoint, tmp_path)


def test_every_value_difference_is_named_with_the_flag_to_pass(tmp_path):
    checkpoint = _tiny_checkpoint("--bf", "1", "--insert_idx", "0", "1", "--share_bf", "0")
    with pytest.raises(CheckpointError) as info:  # training: the BatchFormer's flags count too
        _resume_into(checkpoint, tmp_path, "--position_embedding", "learned")
    message = str(info.value)
    assert "--position_embedding (checkpoint sine, this run learned)" in message
    assert "--bf (checkpoint 1, this run 0)" in message
    assert "pass --position_embedding sine --bf 1 --share_bf 0 --insert_idx 0 1" in message
    # Flags the other way round: the run has a flag the checkpoint lacks.
    expected = r"--with_box_refine \(checkpoint False, this run True\).*drop --with_box_refine"
    with pytest.raises(CheckpointError, match=expected):
        _resume_into(_tiny_checkpoint(), tmp_path, "--eval", "--with_box_refine")


def test_matching_architecture_loads_and_numpy_values_compare_equal(tmp_path):
    import numpy as np

    checkpoint = _tiny_checkpoint()
    saved = checkpoint["args"]
    saved.hidden_dim, saved.dilation = np.int64(32), np.bool_(False)
    saved.position_embedding_scale = np.float64(saved.position_embedding_scale)
    model = _resume_into(checkpoint, tmp_path, "--eval")
    for k, v in checkpoint["model"].items():
        assert torch.equal(model.state_dict()[k], v)


def test_flags_a_checkpoint_predates_count_as_their_defaults(tmp_path):
    """Published Deformable DETR checkpoints record no BatchFormer flags: they were trained without one."""
    checkpoint = _tiny_checkpoint()
    for flag in ("bf", "share_bf", "insert_idx", "bt_num_layers", "eval_bf"):
        delattr(checkpoint["args"], flag)
    _resume_into(checkpoint, tmp_path, "--eval")
    _resume_into(checkpoint, tmp_path, "--eval", "--bf", "1")  # skipped at inference
    with pytest.raises(CheckpointError, match=r"--bf \(checkpoint 0, this run 1\)"):
        _resume_into(checkpoint, tmp_path, "--eval", "--bf", "1", "--eval_bf")


def test_batchformer_layout_flags_do_not_matter_without_a_batchformer(tmp_path):
    checkpoint = _tiny_checkpoint()
    checkpoint["args"].share_bf, checkpoint["args"].insert_idx = 0, [1]
    _resume_into(checkpoint, tmp_path, "--eval")


def test_allow_partial_load_opts_out_and_still_reports(tmp_path, capsys):
    checkpoint = _tiny_checkpoint("--with_box_refine", "--two_stage")
    model = _resume_into(checkpoint, tmp_path, "--eval", "--allow_partial_load")
    out = capsys.readouterr().out
    assert "--two_stage (checkpoint True, this run False)" in out
    assert "query_embed.weight" in out  # left random, and said so
    key = "class_embed.0.weight"
    assert torch.equal(model.state_dict()[key], checkpoint["model"][key])


def test_missing_weights_stop_eval_of_a_checkpoint_without_args(tmp_path):
    checkpoint = _tiny_checkpoint("--with_box_refine", "--two_stage", with_args=False)
    expected = r"ckpt.pth lacks 3 weight tensors .*reference_points.*query_embed.weight"
    with pytest.raises(CheckpointError, match=expected):
        _resume_into(checkpoint, tmp_path, "--eval")


def test_batchformer_weights_may_be_missing_unless_evaluated_with_it(tmp_path, capsys):
    """A BatchFormer is skipped at inference: a plain checkpoint evaluates with --bf 1, not with --eval_bf."""
    checkpoint = _tiny_checkpoint(with_args=False)
    _resume_into(checkpoint, tmp_path, "--eval", "--bf", "1")
    assert "transformer.bf." in capsys.readouterr().out
    with pytest.raises(CheckpointError, match=r"lacks .*transformer.bf."):
        _resume_into(checkpoint, tmp_path, "--eval", "--bf", "1", "--eval_bf")


def test_base_checkpoint_into_box_refine_reports_no_aliased_key(tmp_path, capsys):
    """transformer.decoder.bbox_embed.i is bbox_embed.i under a second name: loading one loads both."""
    checkpoint = _tiny_checkpoint(with_args=False)
    model = _resume_into(checkpoint, tmp_path, "--eval", "--with_box_refine")
    assert "missing" not in capsys.readouterr().out
    for i in range(2):
        assert torch.equal(model.state_dict()[f"transformer.decoder.bbox_embed.{i}.layers.0.weight"],
                           checkpoint["model"][f"bbox_embed.{i}.layers.0.weight"])


def test_directory_and_unreadable_paths_are_named(tmp_path, monkeypatch):
    (tmp_path / "exps").mkdir()
    with pytest.raises(CheckpointError, match=r"exps.* is a directory"):
        load_checkpoint(str(tmp_path / "exps"))
    path = tmp_path / "checkpoint.pth"
    save_checkpoint({"w": torch.ones(1)}, str(path))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(ckpt.torch, "load", denied)
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*checkpoint.pth.*Permission denied"):
        load_checkpoint(str(path))


def test_frozen_detector_must_fit_the_mask_model_except_for_masks(tmp_path):
    """--frozen_weights stays frozen: a detector of another architecture would stay random for good."""
    import main as main_module
    from models import build_model

    levels = ["--num_feature_levels", "3"]
    detector = _tiny_checkpoint(*levels)
    path = str(tmp_path / "detector.pth")
    torch.save(detector, path)
    args = _tiny_args(*levels, "--masks", "--frozen_weights", path)
    model, _, _ = build_model(args)
    main_module._load_frozen_weights(model, path, args)  # masks=False in the detector's args is expected
    for k, v in detector["model"].items():
        assert torch.equal(model.detr.state_dict()[k], v)
    torch.save(_tiny_checkpoint(*levels, "--with_box_refine", "--two_stage"), path)
    with pytest.raises(CheckpointError, match=r"--frozen_weights .*detector.pth .*--two_stage \(checkpoint"):
        main_module._load_frozen_weights(model, path, args)
    del detector["args"]
    detector["model"] = {k: v for k, v in detector["model"].items() if not k.startswith("query_embed")}
    torch.save(detector, path)
    with pytest.raises(CheckpointError, match=r"detector.pth lacks 1 weight tensors .*query_embed.weight"):
        main_module._load_frozen_weights(model, path, args)


def test_partial_load_for_training_starts_afresh_instead_of_resuming(tmp_path, capsys):
    """The saved optimizer moments belong to the tensors that did not load: they must not be restored."""
    import main as main_module
    from models import build_model

    args = _tiny_args("--num_queries", "12")
    model, _, _ = build_model(args)
    optimizer, scheduler = main_module.build_optimizer(model, args)
    for p in model.parameters():
        p.grad = torch.ones_like(p) if p.requires_grad else None
    optimizer.step()
    scheduler.step()
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "lr_scheduler": scheduler.state_dict(), "epoch": 3, "args": args}
    path = str(tmp_path / "ckpt.pth")
    torch.save(checkpoint, path)
    args = _tiny_args("--resume", path, "--allow_partial_load")
    model, _, _ = build_model(args)
    optimizer, scheduler = main_module.build_optimizer(model, args)
    main_module._resume(args, model, optimizer, scheduler, None)
    assert args.start_epoch == 0 and optimizer.state_dict()["state"] == {}
    assert "query_embed.weight checkpoint [12, 64] vs model [10, 64]" in capsys.readouterr().out
    key = "class_embed.0.weight"
    assert torch.equal(model.state_dict()[key], checkpoint["model"][key])


def test_args_recorded_as_a_dict_are_compared_and_other_kinds_ignored(tmp_path):
    checkpoint = _tiny_checkpoint("--with_box_refine")
    checkpoint["args"] = vars(checkpoint["args"])
    with pytest.raises(CheckpointError, match=r"--with_box_refine \(checkpoint True, this run False\)"):
        _resume_into(checkpoint, tmp_path, "--eval")
    checkpoint["args"] = "resnet50 deformable"  # neither a Namespace nor a dict: only the keys are checked
    _resume_into(checkpoint, tmp_path, "--eval", "--with_box_refine")


def _overwrite_inside_storage(path, nbytes: int = 4096) -> str:
    """Overwrite ``nbytes`` in the middle of the largest tensor storage of a torch.save zip file, as a
    failing disk or a bad copy would (the archive's structure stays intact); returns the member's name."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        member = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    assert member.file_size > 2 * nbytes
    with open(path, "r+b") as f:
        f.seek(member.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
        f.seek(member.header_offset + 30 + name_len + extra_len + member.file_size // 2)
        f.write(b"\xff\xff\x7f\x7f" * (nbytes // 4))  # float32 3.4e38
    return member.filename


def test_a_checkpoint_damaged_inside_a_weight_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint({"model": {"w": torch.randn(4096)}, "epoch": 3}, str(path))
    _overwrite_inside_storage(path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(str(path))
    message = str(info.value)
    assert f"checkpoint '{path}' is corrupt" in message and "\n" not in message


def test_checkpoints_without_checksums_still_load(tmp_path):
    """The legacy format (torch < 1.6, some published checkpoints) has no checksum to verify."""
    path = tmp_path / "legacy.pth"
    torch.save({"model": {"w": torch.ones(3)}}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(str(path))["model"]["w"], torch.ones(3))


# The flags an evaluation of a checkpoint takes from the command line, not from the checkpoint, and why.
NOT_RECORDED = {
    # where the data, the weights and the outputs are; which process, device and loader
    **dict.fromkeys(("coco_path", "coco_panoptic_path", "toy_root", "toy_panoptic_root", "train_json",
                     "train_images", "val_json", "val_images", "max_image_pixels", "output_dir", "resume",
                     "frozen_weights", "backbone_weights", "no_pretrained_backbone", "device", "num_workers",
                     "cache_mode", "seed"), "where and how to run"),
    # how much to evaluate, how to print it, with which COCOeval implementation (the same stats)
    **dict.fromkeys(("eval", "max_eval_iters", "print_freq", "print_all_terms", "coco_eval_backend",
                     "batch_size", "amp", "allow_partial_load", "remove_difficult", "tensorboard"),
                    "the run's choice"),
    # training only: no effect on a model in eval mode
    **dict.fromkeys(("lr", "lr_backbone_names", "lr_backbone", "lr_linear_proj_names", "lr_linear_proj_mult",
                     "weight_decay", "epochs", "lr_drop", "lr_drop_epochs", "clip_max_norm", "sgd",
                     "start_epoch", "max_iters_per_epoch", "eval_every", "find_unused_parameters",
                     "dropout", "drop_path", "use_checkpoint", "bf_lr", "bf_weight_decay", "finetune"),
                    "training only"),
}


def test_every_flag_is_either_taken_from_the_checkpoint_or_the_runs_choice():
    """A new flag must be placed: in util.checkpoint's RECORDED_FLAGS if it changes what an evaluation
    computes or prints, else here with the reason."""
    from util.args import get_args_parser

    flags = {action.dest for action in get_args_parser()._actions}
    recorded = ckpt.RECORDED_FLAGS
    assert len(set(recorded)) == len(recorded)
    assert not set(recorded) & set(NOT_RECORDED)
    assert flags - set(NOT_RECORDED) - set(recorded) == set(), "place each flag: recorded or not"
    assert set(recorded) - flags == {"class_names"}  # main.py records it from the data: no flag


def test_evaluating_with_other_evaluation_flags_than_the_checkpoints_run_is_said(tmp_path, capsys):
    """main.py --eval takes its flags from the command line (the public behaviour): where they change what
    the checkpoint's own evaluation computed, the user hears it, and how test.py would take them."""
    checkpoint = _tiny_checkpoint("--cls_loss_coef", "3", "--no_aux_loss")
    _resume_into(checkpoint, tmp_path, "--eval")
    out = capsys.readouterr().out
    assert "--cls_loss_coef (checkpoint 3.0, this run 2)" in out
    assert "--no_aux_loss (checkpoint True, this run False)" in out
    assert "test.py" in out
    _resume_into(checkpoint, tmp_path, "--eval", "--cls_loss_coef", "3", "--no_aux_loss")
    assert "cls_loss_coef" not in capsys.readouterr().out


def test_training_from_a_weights_only_checkpoint_says_it_starts_afresh(tmp_path, capsys):
    """No optimizer, schedule or epoch to restore (a published or converted checkpoint): said, not silent."""
    checkpoint = _tiny_checkpoint()
    del checkpoint["epoch"]
    _resume_into(checkpoint, tmp_path, "--start_epoch", "2")
    out = capsys.readouterr().out
    assert "holds no optimizer, lr_scheduler or epoch" in out and "starts at epoch 2" in out, out


def test_a_frozen_detector_for_batchformer_training_must_hold_its_batchformer(tmp_path):
    """--frozen_weights stays frozen: in --bf training the BatchFormer runs, and would run random for good."""
    import main as main_module
    from models import build_model

    flags = ["--num_feature_levels", "3", "--bf", "1"]
    detector = _tiny_checkpoint(*flags, with_args=False)
    detector["model"] = {k: v for k, v in detector["model"].items() if ".bf." not in k}
    path = str(tmp_path / "detector.pth")
    torch.save(detector, path)
    args = _tiny_args(*flags, "--masks", "--frozen_weights", path)
    model, _, _ = build_model(args)
    with pytest.raises(CheckpointError, match=r"detector.pth lacks \d+ weight tensors .*transformer\.bf\."):
        main_module._load_frozen_weights(model, path, args)
    args.eval = True  # evaluating, the BatchFormer is skipped: nothing missing that runs
    main_module._load_frozen_weights(model, path, args)
