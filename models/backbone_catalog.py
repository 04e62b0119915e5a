"""The backbones ``--backbone`` names: the one list, with what building and checking them needs.

Plain data, apart from ``models/backbone.py`` (which builds them and reads weight files), so that the flag
checks can ask for the names without importing the builder.
"""
from __future__ import annotations

# The torchvision ResNets: output channels of layer1, layer2, layer3, layer4, and whether their blocks are
# bottlenecks (torchvision dilates only those: --dilation needs one).
RESNETS: dict[str, tuple[tuple[int, int, int, int], bool]] = {
    "resnet18": ((64, 128, 256, 512), False),
    "resnet34": ((64, 128, 256, 512), False),
    "resnet50": ((256, 512, 1024, 2048), True),
    "resnet101": ((256, 512, 1024, 2048), True),
    "resnet152": ((256, 512, 1024, 2048), True),
}
BACKBONES = tuple(RESNETS)


def backbone_problem(name: str, dilation: bool) -> str | None:
    """Why ``--backbone name`` (with ``--dilation``) cannot be built, or None."""
    if name not in RESNETS:
        return f"--backbone must be one of {', '.join(BACKBONES)}, got {name!r}"
    if dilation and not RESNETS[name][1]:
        bottlenecks = ", ".join(n for n, (_, bottleneck) in RESNETS.items() if bottleneck)
        return f"--dilation needs a bottleneck ResNet ({bottlenecks}), got --backbone {name}"
    return None
