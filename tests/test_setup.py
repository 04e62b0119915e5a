"""Installing the repository (`pip install .`) puts only the compiled op into site-packages.

The training code runs from the repository root; installed as top-level ``models``, ``datasets`` and
``util`` it would shadow other packages (Hugging Face's ``datasets``). The metadata setuptools writes
(``top_level.txt``, what pip installs) is read here without compiling the kernels; the full
``pip install`` into a fresh virtual environment is the documented check in docs/design/install.md.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _installed_names(setup_dir: str, tmp_path) -> tuple[list[str], list[str]]:
    """(the top-level names setuptools records for the install, the Python files build_py would copy)."""
    env = dict(os.environ, FORCE_CPU="1")  # no CUDA detection: the kernels are not compiled here
    info_dir, lib_dir = tmp_path / "info", tmp_path / "lib"
    info_dir.mkdir()
    setup_py = os.path.join(setup_dir, "setup.py")
    for command in (["egg_info", "--egg-base", str(info_dir)], ["build_py", "--build-lib", str(lib_dir)]):
        subprocess.run([sys.executable, setup_py, "-q", *command], cwd=setup_dir, env=env, check=True,
                       capture_output=True, text=True, timeout=120)
    (egg_info,) = list(info_dir.glob("*.egg-info"))
    top_level = (egg_info / "top_level.txt").read_text().split()
    copied = sorted(str(p.relative_to(lib_dir)) for p in lib_dir.rglob("*.py")) if lib_dir.exists() else []
    return top_level, copied


def test_root_setup_installs_only_the_op(tmp_path):
    assert _installed_names(ROOT, tmp_path) == (["MultiScaleDeformableAttention"], [])


def test_op_setup_installs_only_the_op(tmp_path):
    ops_dir = os.path.join(ROOT, "models", "ops")
    assert _installed_names(ops_dir, tmp_path) == (["MultiScaleDeformableAttention"], [])
