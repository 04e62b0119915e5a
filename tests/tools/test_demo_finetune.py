"""tools/demo_finetune.py: the 3-class set keeps the square, circle and triangle boxes under ids 0-2, and the
fine-tuning run gets --finetune on the 91-class run's checkpoint with the set's files."""
import json

from tools import demo_finetune


def test_the_three_class_set_keeps_three_toy_classes_under_0_based_ids(tmp_path):
    from datasets.toy import generate

    root = generate(tmp_path / "toy", num_train=6, num_val=3)
    files = demo_finetune.write_three_class_set(root, tmp_path / "data")
    for split, folder in (("train", "train2017"), ("val", "val2017")):
        toy = json.loads((root / "annotations" / f"instances_{folder}.json").read_text())
        kept = json.loads(files[f"{split}_json"].read_text())
        assert kept["categories"] == [{"id": 0, "name": "square"}, {"id": 1, "name": "circle"},
                                      {"id": 2, "name": "triangle"}]
        assert kept["images"] == toy["images"] and files[f"{split}_images"] == root / folder
        expected = [(a["id"], a["category_id"] - 1) for a in toy["annotations"] if a["category_id"] <= 3]
        assert [(a["id"], a["category_id"]) for a in kept["annotations"]] == expected


def test_the_fine_tuning_run_starts_from_the_91_class_checkpoint(tmp_path, monkeypatch):
    from datasets.toy import generate

    runs, reports = [], []
    monkeypatch.setattr(demo_finetune.subprocess, "run", lambda argv, env, check: runs.append((argv, env)))
    monkeypatch.setattr("datasets.toy.ensure_toy_dataset",
                        lambda: generate(tmp_path / "toy", num_train=2, num_val=2))
    monkeypatch.setattr("tools.demo.main", lambda argv: reports.append(argv) or 0)
    assert demo_finetune.main(["--output_dir", str(tmp_path / "out"), "--min_ap50", "0.4"]) == 0
    (argv, env), = runs
    assert argv[argv.index("--num_classes") + 1] == "91"
    assert env["EXP_DIR"] == str(tmp_path / "out" / "coco91")
    flags = reports[0][reports[0].index("--") + 1:]
    assert flags[flags.index("--finetune") + 1] == str(tmp_path / "out" / "coco91" / "checkpoint.pth")
    assert flags[flags.index("--val_json") + 1] == str(tmp_path / "out" / "data" / "val.json")
    assert reports[0][reports[0].index("--min_ap50") + 1] == "0.4"
