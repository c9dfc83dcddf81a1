"""`load_task` on local folders in the Hub's layouts: same tensors as the Sam processor, and clear errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_sam_config
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage
from transformers import SamImageProcessorPil, SamProcessor

from peft_medsa.data import TaskSpec, load_task
from peft_medsa.data.loading import hash_split

IMAGE_SIZE, PATCH = 64, 8  # mask decoder resolution 4 * 64 // 8 = 32


def write_hub_parquet(root, images, masks, split="train"):
    """A local folder in the Hub's parquet layout: data/{split}-00000-of-00001.parquet."""
    features = Features(image=Image(), mask=Image(), id=Value("string"))
    table = {
        "image": [PILImage.fromarray(i) for i in images],
        "mask": [PILImage.fromarray(m) for m in masks],
        "id": [f"case{i}" for i in range(len(images))],
    }
    (root / "data").mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(table, features=features).to_parquet(
        str(root / "data" / f"{split}-00000-of-00001.parquet")
    )


def spec(root, **overrides):
    return {"name": "local", "format": "parquet", "path": str(root), "labels": {1: "a", 2: "b", 3: "c"},
            "case_id_column": "id", "splits": {"train": "train"}, **overrides}  # fmt: skip


def sam_processor():
    return SamProcessor(
        image_processor=SamImageProcessorPil(
            size={"longest_edge": IMAGE_SIZE},
            pad_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            mask_size={"longest_edge": 32},
            mask_pad_size={"height": 32, "width": 32},
        )
    )


@pytest.fixture
def two_class_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)
    mask = np.zeros((40, 70), np.uint8)
    mask[5:20, 10:30] = 1
    mask[25:38, 40:66] = 2
    return image, mask


def test_local_parquet_streams_the_sam_processor_tensors(tmp_path, two_class_image):
    image, mask = two_class_image
    write_hub_parquet(tmp_path, [image], [mask])
    examples = list(
        load_task(spec(tmp_path), streaming=True, image_size=IMAGE_SIZE, patch_size=PATCH, prompt="box")
    )
    reference = sam_processor()(
        images=image, segmentation_maps=mask, input_boxes=[[[10, 5, 29, 19]]], return_tensors="pt"
    )

    assert [int(e["class_id"]) for e in examples] == [1, 2]  # class 3 is absent: no target for it
    first = examples[0]
    assert torch.equal(first["pixel_values"], reference["pixel_values"][0])
    assert first["pixel_values"].shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    for example in examples:
        assert torch.equal(example["labels"][0], (reference["labels"][0] == example["class_id"]).long())
        assert example["labels"].shape == (1, 32, 32)
    assert first["original_size"].tolist() == [40, 70]
    assert first["reshaped_input_size"].tolist() == reference["reshaped_input_sizes"][0].tolist()
    assert first["case_id"] == "case0"
    # Our tight box is taken in the processed frame; the processor rescales the original one: within a pixel.
    torch.testing.assert_close(first["input_boxes"], reference["input_boxes"][0].float(), atol=1.0, rtol=0)


def test_folder_with_a_task_file_and_relative_path(tmp_path, two_class_image):
    image, mask = two_class_image
    write_hub_parquet(tmp_path, [image, image[::-1]], [mask, mask[::-1]])
    (tmp_path / "task.yaml").write_text(yaml.safe_dump({**spec("."), "name": "folder-task"}))
    examples = list(load_task(tmp_path, image_size=IMAGE_SIZE, patch_size=PATCH))
    assert [(e["case_id"], int(e["class_id"])) for e in examples] == [
        ("case0", 1),
        ("case0", 2),
        ("case1", 1),
        ("case1", 2),
    ]


def test_folder_of_image_and_mask_files(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for k in range(3):
        image = np.full((30, 50), 1000 * (k + 1), np.uint16)  # 16-bit grayscale
        mask = np.zeros((30, 50), np.uint8)
        mask[5 + k : 20, 10:40] = 255
        PILImage.fromarray(image).save(tmp_path / "images" / f"p{k}.png")
        PILImage.fromarray(mask).save(tmp_path / "masks" / f"p{k}_mask.png")
    task = {"name": "files", "format": "images", "path": str(tmp_path), "labels": {1: "lesion"},
            "image_glob": "images/*.png", "label_glob": "masks/*.png", "strip_suffixes": ["_mask"],
            "mask_encoding": "binary", "intensity": {"kind": "minmax"}, "split_fractions": {"train": 1.0},
            "splits": {"train": "train"}}  # fmt: skip
    examples = list(load_task(task, image_size=IMAGE_SIZE, patch_size=PATCH))
    assert sorted(e["case_id"] for e in examples) == ["p0", "p1", "p2"]
    assert all(e["labels"].sum() > 0 and e["pixel_values"].shape == (3, 64, 64) for e in examples)


def test_missing_column_names_the_column_and_the_real_ones(tmp_path, two_class_image):
    write_hub_parquet(tmp_path, *([a] for a in two_class_image))
    with pytest.raises(ValueError, match=r"column\(s\) \['label'\] not found.*\['image', 'mask', 'id'\]"):
        load_task(spec(tmp_path, mask_column="label"))


def test_label_value_absent_from_the_label_map(tmp_path, two_class_image):
    image, mask = two_class_image
    mask = mask.copy()
    mask[0, 0] = 7
    write_hub_parquet(tmp_path, [image], [mask])
    with pytest.raises(
        ValueError, match=r"case 'case0': mask holds value\(s\) \[7\] that are not in the task's label map"
    ):
        next(iter(load_task(spec(tmp_path), image_size=IMAGE_SIZE, patch_size=PATCH)))


def test_image_and_mask_size_mismatch(tmp_path, two_class_image):
    image, mask = two_class_image
    write_hub_parquet(tmp_path, [image], [mask[:, :60]])
    with pytest.raises(ValueError, match=r"image size \(40, 70\) and mask size \(40, 60\) differ"):
        next(iter(load_task(spec(tmp_path), image_size=IMAGE_SIZE, patch_size=PATCH)))


def test_unknown_task_split_and_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown task 'no-such-task'"):
        load_task("no-such-task")
    with pytest.raises(ValueError, match="has no split 'test'"):
        load_task(spec(tmp_path), split="test")
    with pytest.raises(FileNotFoundError, match="folder without a task file"):
        load_task(tmp_path)


def test_offline_hub_tasks_name_the_dataset_and_the_local_route():
    script = (
        "from peft_medsa.data import load_task\n"
        "for task in ('busi', 'btcv', 'msd-spleen'):\n"
        "    try:\n"
        "        load_task(task)\n"
        "    except ConnectionError as error:\n"
        "        print(error)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("Task ")]
    assert len(lines) == 3, result.stdout + result.stderr
    for line, task, repo in zip(
        lines,
        ("busi", "btcv", "msd-spleen"),
        ("Angelou0516/BUSI", "Angelou0516/btcv", "MedOtter/msd-spleen"),
        strict=False,
    ):
        assert f"Hub dataset '{repo}'" in line and "HF_HUB_OFFLINE=1" in line
        assert (
            f"load_task('{task}', data_dir=DIR)" in line and f"hf download {repo} --repo-type dataset" in line
        )


def test_an_empty_training_split_fails_before_training(tmp_path):
    from peft_medsa import MedSAValueError
    from peft_medsa.training.arguments import TaskArguments
    from peft_medsa.training.run import training_set

    (tmp_path / "images").mkdir()
    for k in range(2):
        PILImage.fromarray(np.full((30, 50), 9, np.uint8)).save(tmp_path / "images" / f"p{k}.png")
        PILImage.fromarray(np.zeros((30, 50), np.uint8)).save(tmp_path / "images" / f"p{k}_mask.png")
    (tmp_path / "task.yaml").write_text(yaml.safe_dump({
        "name": "blank", "format": "images", "path": ".", "labels": {1: "lesion"}, "image_glob": "images/p?.png",
        "label_glob": "images/*_mask.png", "strip_suffixes": ["_mask"], "mask_encoding": "binary",
        "split_fractions": {"train": 1.0}, "splits": {"train": "train"}}))  # fmt: skip
    with pytest.raises(MedSAValueError, match=r"Task '.*' split 'train' has no examples"):
        training_set(TaskArguments(task=str(tmp_path)), tiny_sam_config(), shuffle_seed=0)


def test_hub_tasks_fail_fast_without_network(monkeypatch):
    from huggingface_hub import constants

    from peft_medsa import MedSAConnectionError

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # loopback: nothing listens there
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for task, repo in (("busi", "Angelou0516/BUSI"), ("btcv", "Angelou0516/btcv")):
        with pytest.raises(MedSAConnectionError, match=rf"Task '{task}' reads the Hub dataset '{repo}', which "
                           r"cannot be reached \(\w+\).*data_dir=DIR"):  # fmt: skip
            load_task(task)


def test_a_train_only_source_is_split_by_a_stable_hash_of_the_case_id(tmp_path, two_class_image):
    image, mask = two_class_image
    write_hub_parquet(tmp_path, [image] * 20, [mask] * 20)  # case0 ... case19, one `train` split
    fractions = {"train": 0.6, "validation": 0.2, "test": 0.2}
    task = spec(
        tmp_path, splits=dict.fromkeys(fractions, "train"), split_by_hash=True, split_fractions=fractions
    )
    seen = {
        split: {e["case_id"] for e in load_task(task, split=split, image_size=IMAGE_SIZE, patch_size=PATCH)}
        for split in fractions
    }
    every = {f"case{i}" for i in range(20)}
    assert set().union(*seen.values()) == every and sum(map(len, seen.values())) == 20  # a partition
    assert all(seen[split] == {c for c in every if hash_split(c, fractions) == split} for split in fractions)
    assert all(seen.values())  # 20 cases: every split gets some


def test_hash_split_specs_must_name_the_fractions_of_their_splits():
    with pytest.raises(ValueError, match="split_by_hash needs `split_fractions` for exactly the splits"):
        TaskSpec.from_dict(spec("/x", splits={"train": "train", "test": "train"}, split_by_hash=True))
