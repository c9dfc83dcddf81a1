"""The offline demo tasks (`demo-2d`, `demo-3d`), built on first use from real images that packages ship.

Sources (licenses in docs/data.md):
- nilearn's MNI152 2009 T1 template at 2 mm with its grey/white-matter probability maps, thresholded at 0.5
  into labels 1 = grey matter, 2 = white matter, cut into 5 slabs along z that serve as cases;
- pydicom's `examples_overlay.dcm`, an abdominal MR slice whose overlay 0x6000 holds a hand-drawn liver lesion
  contour (plus some text), filled into label 3 = lesion (2-D only: it is a single slice);
- optionally pyradiomics 3.0.1's sdist test data (brain MR, lung CT, breast MR volumes with tumour labels,
  relabelled 3 = lesion), fetched with pip at build time; skipped, with a log line, when that fails.

Layout, the same as a Hub dataset so that `load_task("demo-...")` reads it through the ordinary path:
`demo-3d/{split}.jsonl` (one `{case_id, image, label}` row per case) + `images/`, `labels/` volume files;
`demo-2d/data/{split}-0000i-of-0000n.parquet` with `image` (16-bit PNG), `mask`, `case_id`, `slice_index`.
Cases, not slices, are split into train/validation/test. The cache lives in `$PEFT_MEDSA_CACHE/demo`
(default `~/.cache/peft_medsa/demo`), outside the repository: never commit it.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .readers import read_volume

logger = logging.getLogger(__name__)

DEMO_VERSION = 2  # 2: float volumes (the MNI template) are rescaled to 16 bits, not truncated to 0
MNI_SLABS = 5
SLICE_STEP = 3  # demo-2d keeps every 3rd labelled slice of each volume
PYRADIOMICS = "pyradiomics==3.0.1"
# case -> split; the MNI152 slabs are parts of one template, so their validation scores are optimistic.
SPLITS = {
    "mni152-slab1": "train", "mni152-slab2": "train", "mni152-slab3": "train",
    "mni152-slab4": "validation", "mni152-slab5": "test",
    "brain1": "train", "lung1": "train", "breast1": "train", "lung2": "validation", "brain2": "test",
    "dicom-overlay": "train",
}  # fmt: skip
LESION = 3


def cache_root() -> Path:
    """The package cache: `$PEFT_MEDSA_CACHE`, default `~/.cache/peft_medsa`."""
    return Path(os.environ.get("PEFT_MEDSA_CACHE", "~/.cache/peft_medsa")).expanduser()


def prepare_demo_task(
    cache_dir: str | Path | None = None, with_pyradiomics: bool = True, force: bool = False
) -> Path:
    """Builds the demo tasks once (a few seconds, plus the optional pyradiomics fetch) and returns their root.

    Concurrent callers are safe: the cache is built in a temporary folder and renamed into place.
    """
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "demo"
    if not force and _cache_version(root) == DEMO_VERSION:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}-{uuid.uuid4().hex}"
    try:
        cases = _mni152_cases(staging / "demo-3d")
        if with_pyradiomics:
            cases += _pyradiomics_cases(staging / "demo-3d", root.parent / "downloads")
        _write_index(staging / "demo-3d", cases)
        _write_slices(staging / "demo-2d", staging / "demo-3d", cases)
        sources = sorted({case["source"] for case in cases} | {"pydicom"})
        (staging / "manifest.json").write_text(
            json.dumps({"version": DEMO_VERSION, "sources": sources}, indent=1)
        )
        if root.exists() and (
            force or _cache_version(root) != DEMO_VERSION
        ):  # stale: move it aside, then drop it
            old = root.parent / f".{root.name}-old-{uuid.uuid4().hex}"
            with contextlib.suppress(OSError):
                os.rename(root, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(staging, root)
        except OSError:  # another process finished first: keep its cache
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Demo tasks ready in %s", root)
    return root


def _cache_version(root: Path) -> int | None:
    manifest = root / "manifest.json"
    return json.loads(manifest.read_text()).get("version") if manifest.is_file() else None


def _mni152_cases(folder: Path) -> list[dict[str, str]]:
    from nilearn.datasets import load_mni152_gm_template, load_mni152_template, load_mni152_wm_template

    t1 = load_mni152_template(resolution=2)
    labels = np.zeros(t1.shape, np.uint8)
    labels[load_mni152_gm_template(resolution=2).get_fdata() > 0.5] = 1
    labels[load_mni152_wm_template(resolution=2).get_fdata() > 0.5] = 2
    label_image = nib.Nifti1Image(labels, t1.affine)
    z = np.nonzero(labels.any(axis=(0, 1)))[0]
    bounds = np.linspace(z.min(), z.max() + 1, MNI_SLABS + 1).round().astype(int)
    cases = []
    for index, (start, stop) in enumerate(itertools.pairwise(bounds), start=1):
        case = f"mni152-slab{index}"
        cases.append(
            _save_case(
                folder, case, t1.slicer[:, :, start:stop], label_image.slicer[:, :, start:stop], "nilearn"
            )
        )
    return cases


def _save_case(
    folder: Path, case: str, image: nib.Nifti1Image, label: nib.Nifti1Image, source: str
) -> dict[str, str]:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    paths = {"image": f"images/{case}.nii.gz", "label": f"labels/{case}.nii.gz"}
    nib.save(image, folder / paths["image"])
    nib.save(label, folder / paths["label"])
    return {"case_id": case, **paths, "source": source}


def _pyradiomics_cases(folder: Path, downloads: Path) -> list[dict[str, str]]:
    try:
        data = _fetch_pyradiomics_data(downloads)
    except (OSError, subprocess.SubprocessError, tarfile.TarError) as error:
        logger.warning(
            "pyradiomics data could not be fetched (%s); the demo is built from nilearn and pydicom only.",
            error,
        )
        return []
    import nrrd

    cases = []
    for case in ("brain1", "brain2", "lung1", "lung2", "breast1"):
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "labels").mkdir(parents=True, exist_ok=True)
        paths = {"image": f"images/{case}.nrrd", "label": f"labels/{case}.nrrd"}
        shutil.copyfile(data / f"{case}_image.nrrd", folder / paths["image"])
        label, header = nrrd.read(str(data / f"{case}_label.nrrd"))
        nrrd.write(str(folder / paths["label"]), (label > 0).astype(np.uint8) * LESION, header)
        cases.append({"case_id": case, **paths, "source": "pyradiomics"})
    return cases


def _fetch_pyradiomics_data(downloads: Path) -> Path:
    """pyradiomics 3.0.1's `data/*.nrrd`, from its sdist (the wheel lacks them), via pip, once."""
    target = downloads / "pyradiomics-3.0.1"
    if len(list(target.glob("*.nrrd"))) == 10:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        # --no-build-isolation: pip prepares the sdist's metadata, and pyradiomics' setup.py imports numpy,
        # which an isolated build environment would lack.
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
                   "--no-binary", ":all:", PYRADIOMICS, "-d", tmp, "--quiet"]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, timeout=600)
        (sdist,) = Path(tmp).glob("pyradiomics-*.tar.gz")
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                name = Path(member.name).name
                if (
                    member.isfile()
                    and Path(member.name).parent.name == "data"
                    and name.endswith(("_image.nrrd", "_label.nrrd"))
                ):
                    (target / name).write_bytes(archive.extractfile(member).read())
    return target


def _write_index(folder: Path, cases: list[dict[str, str]]) -> None:
    for split in ("train", "validation", "test"):
        rows = [
            {k: case[k] for k in ("case_id", "image", "label")}
            for case in cases
            if SPLITS[case["case_id"]] == split
        ]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _dicom_overlay_case() -> tuple[np.ndarray, np.ndarray]:
    """pydicom's overlay example: the MR slice (uint16) and its filled lesion contour as label 3."""
    import pydicom
    from pydicom.data import get_testdata_file

    dataset = pydicom.dcmread(get_testdata_file("examples_overlay.dcm"))
    overlay = dataset.overlay_array(0x6000).astype(bool)
    components, _ = ndimage.label(overlay, structure=np.ones((3, 3)))
    contour = components == np.bincount(components.ravel())[1:].argmax() + 1  # the lesion, not the text
    mask = ndimage.binary_fill_holes(contour).astype(np.uint8) * LESION
    return dataset.pixel_array.astype(np.uint16), mask


def _as_uint16(image: np.ndarray) -> np.ndarray:
    """16-bit PNG pixels: integer images (CT in HU) shifted to start at 0, float images (the MNI template holds
    values in [0, 1]) rescaled to the full range, so that no slice collapses to a constant."""
    shifted = image.astype(np.float64) - image.min()
    if np.issubdtype(image.dtype, np.integer) and shifted.max() <= 65535:
        return shifted.astype(np.uint16)
    return np.round(shifted * (65535 / max(shifted.max(), 1e-12))).astype(np.uint16)


def _write_slices(folder: Path, volumes: Path, cases: list[dict[str, str]]) -> None:
    """demo-2d: every `SLICE_STEP`-th labelled slice of each volume as 16-bit PNG + mask, plus the DICOM slice."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    rows = {split: [] for split in ("train", "validation", "test")}
    for case in cases:
        image, label = read_volume(volumes / case["image"]).array, read_volume(volumes / case["label"]).array
        image = _as_uint16(image)
        labelled = np.nonzero(label.any(axis=(1, 2)))[0]
        for k in labelled[SLICE_STEP // 2 :: SLICE_STEP]:
            rows[SPLITS[case["case_id"]]].append(
                (case["case_id"], int(k), image[k], label[k].astype(np.uint8))
            )
    dicom_image, dicom_mask = _dicom_overlay_case()
    rows[SPLITS["dicom-overlay"]].append(("dicom-overlay", 0, dicom_image, dicom_mask))
    features = Features(
        image=ImageFeature(), mask=ImageFeature(), case_id=Value("string"), slice_index=Value("int32")
    )
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        table = {
            "image": [
                {"bytes": _png(image), "path": f"{case}_{k:03d}.png"} for case, k, image, _ in split_rows
            ],
            "mask": [
                {"bytes": _png(mask), "path": f"{case}_{k:03d}_mask.png"} for case, k, _, mask in split_rows
            ],
            "case_id": [case for case, *_ in split_rows],
            "slice_index": [k for _, k, *_ in split_rows],
        }
        dataset = Dataset.from_dict(table, features=features)
        shards = min(2, len(dataset))
        for index in range(shards):
            path = folder / "data" / f"{split}-{index:05d}-of-{shards:05d}.parquet"
            dataset.shard(shards, index, contiguous=True).to_parquet(str(path))
