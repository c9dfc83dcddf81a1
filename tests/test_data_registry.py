"""The task registry: shipped entries, user tasks from dicts and files, and clear errors."""

import json

import pytest
import yaml

from peft_medsa.data import IntensityPolicy, TaskSpec, get_task, list_tasks, register_task

# Hub task -> (repository, whether a dataset card / viewer / file tree confirmed its layout column by column).
HUB_TASKS = {
    "breast-ultrasound": ("nielsr/breast-cancer", True),
    "busi": ("MedOtter/BUSI", False),
    "kvasir-seg": ("kowndinya23/Kvasir-SEG", True),
    "isic2016": ("MedOtter/ISIC2016", False),
    "isic2017": ("MedOtter/ISIC2017", False),
    "isic2018": ("surajbijjahalli/ISIC2018", True),
    "btcv": ("Angelou0516/btcv", True),
    "msd-spleen": ("MedOtter/msd-spleen", False),
    "acdc": ("mathpluscode/ACDC", True),
    "brats": ("rocky93/BraTS_segmentation", True),
}


def minimal(**overrides):
    return {"name": "user-task", "format": "parquet", "path": "/data/x", "labels": {1: "tumour"}, **overrides}


def test_shipped_hub_tasks_name_their_repo_license_and_the_page_checked():
    for name, (repo, verified) in HUB_TASKS.items():
        spec = get_task(name)
        assert (spec.repo_id, spec.verified) == (repo, verified), name
        assert spec.verified_from.startswith(f"https://huggingface.co/datasets/{repo}"), name
        assert spec.license and "see the dataset card" not in spec.license, name
    assert get_task("acdc").license.startswith("CC BY-NC-SA")
    assert get_task("btcv").labels[6] == "liver" and len(get_task("btcv").labels) == 13
    assert get_task("btcv").intensity == IntensityPolicy("window", level=40, width=400)
    assert get_task("acdc").intensity.kind == "percentile"
    assert {"demo-2d", "demo-3d"} <= set(list_tasks())


def test_train_only_hub_tasks_draw_their_splits_by_hash():
    # btcv's index rows hold the organ names under `label` and the mask path under `mask`.
    btcv = get_task("btcv")
    assert (btcv.image_column, btcv.mask_column, btcv.case_id_column) == ("image", "mask", "patient_id")
    for name in ("breast-ultrasound", "busi", "btcv", "msd-spleen"):
        spec = get_task(name)
        assert spec.split_by_hash and set(spec.splits.values()) == {"train"}, name
        assert set(spec.splits) == set(spec.split_fractions) == {"train", "validation", "test"}, name
    assert get_task("kvasir-seg").splits == {"train": "train", "validation": "validation"}
    assert get_task("kvasir-seg").case_id_column == "name"


def test_register_from_dict_yaml_and_json(tmp_path):
    spec = register_task(minimal(intensity={"kind": "percentile", "percentiles": [1, 99]}))
    assert spec.intensity.percentiles == (1, 99) and get_task("user-task") is spec
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(minimal(name="from-yaml", labels={"1": "a", "2": "b"})))
    assert register_task(path).labels == {1: "a", 2: "b"}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(minimal(name="from-json")))
    assert get_task(register_task(path).name).path == "/data/x"


def test_registering_a_different_task_under_a_taken_name_needs_overwrite():
    register_task(minimal(name="taken"))
    with pytest.raises(ValueError, match="already registered"):
        register_task(minimal(name="taken", labels={1: "other"}))
    assert register_task(minimal(name="taken", labels={1: "other"}), overwrite=True).labels == {1: "other"}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"colour": "red"}, r"Unknown task field\(s\) \['colour'\]"),
        ({"format": "zarr"}, "unknown format 'zarr'"),
        ({"repo_id": "a/b"}, "exactly one source"),
        ({"labels": {0: "background"}}, "class ids must be in 1..255"),
        ({"mask_encoding": "binary", "labels": {1: "a", 2: "b"}}, "exactly one class with id 1"),
        ({"format": "volumes"}, "needs an `index` or both"),
        ({"intensity": {"kind": "window", "level": 40}}, "needs `level` and a positive `width`"),
    ],
)
def test_bad_specs_are_rejected_with_the_reason(overrides, message):
    with pytest.raises(ValueError, match=message):
        TaskSpec.from_dict(minimal(**overrides))


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown task 'nope'.*'btcv'"):
        get_task("nope")
