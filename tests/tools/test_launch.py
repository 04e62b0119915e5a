"""tools/launch.py, run_dist_launch.sh (with sh and directly), run_dist_slurm.sh and the configs."""
import os
import re
import signal
import stat
import subprocess
import sys
import time

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
    "r50_detr": ["--meta_arch", "detr"],
    "r50_detr_bf": ["--meta_arch", "detr", "--bf", "3", "--insert_idx", "0"],
    "r50_detr_panoptic": ["--meta_arch", "detr", "--masks", "--dataset_file", "coco_panoptic", "--epochs",
                          "25", "--lr_drop", "15"],
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


def test_the_panoptic_config_takes_the_detector_from_DETECTOR(tmp_path):
    """DETR's second panoptic step: DETECTOR names the frozen detector (--frozen_weights), before the
    flags given on the command line."""
    fake_python = _script(tmp_path / "python", '#!/bin/sh\nfor a in "$@"; do echo "ARG $a"; done\n')
    out = subprocess.run([os.path.join(ROOT, "configs", "r50_detr_panoptic.sh"), "--bf", "3"],
                         capture_output=True, text=True, timeout=20, cwd=tmp_path,
                         env={**os.environ, "PYTHON": fake_python, "DETECTOR": "step 1/checkpoint.pth"})
    assert out.returncode == 0, out.stderr
    args = [line[4:] for line in out.stdout.splitlines() if line.startswith("ARG ")]
    assert args[-4:] == ["--frozen_weights", "step 1/checkpoint.pth", "--bf", "3"]


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


# A config script's shape: sh runs python without exec, so python is the launcher's grandchild.
SLEEPER_SH = """#!/bin/sh
echo $$ > "$OUT/sh_$RANK"
"$PY" -c 'import os, sys, time; open(sys.argv[1], "w").write(str(os.getpid())); time.sleep(120)' \
    "$OUT/py_$RANK"
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie holds no GPU
    except FileNotFoundError:
        return False


def _wait_for(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def _start_sleepers(tmp_path, child_text: str, *launch_args: str) -> tuple[subprocess.Popen, list[int]]:
    child = _script(tmp_path / "sleeper.sh", child_text)
    env = {**os.environ, "OUT": str(tmp_path), "PY": sys.executable}
    launcher = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "launch.py"), "--nproc_per_node",
                                 "2", *launch_args, child], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
    names = [f"{kind}_{r}" for kind in ("sh", "py") for r in (0, 1)]

    def started() -> bool:
        return all((tmp_path / n).exists() and (tmp_path / n).read_text() for n in names)

    assert _wait_for(started, 30), "the children did not start"
    return launcher, [int((tmp_path / n).read_text()) for n in names]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux only")
def test_children_die_with_a_killed_launcher(tmp_path):
    """The OOM killer or a scheduler SIGKILLs the launcher: no child or grandchild keeps its GPU."""
    launcher, pids = _start_sleepers(tmp_path, SLEEPER_SH)
    try:
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=10)
        assert _wait_for(lambda: not any(_alive(p) for p in pids), 10), \
            f"still running after the launcher was killed: {[p for p in pids if _alive(p)]}"
    finally:
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_reaches_children_and_a_stuck_one_is_killed(tmp_path):
    """SIGTERM to the launcher goes to every child; one that does not stop (a rank blocked in a
    collective ignores its handler) is killed after --stop_timeout, and the launcher returns."""
    stuck = SLEEPER_SH.replace('echo $$', 'trap "" TERM\necho $$', 1)  # python inherits the ignored TERM
    launcher, pids = _start_sleepers(tmp_path, stuck, "--stop_timeout", "1")
    try:
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=15) != 0
        assert _wait_for(lambda: not any(_alive(p) for p in pids), 10)
        assert b"did not stop" in launcher.stderr.read()
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


@pytest.mark.parametrize("gpus,per_node,message", [
    ("12", "8", "12 GPUs is not a multiple of GPUS_PER_NODE=8"),
    ("0", "", "positive integer"),
    ("4", "0", "GPUS_PER_NODE must be a positive integer"),
])
@pytest.mark.parametrize("script", ["run_dist_launch.sh", "run_dist_slurm.sh"])
def test_dist_scripts_reject_partial_nodes(tmp_path, script, gpus, per_node, message):
    # Rounding 12 GPUs up to 2 nodes of 8 would start a 16-rank world.
    # Stand-ins for srun and for the python that would run launch.py: nothing may start.
    _script(tmp_path / "srun", '#!/bin/sh\necho "STARTED $*"\n')
    fake_python = _script(tmp_path / "python", '#!/bin/sh\necho "STARTED $*"\n')
    child = _script(tmp_path / "noop.sh", "#!/bin/sh\n")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "PYTHON": fake_python}
    env.pop("GPUS_PER_NODE", None)
    if per_node:
        env["GPUS_PER_NODE"] = per_node
    pre = ["part", "job"] if script == "run_dist_slurm.sh" else []
    out = subprocess.run(["sh", os.path.join(ROOT, "tools", script), *pre, gpus, child],
                         env=env, capture_output=True, text=True, timeout=20)
    assert out.returncode == 2
    assert message in out.stderr
    assert "STARTED" not in out.stdout
