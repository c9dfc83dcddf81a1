"""Publishing: a card rendered from a real (tiny) training run, parsed back, and uploads with the Hub mocked at
the `HfApi` boundary (the commit operations that would be sent)."""

import json
import math

import huggingface_hub.hf_api
import pytest
import torch
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl, constants, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from peft import get_peft_model
from transformers import SamModel, TrainingArguments

from peft_medsa import MedSAConfig, MedSAConnectionError, MedSAError, MedSAValueError
from peft_medsa.hub import build_model_card, push_adapter_folder, save_adapter_with_card
from peft_medsa.training import MedSATrainer, make_compute_metrics


def square_examples(count: int) -> list[dict[str, torch.Tensor]]:
    """Bright squares on noise, a box prompt around each, labels at the mask resolution (32 x 32)."""
    generator = torch.Generator().manual_seed(0)
    examples = []
    for i in range(count):
        top, left = 8 + i % 4, 12 + i % 5
        image = torch.randn(3, 64, 64, generator=generator) * 0.1
        image[:, top : top + 24, left : left + 24] += 1.0
        labels = torch.zeros(1, 32, 32)
        labels[0, top // 2 : (top + 24) // 2, left // 2 : (left + 24) // 2] = 1.0
        box = torch.tensor([[left, top, left + 24, top + 24]], dtype=torch.float32)
        examples.append({"pixel_values": image, "input_boxes": box, "labels": labels})
    return examples


@pytest.fixture
def trained_run(sam_model, tmp_path):
    """A PeftModel trained for a few steps with MedSATrainer, and its evaluation metrics."""
    base_dir = tmp_path / "base"
    sam_model.save_pretrained(base_dir)
    model = get_peft_model(SamModel.from_pretrained(base_dir), MedSAConfig())
    args = TrainingArguments(
        tmp_path / "run",
        max_steps=4,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
    )
    trainer = MedSATrainer(
        model=model,
        args=args,
        train_dataset=square_examples(8),
        eval_dataset=square_examples(4),
        compute_metrics=make_compute_metrics(),
    )
    trainer.train()
    return model, trainer.evaluate(), args, base_dir


class FakeHub:
    """`HfApi.create_repo` / `create_commit` replaced: records the repository and the files of each commit."""

    def __init__(self, monkeypatch, fail: Exception | None = None):
        self.repos, self.commits, self.fail = [], [], fail
        monkeypatch.setattr(huggingface_hub.hf_api, "is_xet_available", lambda: False)  # one create_commit
        monkeypatch.setattr(HfApi, "create_repo", self.create_repo)
        monkeypatch.setattr(HfApi, "create_commit", self.create_commit)
        monkeypatch.setattr(HfApi, "_validate_yaml", lambda *args, **kwargs: None)  # the Hub's card linter
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")

    def create_repo(self, repo_id, **kwargs):
        if self.fail:
            raise self.fail
        self.repos.append((repo_id, kwargs))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, **kwargs):
        files = {}
        for operation in operations:
            with operation.as_file() as handle:
                files[operation.path_in_repo] = handle.read()
        self.commits.append({"repo_id": repo_id, "files": files, **kwargs})
        return CommitInfo(f"https://huggingface.co/{repo_id}/commit/abc", "m", "", "abc")


def quality(metrics):
    return {
        k.removeprefix("eval_"): v
        for k, v in metrics.items()
        if k.startswith(("eval_dice", "eval_iou", "eval_hd95", "eval_nsd"))
    }


def test_card_from_a_training_run_round_trips(trained_run, tmp_path):
    model, metrics, args, base_dir = trained_run
    results = {**quality(metrics), "hd95_undefined": 1.0}
    assert {"dice", "iou", "hd95_px", "nsd_px"} <= results.keys()
    card = build_model_card(
        model,
        task_name="Synthetic squares",
        metrics=results,
        eval_split="validation",
        eval_protocol="prompt `box`, seed 0",
        nsd_tolerance=2.0,
        limits="Four synthetic images; says nothing about medical data.",
        training_config=args.to_dict(),
        repo_id="someone/medsa-squares",
        data_license="CC BY-NC-SA 4.0",
    )
    folder = save_adapter_with_card(model, tmp_path / "publish", card)
    metadata = metadata_load(folder / "README.md")
    assert metadata["library_name"] == "peft" and metadata["license"] == "apache-2.0"
    assert "base_model" not in metadata  # a local folder is named in the text only
    assert f"`{base_dir}`" in ModelCard.load(folder / "README.md").text
    assert metadata["tags"] == ["medical", "segment-anything", "medsa", "synthetic-squares"]
    name, eval_results = model_index_to_eval_results(metadata["model-index"])
    assert name == "medsa-squares"
    scores = {k: round(v, 4) for k, v in results.items() if math.isfinite(v) and k != "hd95_undefined"}
    assert {r.metric_type: r.metric_value for r in eval_results} == scores  # NaN and counts left out
    by_type = {r.metric_type: r for r in eval_results}
    assert by_type["dice"].metric_name == "Dice" and by_type["dice"].dataset_split == "validation"
    assert by_type["dice"].metric_config == "prompt `box`, seed 0"
    assert by_type["nsd_px"].metric_config == "prompt `box`, seed 0; NSD tolerance 2 px"  # unit from the key
    text = ModelCard.load(folder / "README.md").text
    assert (
        "HD95 and NSD are in pixels of the original image (no spacing)." in text and "millimetres" not in text
    )
    assert "Four synthetic images" in text and '"learning_rate": 0.001' in text and "CC BY-NC-SA 4.0" in text
    assert "| HD95 (undefined) | 1.0000 |" in text

    # The usage snippet of the card works as written (with this adapter's folder in place of the repo id).
    snippet = text.split("```python\n")[1].split("```")[0].replace("someone/medsa-squares", str(folder))
    snippet = snippet.replace("processor = SamProcessor.from_pretrained", "_ = ")  # a random base has none
    namespace = {}
    exec(snippet, namespace)
    assert namespace["model"].peft_config["default"].preset == "paper"


def test_metric_names_carry_units_and_classes():
    from peft_medsa.hub import is_count, metric_name, unit_of

    assert metric_name("hd95_mm/spleen") == "HD95 (mm), spleen"
    assert metric_name("nsd_px") == "NSD (px)" and metric_name("iou") == "IOU"
    assert [unit_of(k) for k in ("hd95_mm/spleen", "nsd_px", "dice", "hd95_undefined")] == [
        "mm",
        "px",
        None,
        None,
    ]
    assert is_count("hd95_undefined") and is_count("hd95_mm_undefined/liver") and not is_count("hd95_mm")


def test_a_hub_base_model_enters_the_metadata(trained_run):
    model, _, _, _ = trained_run
    model.peft_config["default"].base_model_name_or_path = "facebook/sam-vit-base"
    card = build_model_card(model)
    assert card.data.base_model == "facebook/sam-vit-base" and card.data.eval_results is None
    assert "https://huggingface.co/facebook/sam-vit-base" in card.text and "## Results" not in card.text


def test_save_pretrained_writes_the_medsa_card_and_keeps_a_trained_one(trained_run, tmp_path):
    model, metrics, _, _ = trained_run
    model.save_pretrained(tmp_path / "plain")  # peft's own save: the Med-SA card, not peft's generic one
    assert metadata_load(tmp_path / "plain" / "README.md")["tags"] == ["medical", "segment-anything", "medsa"]
    card = build_model_card(model, task_name="Squares", metrics=quality(metrics), eval_split="validation")
    save_adapter_with_card(model, tmp_path / "run", card)
    model.save_pretrained(tmp_path / "run")  # saving again keeps the card with results
    assert ModelCard.load(tmp_path / "run" / "README.md").data.eval_results


def test_upload_sends_exactly_the_published_files(trained_run, tmp_path, monkeypatch):
    model, metrics, _args, _ = trained_run
    card = build_model_card(model, task_name="Squares", metrics=quality(metrics), eval_split="validation")
    folder = save_adapter_with_card(model, tmp_path / "publish", card)
    for name in ("all_results.json", "eval_results.json"):
        (folder / name).write_text(json.dumps(metrics))
    for name in ("notes.txt", "training_args.bin", "checkpoint-2/adapter_model.safetensors"):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(b"not published")
    hub = FakeHub(monkeypatch)
    url = push_adapter_folder(folder, "someone/medsa-squares", private=True)
    assert url == "https://huggingface.co/someone/medsa-squares/commit/abc"
    assert hub.repos == [("someone/medsa-squares", {"private": True, "exist_ok": True})]
    (commit,) = hub.commits
    assert sorted(commit["files"]) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "all_results.json",
        "eval_results.json",
    ]
    assert commit["files"]["adapter_model.safetensors"] == (folder / "adapter_model.safetensors").read_bytes()
    assert b"- medsa" in commit["files"]["README.md"]


def test_peft_push_to_hub_sends_the_medsa_card(trained_run, monkeypatch):
    model, _, _, _ = trained_run
    hub = FakeHub(monkeypatch)
    model.push_to_hub("someone/medsa-squares", private=False)
    (commit,) = hub.commits
    assert sorted(commit["files"]) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    card = ModelCard(commit["files"]["README.md"].decode())
    assert card.data.library_name == "peft" and "medsa" in card.data.tags
    assert 'PeftModel.from_pretrained(base, "someone/medsa-squares")' in card.text
    assert json.loads(commit["files"]["adapter_config.json"])["peft_type"] == "MEDSA"


@pytest.mark.parametrize("offline", [True, False], ids=["offline", "no-token"])
def test_push_without_hub_access_fails_fast_and_keeps_the_folder(trained_run, tmp_path, monkeypatch, offline):
    model, _, _, _ = trained_run
    folder = save_adapter_with_card(model, tmp_path / "publish", build_model_card(model))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    hub = FakeHub(monkeypatch)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr("peft_medsa.hub.get_token", lambda: None)
    error = MedSAConnectionError if offline else MedSAValueError
    with pytest.raises(error, match="HF_HUB_OFFLINE=1 is set" if offline else "no token"):
        push_adapter_folder(folder, "someone/x")
    assert hub.repos == [] and hub.commits == []  # stopped before any request
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_failed_upload_says_how_to_retry(trained_run, tmp_path, monkeypatch):
    model, _, _, _ = trained_run
    folder = save_adapter_with_card(model, tmp_path / "publish", build_model_card(model))
    FakeHub(monkeypatch, fail=ConnectionError("Name or service not known"))
    with pytest.raises(MedSAError, match=rf"Nothing was lost.*retry with `medsa push {folder} someone/x`"):
        push_adapter_folder(folder, "someone/x")
    assert (folder / "adapter_model.safetensors").is_file()


def test_upload_refuses_an_incomplete_folder(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"lacks \['adapter_model.safetensors', 'README.md'\]"):
        push_adapter_folder(tmp_path, "someone/x")
