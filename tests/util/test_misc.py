"""util.misc keeps the public names of the original module, which derived projects import."""
import torch

import util.misc as misc

# The names of the public DETR / Deformable DETR util/misc.py that this codebase provides.
PUBLIC_NAMES = (
    "SmoothedValue", "MetricLogger", "all_gather", "reduce_dict", "collate_fn", "NestedTensor",
    "nested_tensor_from_tensor_list", "setup_for_distributed", "is_dist_avail_and_initialized",
    "get_world_size", "get_rank", "get_local_size", "get_local_rank", "is_main_process", "save_on_master",
    "init_distributed_mode", "accuracy", "inverse_sigmoid",
)


def test_the_original_public_names_are_importable():
    missing = [name for name in PUBLIC_NAMES if not callable(getattr(misc, name, None))]
    assert missing == []


def test_save_on_master_writes_a_loadable_file_without_leaving_a_temporary_one(tmp_path):
    path = tmp_path / "checkpoint.pth"
    misc.save_on_master({"epoch": 3, "w": torch.ones(2)}, str(path))
    assert torch.load(path, weights_only=True)["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]


def test_save_on_master_writes_nothing_on_other_ranks(tmp_path, monkeypatch):
    monkeypatch.setattr(misc, "is_main_process", lambda: False)
    misc.save_on_master({"epoch": 3}, str(tmp_path / "checkpoint.pth"))
    assert list(tmp_path.iterdir()) == []
