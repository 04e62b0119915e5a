"""`pip install --no-build-isolation .` installs the compiled op ``MultiScaleDeformableAttention`` only.

The training code (``models``, ``datasets``, ``util``, ``main.py``, ``tools/``) is not installed: it
runs from the repository root, as every command of the README does. Installing it as top-level
packages would shadow others (``datasets`` is Hugging Face's), and the op is the one part other
projects need outside this checkout. This is the same distribution ``sh models/ops/make.sh`` installs
(same name, so either replaces the other); see docs/design/install.md.
"""

import importlib.util
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _load_build_config():
    # Loaded by path: importing it as models.ops.build_config would import the training package.
    path = os.path.join(ROOT, "models", "ops", "build_config.py")
    spec = importlib.util.spec_from_file_location("msda_build_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


os.chdir(ROOT)
# The extension first: it sets CUDA_HOME before torch.utils.cpp_extension is imported.
op = _load_build_config().extension(ROOT, os.path.join(ROOT, "build"))
from torch.utils.cpp_extension import BuildExtension  # noqa: E402

setup(
    name="MultiScaleDeformableAttention",
    version="1.0",
    description="Multi-scale deformable attention kernels (CPU and CUDA) for Deformable DETR",
    license="Apache-2.0",
    packages=[],
    python_requires=">=3.10",
    ext_modules=[op],
    cmdclass={"build_ext": BuildExtension},
)
