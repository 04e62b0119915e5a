"""tools/launch.py, run_dist_launch.sh (with sh and directly), run_dist_slurm.sh and the configs."""
import os
import re
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _script(path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def _env_lines(out: str) -> list[dict]:
    rows = []
    for line in out.splitlines():
        if line.startswith("ENV "):
            rows.append(dict(kv.split("=", 1) for kv in line.split()[1:]))
    return sorted(rows, key=lambda r: int(r["RANK"]))


PRINT_ENV_SH = """#!/bin/sh
echo "ENV RANK=$RANK WORLD_SIZE=$WORLD_SIZE LOCAL_RANK=$LOCAL_RANK MASTER_ADDR=$MASTER_ADDR \
MASTER_PORT=$MASTER_PORT ARGS=$(echo "$@" | tr ' ' ,)"
"""


@pytest.mark.parametrize("direct", [False, True])
def test_run_dist_launch_works_with_sh_and_directly(tmp_path, direct):
    child = _script(tmp_path / "print_env.sh", PRINT_ENV_SH)
    launcher = os.path.join(ROOT, "tools", "run_dist_launch.sh")
    cmd = [launcher] if direct else ["sh", launcher]
    env = {**os.environ, "PYTHON": sys.executable, "MASTER_PORT": "29611"}
    env.pop("GPUS_PER_NODE", None)
    out = subprocess.run(cmd + ["2", child, "--batch-size", "3", "--bf", "1"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = _env_lines(out.stdout)
    assert [r["RANK"] for r in rows] == ["0", "1"]
    assert [r["LOCAL_RANK"] for r in rows] == ["0", "1"]
    assert all(r["WORLD_SIZE"] == "2" and r["MASTER_PORT"] == "29611" for r in rows)
    assert all(r["ARGS"] == "--batch-size,3,--bf,1" for r in rows)


def test_launch_second_node_ranks(tmp_path):
    # One write per line: under PYTHONUNBUFFERED, print() writes its pieces one by one and the
    # three children's lines would interleave in the shared pipe.
    child = _script(tmp_path / "print_env.py",
                    "import os, sys\nsys.stdout.write(' '.join(['ENV', *(f'{k}={os.environ[k]}' for k in "
                    "('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR')),\n"
                    "      'ARGS=' + ','.join(sys.argv[1:])]) + '\\n')\n")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "launch.py"), "--nnodes", "2",
                          "--node_rank", "1", "--master_addr", "10.1.2.3", "--master_port", "29612",
                          "--nproc_per_node", "3", child, "--eval"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = _env_lines(out.stdout)
    assert [r["RANK"] for r in rows] == ["3", "4", "5"]
    assert [r["LOCAL_RANK"] for r in rows] == ["0", "1", "2"]
    assert all(r["WORLD_SIZE"] == "6" and r["MASTER_ADDR"] == "10.1.2.3" for r in rows)
    assert all(r["ARGS"] == "--eval" for r in rows)


def test_launch_returns_failing_child_status(tmp_path):
    child = _script(tmp_path / "fail.sh", '#!/bin/sh\n[ "$RANK" = 1 ] && exit 3\nsleep 30\n')
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "launch.py"), "--nproc_per_node", "2",
                          child], capture_output=True, text=True, timeout=20)
    assert out.returncode == 3
    assert "process 1 exited with status 3" in out.stderr


def test_run_dist_slurm_calls_srun(tmp_path):
    _script(tmp_path / "srun", '#!/bin/sh\necho "SRUN $*"\n')
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "GPUS_PER_NODE": "8"}
    out = subprocess.run(["sh", os.path.join(ROOT, "tools", "run_dist_slurm.sh"), "part", "job", "16",
                          "./configs/r50_deformable_detr.sh", "--bf", "1"],
                         env=env, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("SRUN"))
    for part in ("-p part", "--job-name=job", "--gres=gpu:8", "--ntasks=16", "--ntasks-per-node=8",
                 "./configs/r50_deformable_detr.sh --bf 1"):
        assert part in line


CONFIGS = {
    "r50_deformable_detr": [],
    "r50_deformable_detr_single_scale": ["--num_feature_levels", "1"],
    "r50_deformable_detr_single_scale_dc5": ["--num_feature_levels", "1", "--dilation"],
    "r50_deformable_detr_plus_iterative_bbox_refinement": ["--with_box_refine"],
    "r50_deformable_detr_plus_iterative_bbox_refinement_plus_plus_two_stage": ["--with_box_refine",
                                                                               "--two_stage"],
    "r50_deformable_detr_bf": ["--bf", "1", "--insert_idx", "0", "--share_bf", "0"],
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_configs_forward_flags_to_main(tmp_path, name):
    fake_python = _script(tmp_path / "python", '#!/bin/sh\nfor a in "$@"; do echo "ARG $a"; done\n')
    config = os.path.join(ROOT, "configs", f"{name}.sh")
    out = subprocess.run([config, "--resume", "my ckpt.pth", "--eval"], capture_output=True, text=True,
                         env={**os.environ, "PYTHON": fake_python}, timeout=20, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    args = [line[4:] for line in out.stdout.splitlines() if line.startswith("ARG ")]
    assert args[0] == "-u" and os.path.samefile(args[1], os.path.join(ROOT, "main.py"))
    assert args[2:4] == ["--output_dir", f"exps/{name}"]
    assert args[4:] == CONFIGS[name] + ["--resume", "my ckpt.pth", "--eval"]


def test_every_config_is_executable_and_parses():
    sys.path.insert(0, ROOT)
    from util.args import get_args_parser

    names = [f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".sh")]
    assert set(CONFIGS) <= {n[:-3] for n in names}

    def flags_of(name: str) -> list[str]:
        """The flags a config gives main.py: its own, after those of a config it runs."""
        text = open(os.path.join(ROOT, "configs", name)).read()
        if '--output_dir "$EXP_DIR"' in text:
            base, own = [], text.split('--output_dir "$EXP_DIR"', 1)[1]
        else:  # a variant that runs another config with more flags
            inner = re.search(r'"\$\(dirname "\$0"\)/([\w.]+\.sh)"(.*)', text, re.S)
            assert inner, f"{name} neither runs main.py with --output_dir \"$EXP_DIR\" nor another config"
            base, own = flags_of(inner.group(1)), inner.group(2)
        return base + [f for f in own.split('"$@"')[0].split() if f != "\\"]

    for n in names:
        assert os.access(os.path.join(ROOT, "configs", n), os.X_OK), f"{n} is not executable"
        get_args_parser().parse_args(flags_of(n))  # every flag a config passes exists


def test_readme_command_chain_reaches_main_on_every_rank(tmp_path):
    """run_dist_launch.sh -> launch.py -> config script -> main.py, each rank with its env and flags."""
    # Both scripts run $PYTHON: the real one for launch.py, a stand-in that prints for main.py.
    fake_python = _script(tmp_path / "python",
                          f'#!/bin/sh\ncase "$2" in *launch.py) exec {sys.executable} "$@";; esac\n'
                          'echo "MAIN RANK=$RANK WORLD_SIZE=$WORLD_SIZE $*"\n')
    env = {**os.environ, "GPUS_PER_NODE": "2", "PYTHON": fake_python, "MASTER_PORT": "29613"}
    out = subprocess.run(["sh", os.path.join(ROOT, "tools", "run_dist_launch.sh"), "2",
                          os.path.join(ROOT, "configs", "r50_deformable_detr.sh"),
                          "--batch-size", "3", "--bf", "1", "--insert_idx", "0", "--share_bf", "0"],
                         env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = sorted(x for x in out.stdout.splitlines() if x.startswith("MAIN"))
    assert [x.split()[1] for x in lines] == ["RANK=0", "RANK=1"]
    for x in lines:
        assert "WORLD_SIZE=2" in x and x.endswith(
            "--output_dir exps/r50_deformable_detr --batch-size 3 --bf 1 --insert_idx 0 --share_bf 0")
