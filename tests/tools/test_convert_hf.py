"""tools/convert_hf.py and util.hf against transformers' Deformable DETR, an implementation no one here
wrote: random weights, built from a config (nothing downloaded), converted, and the same padded batch
through both models; and our checkpoints of a grid of class and layer counts through transformers and
back (issue 23: every folder we write loads in ours and in transformers)."""
import json
import os
import re
import shutil

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (a test dependency in requirements.txt: "
                           "`make deps`); the Hugging Face conversion tests need it as their reference")
pytest.importorskip("safetensors", reason="safetensors is not installed (requirements.txt: `make deps`)")

from safetensors.torch import load_file, save_file  # noqa: E402

from main import get_args_parser  # noqa: E402
from models import build_model  # noqa: E402
from models.ops.functions import extension  # noqa: E402
from tests.hf_models import randomized  # noqa: E402
from tests.tiny_model import tiny_flags  # noqa: E402
from tools import convert_hf  # noqa: E402
from util.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from util.hf.convert import (  # noqa: E402
    HFCheckpointError,
    hf_to_ours,
    load_checkpoint_or_folder,
    load_hf_checkpoint,
    save_hf_folder,
)
from util.misc import nested_tensor_from_tensor_list  # noqa: E402

# Small where the config allows; the backbone is a full ResNet-50 (ours has no smaller bottleneck one).
SMALL = dict(d_model=64, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
             encoder_attention_heads=8, decoder_attention_heads=8, encoder_n_points=2, decoder_n_points=2,
             num_queries=12, two_stage_num_proposals=12, num_labels=91)
VARIANTS = {
    "base": {},
    "single_scale": {"num_feature_levels": 1},
    "refine": {"with_box_refine": True},
    "two_stage": {"with_box_refine": True, "two_stage": True},
    "learned_positions": {"num_feature_levels": 1, "position_embedding_type": "learned"},
}
BACKENDS = ["cpp", "pytorch"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(variant: str, naming: str = "resnet", **extra):
    levels = VARIANTS[variant].get("num_feature_levels", 4)
    fields = {**SMALL, **VARIANTS[variant], **extra}
    if naming == "timm":  # the form of the published config.json files
        fields.update(use_timm_backbone=True, backbone="resnet50", use_pretrained_backbone=False)
        return transformers.DeformableDetrConfig.from_dict(fields)
    stages = ["stage2", "stage3", "stage4"] if levels > 1 else ["stage4"]
    return transformers.DeformableDetrConfig(backbone_config=transformers.ResNetConfig(out_features=stages),
                                             **fields)


def _hf_model(variant: str, naming: str = "resnet", **extra):
    torch.manual_seed(0)
    return randomized(transformers.DeformableDetrForObjectDetection(_config(variant, naming, **extra)))


def _batch():
    """Two sizes in one batch: the second image is padded bottom and right."""
    g = torch.Generator().manual_seed(1)
    images = [torch.randn(3, 64, 80, generator=g), torch.randn(3, 40, 56, generator=g)]
    return nested_tensor_from_tensor_list(images)


def _assert_same_files(written, saved):
    """The tensors save_pretrained wrote, and besides them only the per-layer class heads transformers 5
    leaves out of a +refine model's file (it ties them to head 0; transformers 4 needs them)."""
    written, saved = load_file(written / "model.safetensors"), load_file(saved / "model.safetensors")
    assert set(saved) <= set(written)
    assert all(torch.equal(written[k], saved[k]) for k in saved)
    for key in set(written) - set(saved):
        head_zero = re.sub(r"^class_embed\.\d+\.", "class_embed.0.", key)
        assert head_zero != key and torch.equal(written[key], saved[head_zero]), key


def _ours(checkpoint):
    model, _, postprocessors = build_model(checkpoint["args"])
    model.load_state_dict(checkpoint["model"], strict=True)
    return model.eval(), postprocessors["bbox"]


def _use_backend(monkeypatch, backend: str):
    if backend == "cpp" and "cpu" not in extension.compiled_device_types():
        pytest.skip("the compiled op is not built (`make op`)")
    monkeypatch.setenv("MSDA_BACKEND", backend)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_same_outputs_and_round_trip(variant, tmp_path, monkeypatch):
    hf = _hf_model(variant)
    hf.save_pretrained(tmp_path / "hf")
    checkpoint = load_checkpoint_or_folder(str(tmp_path / "hf"))  # the --resume / test.py path
    args = checkpoint["args"]
    assert (args.hidden_dim, args.enc_layers, args.dec_layers, args.num_queries) == (64, 1, 2, 12)
    assert args.num_feature_levels == VARIANTS[variant].get("num_feature_levels", 4)
    assert args.with_box_refine == ("refine" in variant or variant == "two_stage")
    assert args.two_stage == (variant == "two_stage") and args.dataset_file == "coco"
    model, postprocess = _ours(checkpoint)

    samples = _batch()
    with torch.no_grad():
        theirs = hf(pixel_values=samples.tensors, pixel_mask=(~samples.mask).long())
    sizes = torch.tensor([[64, 80], [40, 56]])
    processor = transformers.DeformableDetrImageProcessor()
    expected = processor.post_process_object_detection(theirs, threshold=0.0, target_sizes=sizes, top_k=100)
    for backend in BACKENDS:
        _use_backend(monkeypatch, backend)
        with torch.no_grad():
            out = model(samples)
        torch.testing.assert_close(out["pred_logits"], theirs.logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(out["pred_boxes"], theirs.pred_boxes, atol=1e-4, rtol=0)
        # Earlier decoder layers through transformers' own heads, and the two-stage proposals.
        for layer, aux in enumerate(out["aux_outputs"]):
            with torch.no_grad():
                logits = hf.class_embed[layer](theirs.intermediate_hidden_states[:, layer])
            torch.testing.assert_close(aux["pred_logits"], logits, atol=1e-4, rtol=0)
        if variant == "two_stage":
            torch.testing.assert_close(out["enc_outputs"]["pred_logits"], theirs.enc_outputs_class,
                                       atol=1e-4, rtol=0)
            torch.testing.assert_close(out["enc_outputs"]["pred_boxes"],
                                       theirs.enc_outputs_coord_logits.sigmoid(), atol=1e-4, rtol=0)
        for mine, ref in zip(postprocess(out, sizes), expected):
            assert torch.equal(mine["labels"], ref["labels"])
            torch.testing.assert_close(mine["scores"], ref["scores"], atol=1e-4, rtol=0)
            torch.testing.assert_close(mine["boxes"], ref["boxes"], atol=1e-3, rtol=0)

    # Back: the very file save_pretrained wrote, and a folder from_pretrained loads completely.
    save_hf_folder(checkpoint, str(tmp_path / "back"))
    _assert_same_files(tmp_path / "back", tmp_path / "hf")
    if variant == "refine":
        assert "class_embed.1.weight" in load_file(tmp_path / "back" / "model.safetensors")
    reloaded, info = transformers.DeformableDetrForObjectDetection.from_pretrained(
        tmp_path / "back", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    original = hf.state_dict()
    assert sorted(reloaded.state_dict()) == sorted(original)
    assert all(torch.equal(v, original[k]) for k, v in reloaded.state_dict().items())


def test_in_memory_names_of_transformers_5(tmp_path):
    """model.state_dict() names (``model.backbone.model``, ``mlp.fc1``, ``o_proj``) convert alike."""
    hf = _hf_model("base")
    hf.save_pretrained(tmp_path / "saved")
    save_file({k: v.clone() for k, v in hf.state_dict().items()}, tmp_path / "saved" / "model.safetensors")
    runtime = load_hf_checkpoint(str(tmp_path / "saved"))
    hf.save_pretrained(tmp_path / "again")
    reference = load_hf_checkpoint(str(tmp_path / "again"))
    assert sorted(runtime["model"]) == sorted(reference["model"])
    assert all(torch.equal(runtime["model"][k], reference["model"][k]) for k in reference["model"])


def _timm_name(name: str) -> str:
    """transformers' ResNet backbone name -> timm's (torchvision's), written out here independently."""
    prefix = "model.backbone.conv_encoder.model."
    if not name.startswith(prefix):
        return name
    body = name[len(prefix):]
    stem = re.fullmatch(r"embedder\.embedder\.(convolution|normalization)\.(\w+)", body)
    if stem:
        return prefix + ("conv1." if stem.group(1) == "convolution" else "bn1.") + stem.group(2)
    stage, block, part, index, kind, leaf = re.fullmatch(
        r"encoder\.stages\.(\d)\.layers\.(\d+)\.(shortcut|layer\.(\d))\.(convolution|normalization)\.(\w+)",
        body).groups()
    if part == "shortcut":
        module = "downsample.0" if kind == "convolution" else "downsample.1"
    else:
        module = ("conv" if kind == "convolution" else "bn") + str(int(index) + 1)
    return f"{prefix}layer{int(stage) + 1}.{block}.{module}.{leaf}"


def test_pytorch_model_bin(tmp_path):
    """The older weights file, every tied name present (as hub files of transformers 4 hold them)."""
    hf = _hf_model("refine")
    hf.save_pretrained(tmp_path / "safetensors")
    reference = load_hf_checkpoint(str(tmp_path / "safetensors"))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "safetensors" / "config.json").read_text())
    torch.save({k: v.clone() for k, v in hf.state_dict().items()}, tmp_path / "bin" / "pytorch_model.bin")
    from_bin = load_hf_checkpoint(str(tmp_path / "bin"))
    assert sorted(from_bin["model"]) == sorted(reference["model"])
    assert all(torch.equal(from_bin["model"][k], reference["model"][k]) for k in reference["model"])


def test_timm_backbone_naming_renamed(tmp_path):
    """The published checkpoints' backbone naming (timm's resnet50, config use_timm_backbone/backbone),
    without timm: transformers' ResNet weights renamed convert to the same model, and go back out as
    they came in."""
    hf = _hf_model("base")
    hf.save_pretrained(tmp_path / "resnet")
    native = load_hf_checkpoint(str(tmp_path / "resnet"))
    timm_folder = tmp_path / "timm"
    timm_folder.mkdir()
    state = load_file(tmp_path / "resnet" / "model.safetensors")
    save_file({_timm_name(k): v for k, v in state.items()}, timm_folder / "model.safetensors")
    config = json.loads((tmp_path / "resnet" / "config.json").read_text())
    config.update(backbone_config=None, use_timm_backbone=True, backbone="resnet50")
    (timm_folder / "config.json").write_text(json.dumps(config))
    renamed = load_hf_checkpoint(str(timm_folder))
    assert sorted(renamed["model"]) == sorted(native["model"])
    assert all(torch.equal(renamed["model"][k], native["model"][k]) for k in native["model"])
    save_hf_folder(renamed, str(tmp_path / "back"), naming="timm")
    _assert_same_files(tmp_path / "back", timm_folder)


@pytest.mark.parametrize("variant, extra", [("base", {}), ("single_scale", {"dilation": True})],
                         ids=["multi_scale", "dc5"])
def test_timm_backbone_naming(tmp_path, monkeypatch, variant, extra):
    """The same with transformers' own timm-backed model, where timm is installed; DC5 (--dilation) is
    timm-only in transformers."""
    pytest.importorskip("timm", reason="transformers builds its timm backbone only with timm installed")
    hf = _hf_model(variant, naming="timm", **extra)
    hf.save_pretrained(tmp_path / "hf")
    assert "model.backbone.conv_encoder.model.layer1.0.conv1.weight" in load_file(
        tmp_path / "hf" / "model.safetensors")
    checkpoint = load_hf_checkpoint(str(tmp_path / "hf"))
    assert checkpoint["args"].dilation == bool(extra)
    model, _ = _ours(checkpoint)
    samples = _batch()
    _use_backend(monkeypatch, "pytorch")
    with torch.no_grad():
        theirs = hf(pixel_values=samples.tensors, pixel_mask=(~samples.mask).long())
        out = model(samples)
    torch.testing.assert_close(out["pred_logits"], theirs.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(out["pred_boxes"], theirs.pred_boxes, atol=1e-4, rtol=0)
    save_hf_folder(checkpoint, str(tmp_path / "back"), naming="timm")
    _assert_same_files(tmp_path / "back", tmp_path / "hf")
    reloaded, info = transformers.DeformableDetrForObjectDetection.from_pretrained(
        tmp_path / "back", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert reloaded.config.backbone_config.output_stride == (16 if extra else None)


def test_refine_class_heads_per_layer_are_kept(tmp_path):
    """transformers ties a +refine model's class heads to the first; the published models have one per
    layer (docs/design/model.md): distinct heads go out and come back distinct; transformers loads them."""
    hf = _hf_model("refine")
    hf.save_pretrained(tmp_path / "hf")
    checkpoint = load_hf_checkpoint(str(tmp_path / "hf"))
    state = dict(checkpoint["model"])
    state["class_embed.1.weight"] = torch.randn_like(state["class_embed.0.weight"])
    save_hf_folder({"model": state, "args": checkpoint["args"]}, str(tmp_path / "back"))
    assert "class_embed.1.weight" in load_file(tmp_path / "back" / "model.safetensors")
    back = load_hf_checkpoint(str(tmp_path / "back"))
    assert torch.equal(back["model"]["class_embed.1.weight"], state["class_embed.1.weight"])
    reloaded = transformers.DeformableDetrForObjectDetection.from_pretrained(tmp_path / "back")
    assert torch.equal(reloaded.class_embed[1].weight, state["class_embed.1.weight"])


@pytest.fixture(scope="module")
def single_scale_folder(tmp_path_factory):
    """One saved single-scale model, copied by the tests that only read or alter its files."""
    folder = tmp_path_factory.mktemp("single_scale")
    _hf_model("single_scale").save_pretrained(folder)
    return folder


def _folder_with(single_scale_folder, tmp_path, config_changes: dict, tensors=None):
    shutil.copytree(single_scale_folder, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(config_changes)
    (tmp_path / "config.json").write_text(json.dumps(config))
    if tensors is not None:
        state = load_file(tmp_path / "model.safetensors")
        tensors(state)
        save_file(state, tmp_path / "model.safetensors")
    return str(tmp_path)


@pytest.mark.parametrize("changes, field", [
    ({"position_embedding_type": "rotary"}, "position_embedding_type"),
    ({"decoder_ffn_dim": 32}, "decoder_ffn_dim"),
    ({"id2label": {"1": "cat", "2": "dog"}}, "id2label"),
    ({"architectures": ["DeformableDetrModel"]}, "architectures"),
    ({"activation_function": "gelu"}, "activation_function"),
    ({"backbone_config": {"model_type": "swin"}}, "backbone_config.model_type"),
    ({"backbone_config": None, "use_timm_backbone": True, "backbone": "resnet50d"}, "backbone"),
    ({"num_feature_levels": 4}, "backbone_config.out_indices"),
])
def test_refuses_what_we_cannot_represent(single_scale_folder, tmp_path, changes, field):
    with pytest.raises(HFCheckpointError, match=f"config.json: {field} ="):
        load_hf_checkpoint(_folder_with(single_scale_folder, tmp_path / "hf", changes))


def test_refuses_a_partial_load(single_scale_folder, tmp_path):
    extra = _folder_with(single_scale_folder, tmp_path / "extra", {},
                         lambda s: s.update(extra_head=torch.zeros(3)))
    with pytest.raises(HFCheckpointError, match="1 tensors .* no place for: extra_head"):
        load_hf_checkpoint(extra)
    missing = _folder_with(single_scale_folder, tmp_path / "missing", {},
                           lambda s: s.pop("model.level_embed"))
    with pytest.raises(HFCheckpointError, match="lacks model.level_embed"):
        load_hf_checkpoint(missing)


def test_the_file_reader_points_a_folder_to_the_converter(single_scale_folder):
    """util.checkpoint is below the models the conversion builds: it names the way to read a folder."""
    from util.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="is a Hugging Face model folder: read it with "
                                              "util.hf.convert.load_checkpoint_or_folder"):
        load_checkpoint(str(single_scale_folder))


def test_tool_both_directions(single_scale_folder, tmp_path, capsys):
    shutil.copytree(single_scale_folder, tmp_path / "hf")
    assert convert_hf.main(["to-ours", str(tmp_path / "hf"), str(tmp_path / "ours.pth")]) == 0
    ours = load_checkpoint(str(tmp_path / "ours.pth"))
    assert ours["args"].num_feature_levels == 1 and len(ours["model"]) > 300
    assert convert_hf.main(["to-hf", str(tmp_path / "ours.pth"), str(tmp_path / "back")]) == 0
    assert os.path.isfile(tmp_path / "back" / "config.json")
    assert convert_hf.main(["to-ours", str(tmp_path / "nowhere"), str(tmp_path / "x.pth")]) == 1
    assert "convert_hf.py: error:" in capsys.readouterr().err


def _tiny_coco(root):
    """Two small images in COCO's layout, one box each (their category ids within COCO's 91); long and
    thin, so that the evaluation's resize (shorter side 800, longer at most 1333) keeps them small."""
    from PIL import Image

    images, annotations = [], []
    for i, (w, h) in enumerate([(200, 40), (40, 200)], start=1):
        (root / "val2017").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (w, h), (30 * i, 90, 160)).save(root / "val2017" / f"{i:012d}.jpg")
        images.append({"id": i, "file_name": f"{i:012d}.jpg", "width": w, "height": h})
        annotations.append({"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400,
                            "iscrowd": 0})
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}))
    return root


def _assert_test_py_scores_folder_as_file(tmp_path, capsys, notice: str):
    """``test.py --resume tmp_path/hf`` (showing ``notice`` among the flags it takes from the folder)
    writes the detections ``test.py --resume tmp_path/ours.pth`` does."""
    import importlib.util

    # test.py under another name: ``test`` is also the standard library's test package.
    spec = importlib.util.spec_from_file_location("convert_hf_test_py", os.path.join(ROOT, "test.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    run = ["--coco_path", str(_tiny_coco(tmp_path / "coco")), "--device", "cpu", "--num_workers", "0",
           "--batch_size", "1", "--max_eval_iters", "1"]
    script.cli(["--resume", str(tmp_path / "hf"), *run, "--output_dir", str(tmp_path / "from_folder")])
    assert notice in capsys.readouterr().out
    script.cli(["--resume", str(tmp_path / "ours.pth"), *run, "--output_dir", str(tmp_path / "from_file")])
    by_folder = json.loads((tmp_path / "from_folder" / "results_bbox.json").read_text())
    assert by_folder and by_folder == json.loads((tmp_path / "from_file" / "results_bbox.json").read_text())


def test_test_py_evaluates_a_hugging_face_folder(single_scale_folder, tmp_path, capsys):
    """``test.py --resume FOLDER`` builds the folder's architecture and scores as the converted file does."""
    shutil.copytree(single_scale_folder, tmp_path / "hf")
    assert convert_hf.main(["to-ours", str(tmp_path / "hf"), str(tmp_path / "ours.pth")]) == 0
    _assert_test_py_scores_folder_as_file(tmp_path, capsys, "--hidden_dim 64")


# --- our checkpoints through transformers and back: a grid of class counts and layer counts -------------

def _our_checkpoint(path, *flags, class_names=None):
    """A tiny Deformable DETR of ours with random weights (heads included), saved as main.py does."""
    args = get_args_parser().parse_args(tiny_flags(*flags))
    if class_names is not None:
        args.class_names = class_names
    torch.manual_seed(0)
    model = build_model(args)[0]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_checkpoint({"model": model.state_dict(), "args": args}, str(path))
    return model.state_dict()


_COCO_IDS = {"0": "N/A", "1": "person", "12": "N/A", "13": "stop sign", "90": "toothbrush"}
_TOY_IDS = {"0": "N/A", "1": "square", "5": "diamond", "19": "N/A"}  # the toy set names its 5 classes


@pytest.mark.parametrize("flags, class_names, num_classes, id2label", [
    (("--num_classes", "20", "--dec_layers", "2"), None, 20, _TOY_IDS),
    (("--num_classes", "4", "--dec_layers", "2", "--with_box_refine"), {1: "cat", 3: "dog"}, 4,
     {"0": "N/A", "1": "cat", "2": "N/A", "3": "dog"}),
    (("--dataset_file", "coco", "--dec_layers", "1"), None, 91, _COCO_IDS),
    (("--dataset_file", "coco", "--dec_layers", "1", "--with_box_refine"), None, 91, _COCO_IDS),
    (("--dec_layers", "1", "--with_box_refine", "--two_stage"), None, 20, _TOY_IDS),
], ids=["20_classes", "4_named_classes_refine", "coco_1_layer", "coco_1_layer_refine", "1_layer_two_stage"])
def test_every_folder_we_write_loads_in_transformers_and_back_in_ours(tmp_path, flags, class_names,
                                                                     num_classes, id2label):
    state = _our_checkpoint(tmp_path / "ours.pth", *flags, class_names=class_names)
    assert convert_hf.main(["to-hf", str(tmp_path / "ours.pth"), str(tmp_path / "hf")]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert len(config["id2label"]) == num_classes
    assert {k: config["id2label"][k] for k in id2label} == id2label

    reloaded, info = transformers.DeformableDetrForObjectDetection.from_pretrained(
        tmp_path / "hf", output_loading_info=True)
    assert not any(info.values()), info
    theirs = hf_to_ours(reloaded.state_dict(), load_checkpoint(str(tmp_path / "ours.pth"))["args"])
    assert sorted(theirs) == sorted(state) and all(torch.equal(theirs[k], state[k]) for k in state)

    assert convert_hf.main(["to-ours", str(tmp_path / "hf"), str(tmp_path / "back.pth")]) == 0
    back = load_checkpoint(str(tmp_path / "back.pth"))
    named = {int(i): name for i, name in config["id2label"].items() if not name.startswith(("N/A", "LABEL_"))}
    assert back["args"].num_classes == num_classes and back["args"].class_names == (named or None)
    model = build_model(back["args"])[0]
    model.load_state_dict(back["model"], strict=True)
    assert all(torch.equal(back["model"][k], state[k]) for k in state)


def test_test_py_evaluates_a_folder_of_20_classes(tmp_path, capsys):
    """The classifier width travels in id2label: test.py builds 20 classes from the folder and scores as
    it does from the checkpoint the folder was written from."""
    _our_checkpoint(tmp_path / "ours.pth", "--num_classes", "20", "--dataset_file", "coco")
    assert convert_hf.main(["to-hf", str(tmp_path / "ours.pth"), str(tmp_path / "hf")]) == 0
    _assert_test_py_scores_folder_as_file(tmp_path, capsys, "--num_classes 20")


def test_a_checkpoint_whose_classes_need_its_missing_data_is_one_line(tmp_path, capsys):
    """A checkpoint of a custom COCO-format set that records no class names: they would come from its
    annotation file, which is not here; the tool says so in one line."""
    _our_checkpoint(tmp_path / "ours.pth", "--num_classes", "6")
    checkpoint = load_checkpoint(str(tmp_path / "ours.pth"))
    for flag, value in (("dataset_file", "coco"), ("val_json", str(tmp_path / "val.json")),
                        ("val_images", str(tmp_path / "images"))):
        setattr(checkpoint["args"], flag, value)
    save_checkpoint(checkpoint, str(tmp_path / "ours.pth"))
    assert convert_hf.main(["to-hf", str(tmp_path / "ours.pth"), str(tmp_path / "hf")]) == 1
    error = capsys.readouterr().err
    assert error == f"convert_hf.py: data error: --val_json {tmp_path / 'val.json'}: no such file\n"
