"""The held-out rationale loss: teacher-forced NLL per token of reference rationales, beside accuracy."""

import json

import pytest
import torch

from kpod.data import load_dataset_splits
from kpod.decoding import rationale_loss
from kpod.layout import DistillExample, encode_example
from kpod.models import load_model, load_tokenizer
from kpod.rationale import split_steps


def test_it_is_the_models_own_loss_on_the_training_layout(tiny_llama, data_dir):
    model, tok = load_model(str(tiny_llama)), load_tokenizer(str(tiny_llama))
    questions = load_dataset_splits("gsm8k", data_dir).test[:3]
    result = rationale_loss(model, tok, [(q, q.solution) for q in questions], batch_size=2)
    assert result["questions"] == 3 and result["se"] > 0
    expected = []
    for q in questions:  # one at a time, no padding: transformers' own mean loss over the target tokens
        example = DistillExample(q.id, q.question, answer=q.answer, steps=split_steps(q.solution))
        enc = encode_example(example, 0, tok, seq2seq=False, max_input_tokens=512, max_target_tokens=512)
        ids = torch.tensor([enc.source_ids + enc.target_ids])
        labels = torch.tensor([[-100] * len(enc.source_ids) + enc.target_ids])
        with torch.no_grad():
            expected.append(model(input_ids=ids, labels=labels).loss.item())
    assert result["mean"] == pytest.approx(sum(expected) / 3, rel=1e-4)


def test_evaluate_writes_it_and_compare_shows_it(finished_tiny_run, capsys):
    from kpod.cli import main

    run, _ = finished_tiny_run
    metrics = json.loads((run / "eval/test/metrics.json").read_text())
    loss = metrics["rationale_loss"]
    assert (
        loss["questions"] == metrics["total"]
        and loss["mean"] > 0
        and loss["source"] == "the dataset's worked solutions"
    )
    assert main(["compare", str(run)]) == 0
    assert f"{loss['mean']:.3f}" in capsys.readouterr().out
