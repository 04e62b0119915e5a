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
