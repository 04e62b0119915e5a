"""Our DETR against transformers' DetrForObjectDetection and DetrForSegmentation, an implementation no one
here wrote: built from a small config with random weights (nothing downloaded), saved, converted by util.hf
into our checkpoint, built by models.build_model and loaded strictly; the same padded batch of two sizes
through both. Then our checkpoint through transformers' layout and back, bit-equal."""
import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (a test dependency in requirements.txt: "
                           "`make deps`); the DETR equality tests need it as their reference")
pytest.importorskip("safetensors", reason="safetensors is not installed (requirements.txt: `make deps`)")

from models import build_model  # noqa: E402
from tests.hf_models import small_detr_model  # noqa: E402
from util.hf.convert import load_hf_checkpoint, save_hf_folder  # noqa: E402
from util.misc import nested_tensor_from_tensor_list  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = torch.tensor([[64, 96], [48, 56]])  # (h, w): the second image is padded bottom and right


def _batch():
    g = torch.Generator().manual_seed(1)
    return nested_tensor_from_tensor_list([torch.randn(3, h, w, generator=g) for h, w in SIZES.tolist()])


def _ours(folder):
    checkpoint = load_hf_checkpoint(str(folder))  # the --resume / test.py path for a folder
    model, criterion, postprocessors = build_model(checkpoint["args"])
    result = model.load_state_dict(checkpoint["model"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return checkpoint, model.eval(), postprocessors


@pytest.mark.parametrize("model_class, num_labels, fields", [
    ("DetrForObjectDetection", 20, {"encoder_layers": 2, "decoder_layers": 2}),
    ("DetrForObjectDetection", 91, {"decoder_layers": 2, "position_embedding_type": "learned"}),
    ("DetrForSegmentation", 250, {"decoder_layers": 2}),
])
def test_same_outputs_detections_and_masks(tmp_path, model_class, num_labels, fields):
    hf = small_detr_model(model_class, num_labels, **fields)
    # Its decoder layers' outputs, for our auxiliary heads: transformers 5 with auxiliary_loss=True feeds
    # each layer its predecessor's normalised output (the published DETR does not): not a reference there.
    detector = hf.detr if "Segmentation" in model_class else hf
    layer_outputs = []
    for layer in detector.model.decoder.layers:
        layer.register_forward_hook(lambda m, i, o: layer_outputs.append(o[0] if isinstance(o, tuple) else o))
    hf.save_pretrained(tmp_path / "hf")
    checkpoint, model, postprocessors = _ours(tmp_path / "hf")
    args = checkpoint["args"]
    assert args.meta_arch == "detr" and args.masks == ("Segmentation" in model_class)

    samples = _batch()
    with torch.no_grad():
        theirs = hf(pixel_values=samples.tensors, pixel_mask=(~samples.mask).long())
        out = model(samples)
    assert out["num_streams"] == 1 and out["pred_logits"].shape == (2, 7, num_labels + 1)
    torch.testing.assert_close(out["pred_logits"], theirs.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(out["pred_boxes"], theirs.pred_boxes, atol=1e-4, rtol=0)
    assert len(out["aux_outputs"]) == len(layer_outputs) - 1 == fields["decoder_layers"] - 1
    for aux, hidden in zip(out["aux_outputs"], layer_outputs):
        with torch.no_grad():
            hidden = detector.model.decoder.layernorm(hidden)
            logits = detector.class_labels_classifier(hidden)
            boxes = detector.bbox_predictor(hidden).sigmoid()
        torch.testing.assert_close(aux["pred_logits"], logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(aux["pred_boxes"], boxes, atol=1e-4, rtol=0)
    if "Segmentation" in model_class:
        assert out["pred_masks"].shape == theirs.pred_masks.shape == (2, 7, 16, 24)
        torch.testing.assert_close(out["pred_masks"], theirs.pred_masks, atol=1e-4, rtol=0)

    processor = transformers.DetrImageProcessor()
    expected = processor.post_process_object_detection(theirs, threshold=0.0, target_sizes=SIZES)
    for mine, ref in zip(postprocessors["bbox"](out, SIZES), expected, strict=True):
        assert torch.equal(mine["labels"], ref["labels"])  # every query, in query order
        torch.testing.assert_close(mine["scores"], ref["scores"], atol=1e-4, rtol=0)
        torch.testing.assert_close(mine["boxes"], ref["boxes"], atol=1e-3, rtol=0)


@pytest.mark.parametrize("flags", [[], ["--masks", "--dataset_file", "coco_panoptic"],
                                   ["--bf", "3", "--insert_idx", "0"]])
def test_our_checkpoint_round_trips_through_transformers_layout(tmp_path, flags):
    """Ours -> a transformers folder (which transformers loads strictly) -> ours: every tensor bit-equal;
    the BatchFormerV2 layer, which transformers' DETR lacks, is the only thing left behind."""
    from tests.tiny_model import tiny_flags
    from util.args import get_args_parser, parse_args

    args = parse_args(get_args_parser(), tiny_flags("--meta_arch", "detr", "--enc_layers", "2", "--nheads",
                                                    "8", "--dec_layers", "2", *flags))
    model = build_model(args)[0]
    state = model.state_dict()
    save_hf_folder({"model": state, "args": args}, str(tmp_path / "hf"))
    model_class = transformers.DetrForSegmentation if args.masks else transformers.DetrForObjectDetection
    _, info = model_class.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info.values()), info
    back = load_hf_checkpoint(str(tmp_path / "hf"))["model"]
    kept = {k: v for k, v in state.items() if "bf" not in k.split(".")}
    assert len(kept) < len(state) if "--bf" in flags else len(kept) == len(state)
    assert sorted(back) == sorted(kept)
    assert all(torch.equal(back[k], kept[k]) for k in kept)
