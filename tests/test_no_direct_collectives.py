"""Every collective goes through util/dist.py, which puts its tensor on the device the backend requires.

A direct ``torch.distributed.all_reduce`` of a CPU tensor passes every gloo (CPU) test and kills the
first NCCL run; this scan of the source tree keeps such calls out of every module but util/dist.py.
"""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join("util", "dist.py")
SKIP_DIRS = {"tests", "data", "exps", "build", "dist", "__pycache__"}

COLLECTIVES = {
    "all_reduce", "all_reduce_coalesced", "all_reduce_multigpu", "all_gather", "all_gather_object",
    "all_gather_into_tensor", "all_gather_coalesced", "all_gather_multigpu", "_all_gather_base",
    "all_to_all", "all_to_all_single", "broadcast", "broadcast_object_list", "broadcast_multigpu",
    "reduce", "reduce_multigpu", "reduce_scatter", "reduce_scatter_tensor", "reduce_scatter_multigpu",
    "_reduce_scatter_base", "gather", "gather_object", "scatter", "scatter_object_list", "barrier",
    "monitored_barrier", "send", "recv", "isend", "irecv", "batch_isend_irecv", "send_object_list",
    "recv_object_list",
}
DIST_MODULES = {"torch.distributed", "torch.distributed.distributed_c10d"}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def direct_collectives(source: str, filename: str) -> list[str]:
    """'file:line name' of every torch.distributed collective called or imported in ``source``."""
    tree = ast.parse(source, filename)
    aliases = {}  # local name -> the module it stands for
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = a.name
                else:
                    top = a.name.split(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if node.module in DIST_MODULES and a.name in COLLECTIVES:
                    found.append(f"{filename}:{node.lineno} from {node.module} import {a.name}")
                aliases[a.asname or a.name] = full
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr not in COLLECTIVES:
                continue
            base = _dotted(node.func.value)
            if base is None:
                continue
            head, _, rest = base.partition(".")
            module = aliases.get(head, head) + (f".{rest}" if rest else "")
            if module in DIST_MODULES:
                found.append(f"{filename}:{node.lineno} {module}.{node.func.attr}")
    return found


def _sources():
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS
                       and not d.endswith(".egg-info")]
        for f in filenames:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                yield os.path.relpath(path, ROOT), path


def test_the_scan_finds_every_spelling():
    src = ("import torch\nimport torch.distributed as dist\nfrom torch import distributed\n"
           "from torch.distributed import barrier as b\n"
           "torch.distributed.all_reduce(t)\ndist.all_gather_object(x, y)\ndistributed.broadcast(t, 0)\n"
           "from util.dist import all_reduce\nall_reduce(t)\nimport util.dist as du\ndu.all_gather(x)\n"
           "dist.get_rank()\n")
    found = direct_collectives(src, "m.py")
    assert [f.split()[0] for f in found] == ["m.py:4", "m.py:5", "m.py:6", "m.py:7"]


def test_no_module_but_util_dist_calls_collectives():
    offenders = []
    sources = list(_sources())
    assert any(rel == os.path.join("util", "logger.py") for rel, _ in sources)  # the scan sees the tree
    for rel, path in sources:
        if rel == HELPER:
            continue
        with open(path, encoding="utf-8") as f:
            offenders += direct_collectives(f.read(), rel)
    assert not offenders, "call these through util/dist.py instead: " + "; ".join(offenders)
