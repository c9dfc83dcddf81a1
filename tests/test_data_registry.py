"""The task registry: shipped entries, user tasks from dicts and files, and clear errors."""

import json
import re
from dataclasses import replace

import pytest
import yaml

from peft_medsa import MedSAValueError
from peft_medsa.data import IntensityPolicy, TaskSpec, get_task, list_tasks, load_task, register_task
from peft_medsa.data.loading import _volume_cases

# Hub task -> (repository, whether a dataset card / viewer / file tree confirmed its layout column by column).
HUB_TASKS = {
    "breast-ultrasound": ("nielsr/breast-cancer", True),
    "busi": ("Angelou0516/BUSI", True),
    "kvasir-seg": ("kowndinya23/Kvasir-SEG", True),
    "isic2016": ("MedOtter/ISIC2016", False),
    "isic2017": ("MedOtter/ISIC2017", False),
    "isic2018": ("surajbijjahalli/ISIC2018", True),
    "btcv": ("Angelou0516/btcv", False),
    "msd-spleen": ("MedOtter/msd-spleen", False),
    "acdc": ("mathpluscode/ACDC", True),
    "brats": ("rocky93/BraTS_segmentation", True),
    "lidc-idri": ("MedOtter/LIDC-IDRI", False),
}


def minimal(**overrides):
    return {"name": "user-task", "format": "parquet", "path": "/data/x", "labels": {1: "tumour"}, **overrides}


def test_shipped_hub_tasks_name_their_repo_license_and_the_page_checked():
    assert {name for name in list_tasks() if get_task(name).repo_id} == set(HUB_TASKS)
    for name, (repo, verified) in HUB_TASKS.items():
        spec = get_task(name)
        assert (spec.repo_id, spec.verified) == (repo, verified), name
        if verified:  # the page that confirmed it, on that very repository
            page = rf"https://huggingface\.co/datasets/{re.escape(repo)}[/ ]"
            assert re.match(page, spec.verified_from), name
            assert not spec.note, name
        else:  # what was searched and seen, in one line
            assert spec.verified_from is None and "https://huggingface.co/datasets/" in spec.note, name
            assert "\n" not in spec.note, name
    for name in list_tasks():
        license = get_task(name).license
        assert license and license != "unknown" and "see the dataset card" not in license, name
    assert get_task("acdc").license.startswith("CC BY-NC-SA")
    assert get_task("btcv").labels[6] == "liver" and len(get_task("btcv").labels) == 13
    assert get_task("btcv").intensity == IntensityPolicy("window", level=40, width=400)
    assert get_task("acdc").intensity.kind == "percentile"
    assert {"demo-2d", "demo-3d"} <= set(list_tasks())


def test_train_only_hub_tasks_draw_their_splits_by_hash():
    # btcv's index rows hold the organ names under `label` and the mask path under `mask`.
    btcv = get_task("btcv")
    assert (btcv.image_column, btcv.mask_column, btcv.case_id_column) == ("image", "mask", "patient_id")
    for name in ("breast-ultrasound", "busi", "btcv", "msd-spleen", "lidc-idri"):
        spec = get_task(name)
        assert spec.split_by_hash and set(spec.splits.values()) == {"train"}, name
        assert set(spec.splits) == set(spec.split_fractions) == {"train", "validation", "test"}, name
    assert get_task("kvasir-seg").splits == {"train": "train", "validation": "validation"}
    assert get_task("kvasir-seg").case_id_column == "name"


# A row of the btcv copy's train.jsonl as its Hub pages show it: `label` lists organ names, `mask` is the path.
BTCV_ROW = {
    "image": "data/nii/BTCV/RawData/Training/img/img0001.nii.gz",
    "mask": "data/nii/BTCV/RawData/Training/label/label0001.nii.gz",
    "label": ["spleen", "right kidney", "liver"],
    "modality": "CT",
    "dataset": "BTCV",
    "official_split": "train",
    "patient_id": "img0001.nii.gz",
}


def test_index_rows_must_match_the_spec_and_a_mismatch_names_expected_and_found_keys(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps(BTCV_ROW) + "\n")
    btcv = replace(get_task("btcv"), repo_id=None, path=str(tmp_path))
    assert _volume_cases(btcv, "train") == [
        {"case_id": "img0001.nii.gz", "image": BTCV_ROW["image"], "label": BTCV_ROW["mask"]}
    ]
    found = "found {'image': 'str', 'mask': 'str', 'label': 'list', 'modality': 'str', 'dataset': 'str', "
    found += "'official_split': 'str', 'patient_id': 'str'}. Fix the spec's columns."
    with pytest.raises(MedSAValueError) as error:  # the organ list, not a path: one clear error, no TypeError
        load_task(replace(btcv, mask_column="label"))
    assert str(error.value) == (
        f"Task 'btcv': the rows of train.jsonl in {tmp_path} have no file path under ['label']. The spec expects "
        "keys ['image', 'label', 'patient_id'] (image_column, mask_column[, case_id_column]), paths under the "
        f"first two; {found}"
    )
    with pytest.raises(MedSAValueError, match=re.escape("have no key(s) ['case']. The spec expects keys ")):
        load_task(replace(btcv, case_id_column="case"))


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
        ({"intensity": "rgb"}, r"`intensity` must be a mapping such as \{kind: rgb\}, got 'rgb'"),
        ({"intensity": {"kind": "rgb", "gamma": 2}}, r"unknown intensity field\(s\) \['gamma'\]"),
        ({"intensity": {"kind": "window", "level": "40", "width": 400}}, r"`level` must be a finite number"),
        ({"intensity": {"kind": "percentile", "percentiles": [1]}}, r"`percentiles`.*1 items instead of 2"),
        ({"labels": {"liver": 1}}, r"`labels` must map integer class ids to names.*got 'liver': 1"),
        ({"labels": {1.5: "a"}}, r"integer class ids.*got 1.5: 'a'"),
        ({"labels": {1: 7}}, r"integer class ids.*got 1: 7"),
        ({"labels": ["liver"]}, r"`labels` must map class ids to names.*got \['liver'\]"),
        ({"labels": {}}, "must not be empty"),
        ({"name": 7}, r"`name` must be a non-empty string, got 7"),
        (
            {"split_fractions": {"train": 0, "validation": 0, "test": 0}},
            r"`split_fractions` must be >= 0 with a positive sum",
        ),
        ({"split_fractions": {"train": -1, "test": 2}}, r"`split_fractions` must be >= 0"),
        (
            {"split_fractions": {"train": "0.8"}},
            r"`split_fractions` must be a mapping of strings to finite numbers",
        ),
        ({"target_spacing": [0, 1, 1]}, r"`target_spacing` \(dz, dy, dx\) must be positive"),
        ({"target_spacing": [-1.5, None, None]}, r"`target_spacing` \(dz, dy, dx\) must be positive"),
        ({"target_spacing": [1, 1]}, r"`target_spacing` must be .*2 items instead of 3"),
        ({"target_spacing": "1,1,1"}, r"`target_spacing` must be .*got '1,1,1' \(a str\)"),
        ({"strip_suffixes": "_gt"}, r"`strip_suffixes` must be a list of strings, got '_gt'"),
        ({"verified": "yes"}, r"`verified` must be true or false, got 'yes'"),
        ({"mask_threshold": float("nan")}, r"`mask_threshold` must be a finite number, got nan"),
        ({"image_column": 3}, r"`image_column` must be a string, got 3"),
        ({"splits": ["train"]}, r"`splits` must be a mapping of strings to strings"),
    ],
)
def test_bad_specs_are_rejected_with_the_reason(overrides, message):
    with pytest.raises(MedSAValueError, match=message):
        TaskSpec.from_dict(minimal(**overrides))


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: t\nformat: parquet\nlabels: {1: a\n", r"t.yaml, line \d+: invalid YAML"),
        ("name: t\n  format: [parquet\n", r"t.yaml, line \d+: invalid YAML"),
        ("- just\n- a list\n", "must hold a mapping of task fields, got list"),
    ],
)
def test_task_file_syntax_errors_name_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(MedSAValueError, match=message):
        TaskSpec.from_file(path)


def test_json_task_file_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{\n  "name": "t",\n  "format": parquet\n}')
    with pytest.raises(MedSAValueError, match=r"t.json, line 3: invalid JSON"):
        TaskSpec.from_file(path)


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown task 'nope'.*'btcv'"):
        get_task("nope")
