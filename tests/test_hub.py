"""Publishing: a card rendered from a real (tiny) training run, parsed back, and the upload up to the HTTP call."""

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from peft import get_peft_model
from safetensors.torch import load_file
from transformers import SamModel, TrainingArguments

from peft_medsa import MedSAConfig
from peft_medsa.hub import ADAPTER_FILES, build_model_card, push_adapter_folder, save_adapter_with_card
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


def test_card_from_a_training_run_parses(trained_run, tmp_path):
    model, metrics, args, base_dir = trained_run
    results = {
        k.removeprefix("eval_"): v
        for k, v in metrics.items()
        if k.removeprefix("eval_").split("/")[0] in ("dice", "iou", "hd95_px", "nsd_px")
    }
    assert {"dice", "iou", "hd95_px", "nsd_px"} <= results.keys()
    card = build_model_card(
        model,
        task_name="Synthetic squares",
        metrics=results,
        eval_split="validation",
        eval_prompt="one box per target",
        limits="Four synthetic images; says nothing about medical data.",
        training_config=args.to_dict(),
        repo_id="someone/medsa-squares",
    )
    folder = save_adapter_with_card(model, tmp_path / "publish", card)
    parsed = ModelCard.load(folder / "README.md")
    data = parsed.data
    assert data.library_name == "peft" and data.pipeline_tag == "mask-generation"
    assert data.base_model == str(base_dir)
    assert {"medical-imaging", "segment-anything", "medsa", "medsa-paper"} <= set(data.tags)
    reported = {result.metric_type: result.metric_value for result in data.eval_results}
    assert reported == {k: round(v, 4) for k, v in results.items() if v == v}  # NaN is left out
    assert data.eval_results[0].dataset_name == "Synthetic squares"
    assert "Four synthetic images" in parsed.text and '"learning_rate": 0.001' in parsed.text

    # The usage snippet of the card works as written (with this adapter's folder in place of the repo id).
    snippet = (
        parsed.text.split("```python\n")[1].split("```")[0].replace("someone/medsa-squares", str(folder))
    )
    snippet = snippet.replace(
        "processor = SamProcessor.from_pretrained", "_ = "
    )  # a random base has no processor
    namespace = {}
    exec(snippet, namespace)
    assert namespace["model"].peft_config["default"].preset == "paper"


def test_upload_sends_exactly_the_adapter_folder(trained_run, tmp_path, monkeypatch):
    model, metrics, _args, _ = trained_run
    card = build_model_card(
        model,
        task_name="Squares",
        metrics={"dice": metrics["eval_dice"]},
        eval_split="validation",
        eval_prompt="box",
        limits="none",
        training_config={},
        repo_id="someone/medsa-squares",
    )
    folder = save_adapter_with_card(model, tmp_path / "publish", card)
    (folder / "notes.txt").write_text("not part of the adapter")
    calls = {}
    monkeypatch.setattr(
        HfApi, "create_repo", lambda self, repo_id, **kw: calls.setdefault("create", (repo_id, kw))
    )
    monkeypatch.setattr(
        HfApi, "upload_folder", lambda self, **kw: calls.setdefault("upload", kw) and "commit-url"
    )
    push_adapter_folder(folder, "someone/medsa-squares", private=True)
    assert calls["create"] == ("someone/medsa-squares", {"private": True, "exist_ok": True})
    upload = calls["upload"]
    assert upload["repo_id"] == "someone/medsa-squares" and upload["allow_patterns"] == list(ADAPTER_FILES)
    weights = load_file(folder / "adapter_model.safetensors")
    assert weights and all(".medsa_" in key for key in weights)


def test_upload_refuses_an_incomplete_folder(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"lacks \['adapter_model.safetensors', 'README.md'\]"):
        push_adapter_folder(tmp_path, "someone/x")
