"""Helpers for the tests that compare with transformers' DETR-family models (util.hf, tools/convert_hf.py):
models built from a config, nothing downloaded, with random weights."""
import os

import torch

# Nothing is downloaded: a test that reached for the hub would fail here rather than on a developer's network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# transformers' ResNet as our resnet18: small and fast where the full ResNet-50 is not the point.
RESNET18 = {"layer_type": "basic", "depths": [2, 2, 2, 2], "hidden_sizes": [64, 128, 256, 512]}
ALL_STAGES = ["stage1", "stage2", "stage3", "stage4"]


def randomized(model):
    """``model`` in eval mode with random weights everywhere: transformers' init leaves sampling offsets,
    attention weights, biases and the frozen batch-norm statistics trivial, which would hide a mix-up."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".backbone." not in name:
                p.add_(0.1 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                b.normal_(0.0, 0.1)
            elif ".backbone." in name and name.endswith(("weight", "bias")):  # frozen batch norm
                b.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    return model.eval()


def small_detr_model(model_class: str, num_labels: int, decoder_layers: int, **config):
    """transformers' DETR or Conditional DETR (``model_class``) with a ResNet-18, 32 channels, 8 heads, one
    encoder layer (unless ``config`` says otherwise) and random weights."""
    import transformers

    config_class = "ConditionalDetrConfig" if model_class.startswith("Conditional") else "DetrConfig"
    stages = ALL_STAGES if "Segmentation" in model_class else ["stage4"]
    fields = {"d_model": 32, "encoder_layers": 1, "decoder_layers": decoder_layers,
              "encoder_attention_heads": 8, "decoder_attention_heads": 8, "encoder_ffn_dim": 48,
              "decoder_ffn_dim": 48, "num_queries": 7, "num_labels": num_labels, **config}
    backbone = transformers.ResNetConfig(out_features=stages, **RESNET18)
    config = getattr(transformers, config_class)(backbone_config=backbone, use_pretrained_backbone=False,
                                                 **fields)
    torch.manual_seed(0)
    return randomized(getattr(transformers, model_class)(config))
