"""Builds and installs the compiled op ``MultiScaleDeformableAttention``.

CPU kernels always; CUDA kernels too whenever nvcc and a CUDA build of torch are present, with or
without a visible GPU. Run through ``sh models/ops/make.sh`` (or ``pip install --no-build-isolation .``
here). See build_config.py for the flags, the CUDA architectures and TORCH_CUDA_ARCH_LIST.
"""

import os

import build_config  # a sibling file: Python puts this script's directory on sys.path
from setuptools import setup

OPS_DIR = os.path.dirname(os.path.abspath(__file__))

os.chdir(OPS_DIR)
# The extension first: it sets CUDA_HOME before torch.utils.cpp_extension is imported.
ext = build_config.extension(OPS_DIR, os.path.join(OPS_DIR, "build"))
from torch.utils.cpp_extension import BuildExtension  # noqa: E402

setup(
    name="MultiScaleDeformableAttention",
    version="1.0",
    description="Multi-scale deformable attention kernels (CPU and CUDA) for Deformable DETR",
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension},
)
