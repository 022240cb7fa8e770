"""kpod's exported token weights in TRL's SFTTrainer: the items kpod's train stage builds, and kpod's loss."""

import datasets
import torch
from trl import SFTConfig

from kpod.artifacts import RunPaths
from kpod.config import load_config
from kpod.export import export_weights
from kpod.integrations.trl import KPODSFTTrainer, weighted_sft_dataset
from kpod.models import load_model, load_tokenizer
from kpod.student.data import DistillDataset
from kpod.student.recipe import build_examples
from kpod.student.trainer import weighted_token_loss


def test_sft_trainer_trains_on_kpod_weights_with_kpods_loss(finished_tiny_run, tiny_llama, tmp_path):
    run, overrides = finished_tiny_run
    export_weights(run, tmp_path / "weights.parquet")
    rows = datasets.Dataset.from_parquet(str(tmp_path / "weights.parquet"))
    tokenizer = load_tokenizer(str(tiny_llama))
    train = weighted_sft_dataset(rows, tokenizer, max_length=512)

    # the items kpod's own train stage builds for these rationales (whole rationale, c = 0)
    cfg = load_config(overrides=overrides)
    examples = {e.key: e for e in build_examples(cfg, RunPaths(run))}
    own = DistillDataset(
        [examples[k] for k in rows["key"]], tokenizer, seq2seq=False, max_input_tokens=256, max_target_tokens=256
    )
    own.phase = 10**6  # the last phase: the whole rationale in the target
    for i in range(len(rows)):
        assert train[i]["input_ids"] == own[i]["input_ids"]
        assert train[i]["labels"] == own[i]["labels"]
        assert train[i]["token_weights"] == own[i]["token_weights"]

    torch.manual_seed(0)
    model = load_model(str(tiny_llama))
    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        max_length=512,
    )
    trainer = KPODSFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    assert {"input_ids", "labels", "token_weights"} <= batch.keys()
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=-100)
    weights = torch.nn.functional.pad(batch["token_weights"][:, 1:], (0, 1), value=0.0)
    expected = weighted_token_loss(logits, labels, weights)
    assert torch.allclose(loss, expected)
    # the loss follows the batch's weights (a tiny run's own are nearly uniform: its zero-started head barely moves)
    tilt = 0.5 + (torch.arange(batch["token_weights"].shape[1]) % 2)
    tilted = {**batch, "token_weights": batch["token_weights"] * tilt}
    with torch.no_grad():
        tilted_loss = trainer.compute_loss(model, tilted)
    tilted_weights = torch.nn.functional.pad(tilted["token_weights"][:, 1:], (0, 1), value=0.0)
    assert torch.allclose(tilted_loss, weighted_token_loss(logits, labels, tilted_weights))
    assert not torch.allclose(tilted_loss, loss)

    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    history = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(history)))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
