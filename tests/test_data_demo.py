"""The offline demo tasks: built from nilearn and pydicom data, loaded through the ordinary Hub-layout path."""

import json
import time

import pytest
import torch

from peft_medsa.data import SamDataCollator, load_task, prepare_demo_task


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory):
    """A fresh demo cache without the optional pyradiomics fetch (no test depends on the network)."""
    cache = tmp_path_factory.mktemp("peft_medsa_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PEFT_MEDSA_CACHE", str(cache))
        start = time.perf_counter()
        root = prepare_demo_task(with_pyradiomics=False)
        build_seconds = time.perf_counter() - start
        yield root, build_seconds


def test_demo_builds_quickly_in_the_hub_layout(demo_cache):
    root, build_seconds = demo_cache
    assert build_seconds < 60
    assert json.loads((root / "manifest.json").read_text())["sources"] == ["nilearn", "pydicom"]
    assert sorted(p.name for p in (root / "demo-2d" / "data").glob("train-*.parquet")) == [
        "train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]  # fmt: skip
    cases = {
        split: [
            json.loads(line)["case_id"]
            for line in (root / "demo-3d" / f"{split}.jsonl").read_text().splitlines()
        ]
        for split in ("train", "validation", "test")
    }
    assert cases == {
        "train": ["mni152-slab1", "mni152-slab2", "mni152-slab3"],
        "validation": ["mni152-slab4"],
        "test": ["mni152-slab5"],
    }
    assert prepare_demo_task() == root  # prepared once, then reused


def test_demo_2d_loads_real_slices_with_all_three_classes(demo_cache, sam_config):
    examples = list(load_task("demo-2d", sam_config=sam_config, prompt="3-click"))
    assert {e["case_id"] for e in examples} >= {"mni152-slab1", "dicom-overlay"}
    assert {int(e["class_id"]) for e in examples} == {1, 2, 3}  # grey matter, white matter, the DICOM lesion
    images = {(e["case_id"], int(e["slice_index"])): e["pixel_values"] for e in examples}
    assert all(image.std() > 0.1 for image in images.values()), "every slice shows an image, not a constant"
    assert not torch.equal(images[("mni152-slab1", 4)], images[("mni152-slab1", 7)])
    lesion = next(e for e in examples if e["case_id"] == "dicom-overlay")
    assert lesion["original_size"].tolist() == [300, 484] and lesion["labels"].sum() > 0
    splits = {
        s: {e["case_id"] for e in load_task("demo-2d", split=s, sam_config=sam_config)}
        for s in ("validation", "test")
    }
    assert splits == {"validation": {"mni152-slab4"}, "test": {"mni152-slab5"}}


def test_demo_3d_chunks_run_through_a_tiny_sam(demo_cache, sam_config, sam_model):
    examples = list(
        load_task("demo-3d", sam_config=sam_config, prompt="bbox-0.75", depth=4, split="validation")
    )
    assert {int(e["class_id"]) for e in examples} == {1, 2}
    assert all(e["spacing"].tolist() == [2.0, 2.0, 2.0] for e in examples)
    batch = SamDataCollator()(examples[:2])
    assert batch["pixel_values"].shape == (2, 3, 4, 64, 64) and batch["input_boxes"].shape == (2, 4, 1, 4)
    # The plain SamModel takes the per-slice (B*D) view; the Med-SA model takes the 5-D one directly.
    slices = batch["pixel_values"].permute(0, 2, 1, 3, 4).reshape(8, 3, 64, 64)
    with torch.no_grad():
        outputs = sam_model(
            pixel_values=slices, input_boxes=batch["input_boxes"].flatten(0, 1), multimask_output=False
        )
    assert outputs.pred_masks.shape[-2:] == batch["labels"].shape[-2:] == (32, 32)


def test_a_stale_cache_is_rebuilt(tmp_path):
    root = tmp_path / "demo"
    root.mkdir()
    (root / "manifest.json").write_text(json.dumps({"version": 0}))
    (root / "stale.txt").write_text("built by an older peft-medsa")
    prepare_demo_task(cache_dir=root, with_pyradiomics=False)
    assert not (root / "stale.txt").exists()
    assert (
        json.loads((root / "manifest.json").read_text())["version"] >= 1
        and (root / "demo-2d" / "data").is_dir()
    )
