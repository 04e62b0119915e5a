"""util/finetune.py (main.py --finetune): what fits loads, the classification heads start as a fresh model's,
everything else that does not fit is a one-line error, a BatchFormer on one side only is said."""
import argparse
import math

import pytest
import torch

from tests.tiny_model import tiny_flags
from util.args import get_args_parser
from util.checkpoint import CheckpointError
from util.finetune import finetune_from, is_classification_key

COCO_SHAPED = ("--num_classes", "91", "--with_box_refine", "--two_stage", "--dec_layers", "2")
RUN = ("--with_box_refine", "--two_stage", "--dec_layers", "2")  # the toy set: 20 outputs, 5 names


def _args(*flags) -> argparse.Namespace:
    args = argparse.ArgumentParser(parents=[get_args_parser()]).parse_args(tiny_flags(*flags))
    from datasets import resolve_classes

    resolve_classes(args)  # as main.py does before building: num_classes and class_names of the data
    return args


def _built(args, seed: int = 0):
    from models import build_model

    torch.manual_seed(seed)
    return build_model(args)[0]


def _trained(path, *flags, names=None, drop=(), add=None) -> dict:
    """A checkpoint of ``flags`` whose every weight differs from a fresh model's, as a trained one's would."""
    args = _args(*flags)
    if names is not None:
        args.class_names = names
    model = _built(args, seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 + torch.rand_like(p))
    state = {k: v for k, v in model.state_dict().items() if k not in drop}
    state.update(add or {})
    torch.save({"model": state, "args": args, "epoch": 49, "optimizer": {}, "lr_scheduler": {}}, path)
    return state


def test_everything_but_the_heads_loads_and_the_heads_start_as_a_fresh_models(tmp_path, capsys):
    saved = _trained(tmp_path / "coco.pth", *COCO_SHAPED)
    args = _args(*RUN, "--finetune", str(tmp_path / "coco.pth"))
    model, fresh = _built(args), _built(args).state_dict()
    lines = finetune_from(model, args)
    state = model.state_dict()
    heads = [k for k in state if is_classification_key(k)]
    assert len(heads) == 12  # 2 decoder layers + the encoder's, weight and bias, and their decoder aliases
    for key, value in state.items():
        expected = fresh[key] if key in heads else saved[key]
        assert torch.equal(value, expected), key
    prior = -math.log((1 - 0.01) / 0.01)  # the focal detectors' prior-probability bias
    assert torch.allclose(state["class_embed.2.bias"], torch.full((20,), prior))
    assert lines[0] == (f"--finetune {tmp_path / 'coco.pth'}: loaded what fits; re-initialised for this "
                        "data set's classes (20 outputs), as a freshly built model initialises them: "
                        "class_embed.*, transformer.decoder.class_embed.* (6 tensors)")
    assert "epoch 0 with a fresh optimizer" in lines[-1]
    assert capsys.readouterr().out == ""  # nothing else: no report of keys left at init


def test_a_checkpoint_of_these_very_classes_keeps_its_heads(tmp_path):
    saved = _trained(tmp_path / "toy.pth", *RUN)
    args = _args(*RUN, "--finetune", str(tmp_path / "toy.pth"))
    model = _built(args)
    assert "the classification heads too" in finetune_from(model, args)[0]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_the_same_width_with_other_class_names_gets_fresh_heads(tmp_path):
    saved = _trained(tmp_path / "other.pth", *RUN, names={1: "cat", 2: "dog"})
    args = _args(*RUN, "--finetune", str(tmp_path / "other.pth"))
    model = _built(args)
    assert "re-initialised" in finetune_from(model, args)[0]
    assert not torch.equal(model.state_dict()["class_embed.0.weight"], saved["class_embed.0.weight"])


def test_another_architecture_is_one_line_naming_the_flag_unless_partial_loads_are_allowed(tmp_path):
    _trained(tmp_path / "coco.pth", *COCO_SHAPED, "--num_queries", "12")
    args = _args(*RUN, "--finetune", str(tmp_path / "coco.pth"))
    with pytest.raises(CheckpointError, match=r"--num_queries \(checkpoint 12, this run 10\)") as info:
        finetune_from(_built(args), args)
    assert "\n" not in str(info.value)
    args.allow_partial_load = True
    finetune_from(_built(args), args)


@pytest.mark.parametrize("drop, add, named", [
    (("input_proj.0.0.weight",), None,
     "missing keys (1, left at their initial values): input_proj.0.0.weight"),
    ((), {"extra.weight": torch.zeros(2)}, "unexpected keys (1, ignored): extra.weight"),
])
def test_other_tensors_that_do_not_fit_are_one_line_naming_them(tmp_path, drop, add, named):
    _trained(tmp_path / "coco.pth", *COCO_SHAPED, drop=drop, add=add)
    args = _args(*RUN, "--finetune", str(tmp_path / "coco.pth"))
    with pytest.raises(CheckpointError) as info:
        finetune_from(_built(args), args)
    assert "does not fit this model beyond its classification heads" in str(info.value)
    assert named in str(info.value) and "\n" not in str(info.value)


def test_a_batchformer_added_by_the_flags_starts_at_init(tmp_path):
    saved = _trained(tmp_path / "coco.pth", *COCO_SHAPED)
    args = _args(*RUN, "--bf", "1", "--finetune", str(tmp_path / "coco.pth"))
    model, fresh = _built(args), _built(args).state_dict()
    lines = finetune_from(model, args)
    bf = [k for k in model.state_dict() if ".bf." in k]
    assert bf and all(torch.equal(model.state_dict()[k], fresh[k]) for k in bf)
    assert torch.equal(model.state_dict()["input_proj.0.0.weight"], saved["input_proj.0.0.weight"])
    assert any(f"has no BatchFormer: the {len(bf)} BatchFormer tensors of --bf 1 start at their initial "
               "values" in line for line in lines)


def test_a_checkpoints_batchformer_is_left_out_of_a_run_without_one(tmp_path):
    _trained(tmp_path / "bf.pth", *COCO_SHAPED, "--bf", "1")
    args = _args(*RUN, "--finetune", str(tmp_path / "bf.pth"))
    lines = finetune_from(_built(args), args)
    assert any("BatchFormer tensors are left out (this run has no --bf" in line for line in lines)


def test_a_hugging_face_folder_fine_tunes(tmp_path):
    from util.checkpoint import load_checkpoint
    from util.hf.convert import save_hf_folder

    saved = _trained(tmp_path / "coco.pth", *COCO_SHAPED)
    save_hf_folder(load_checkpoint(str(tmp_path / "coco.pth")), str(tmp_path / "hf"))
    args = _args(*RUN, "--finetune", str(tmp_path / "hf"))
    model = _built(args)
    assert "re-initialised" in finetune_from(model, args)[0]
    assert torch.allclose(model.state_dict()["input_proj.0.0.weight"], saved["input_proj.0.0.weight"])


def test_a_softmax_detectors_head_starts_as_its_own_fresh_model_starts_it(tmp_path, monkeypatch):
    """DETR's kind (num_classes + 1 logits, no prior bias), through the detector registered by
    tests/models/test_new_detector.py: the registry's build initialises the head, --finetune keeps that."""
    from models.detectors import DETECTORS
    from tests.models.test_new_detector import TINY_DETECTOR

    monkeypatch.setitem(DETECTORS, "tiny_detr", TINY_DETECTOR)
    saved = _trained(tmp_path / "coco.pth", "--meta_arch", "tiny_detr", "--num_classes", "91")
    args = _args("--meta_arch", "tiny_detr", "--finetune", str(tmp_path / "coco.pth"))
    model, fresh = _built(args), _built(args).state_dict()
    lines = finetune_from(model, args)
    state = model.state_dict()
    assert saved["class_embed.weight"].shape == (92, 32) and state["class_embed.weight"].shape == (21, 32)
    assert all(torch.equal(v, fresh[k] if is_classification_key(k) else saved[k]) for k, v in state.items())
    assert "(21 outputs), as a freshly built model initialises them: class_embed.* (2 tensors)" in lines[0]
