"""Installs the project's packages (models, datasets, util) and the compiled op.

`pip install --no-build-isolation .` (or `-e .`); the op is configured by models/ops/build_config.py,
the same settings `sh models/ops/make.sh` uses (CUDA kernels whenever nvcc is found).
"""

import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "models", "ops"))
import build_config  # noqa: E402  (models/ops/build_config.py, loaded before anything is installed)

os.chdir(ROOT)
# The extension first: it sets CUDA_HOME before torch.utils.cpp_extension is imported.
op = build_config.extension(ROOT, os.path.join(ROOT, "build"))
from torch.utils.cpp_extension import BuildExtension  # noqa: E402

setup(
    name="deformable_detr_batchformer",
    version="0.1.0",
    description="Deformable DETR with BatchFormerV2",
    packages=find_packages(include=["models", "models.*", "datasets", "datasets.*", "util", "util.*"]),
    python_requires=">=3.10",
    ext_modules=[op],
    cmdclass={"build_ext": BuildExtension},
)
