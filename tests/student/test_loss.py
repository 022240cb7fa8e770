import math

import numpy as np
import pytest
import torch

from kpod.artifacts import RunPaths
from kpod.config import load_config
from kpod.layout import DistillCollator, DistillExample
from kpod.models import load_student
from kpod.student.data import DistillDataset
from kpod.student.recipe import training_arguments
from kpod.student.trainer import DistillTrainer, weighted_token_loss
from kpod.token_weights import TokenWeights, loss_weights

STEPS = ["Natalia sold 48/2 = 24 clips in May.\n", "Natalia sold 48+24 = 72 clips altogether."]
QUESTION = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many?"


def test_weighted_loss_by_hand():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]])
    labels = torch.tensor([[0, 1], [2, -100]])
    weights = torch.tensor([[0.5, 2.0], [1.0, 0.0]])

    def nll(row, k):
        return -math.log(math.exp(row[k]) / sum(math.exp(x) for x in row))

    expected = (0.5 * nll([2, 0, 0], 0) + 2.0 * nll([0, 1, 0], 1) + 1.0 * nll([0, 0, 3], 2)) / 3
    assert weighted_token_loss(logits, labels, weights).item() == pytest.approx(expected, rel=1e-6)
    # under accumulation the Trainer passes the global token count
    assert weighted_token_loss(logits, labels, weights, 6).item() == pytest.approx(expected / 2, rel=1e-6)


def _examples(weights=None):
    return [
        DistillExample("a#0", QUESTION, "72", STEPS, weights),
        DistillExample(
            "b#0",
            "Weng earns $12 an hour. How much for 50 minutes?",
            "10",
            ["Weng earns 12/60 = $0.2 per minute.\n", "Working 50 minutes, she earned 0.2 x 50 = $10."],
            weights,
        ),
    ]


@pytest.mark.parametrize("fixture", ["tiny_t5", "tiny_llama"])
def test_all_ones_weights_give_plain_cross_entropy(request, tmp_path, fixture):
    folder = request.getfixturevalue(fixture)
    model, tokenizer = load_student(str(folder))
    seq2seq = model.config.is_encoder_decoder
    dataset = DistillDataset(_examples(), tokenizer, seq2seq)
    batch = DistillCollator(tokenizer.pad_token_id, seq2seq)([dataset[0], dataset[1]])
    cfg = load_config(overrides={"output_dir": str(tmp_path), "report_to": "none"})
    trainer = DistillTrainer(model=model, args=training_arguments(cfg, RunPaths(tmp_path)), train_dataset=dataset)
    ours = trainer.compute_loss(model, dict(batch))
    plain = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert ours.item() == pytest.approx(plain.item(), rel=1e-5)


def test_weights_follow_character_offsets(tiny_t5):
    _, tokenizer = load_student(str(tiny_t5))
    rationale = "".join(STEPS)
    enc = tokenizer(rationale, add_special_tokens=False, return_offsets_mapping=True)
    stored = [0.1 + 0.8 * (i % 2) for i in range(len(enc["input_ids"]))]
    weights = TokenWeights([tuple(o) for o in enc["offset_mapping"]], stored)
    ds = DistillDataset(_examples(weights)[:1], tokenizer, True, weight_norm="none")
    item = ds[0]
    n = len(enc["input_ids"])
    # same tokenisation of the rationale part: the stored weights come back exactly, then the answer sentence at 1
    assert item["labels"][:n] == enc["input_ids"]
    assert item["token_weights"][:n] == pytest.approx(stored)
    assert item["token_weights"][n:] == [1.0] * (len(item["labels"]) - n)
    normed = DistillDataset(_examples(weights)[:1], tokenizer, True)[0]["token_weights"][:n]
    assert sum(normed) / n == pytest.approx(1.0)
    floored = DistillDataset(_examples(weights)[:1], tokenizer, True, weight_norm="none", weight_floor=0.5)[0]
    assert floored["token_weights"][:n] == pytest.approx([0.5 + 0.5 * w for w in stored])  # 0.1 -> 0.55, 0.9 -> 0.95
    assert floored["token_weights"][n:] == [1.0] * (len(floored["labels"]) - n)


def test_input_steps_move_into_the_source(tiny_llama):
    _, tokenizer = load_student(str(tiny_llama))
    example = DistillExample("a#0", QUESTION, "72", STEPS, None, input_steps=[2, 1, 0])
    ds = DistillDataset([example], tokenizer, False)
    targets = []
    for phase in range(3):
        ds.phase = phase
        item = ds[0]
        target_ids = [t for t in item["labels"] if t != -100]
        targets.append(tokenizer.decode(target_ids, skip_special_tokens=True))
        assert len(item["input_ids"]) == len(item["labels"]) == len(item["token_weights"])
    assert targets[0].strip() == "Therefore, the answer is 72."
    assert targets[1].strip().startswith("Natalia sold 48+24") and "48/2" not in targets[1]
    assert targets[2].strip().startswith("Natalia sold 48/2")
    ds.phase = 1
    assert ds[0] is ds[0]  # tokenised once per (example, c)


def test_loss_weights_floor_then_mean_one_on_the_rationale_only():
    body = np.array([True, True, True, False])
    out = loss_weights(np.array([0.0, 0.5, 1.0, 7.0]), body, floor=0.5)
    # floored: 0.5, 0.75, 1.0 (mean 0.75), rescaled to mean 1; the answer token is left as given
    np.testing.assert_allclose(out, [2 / 3, 1.0, 4 / 3, 7.0])
    np.testing.assert_allclose(loss_weights(np.array([0.2, 0.6]), np.array([True, True]), mean_one=False), [0.2, 0.6])


def test_bf16_logits_are_scored_in_float32_chunks_with_the_same_loss_and_gradient(monkeypatch):
    """The chunked, recomputed path gives the loss and gradient of scoring the whole float32 copy."""
    from kpod.student import trainer

    torch.manual_seed(0)
    logits32 = torch.randn(3, 7, 50)
    labels = torch.randint(0, 50, (3, 7))
    labels[0, :2] = -100
    weights = torch.rand(3, 7) * 2
    reference = logits32.to(torch.bfloat16).float().requires_grad_()
    expected = trainer.weighted_token_loss(reference, labels, weights)
    expected.backward()
    monkeypatch.setattr(trainer, "LOSS_CHUNK_ELEMENTS", 4 * 50)  # chunks of 4 rows: 6 chunks, one partial
    bf16 = logits32.to(torch.bfloat16).requires_grad_()
    loss = trainer.weighted_token_loss(bf16, labels, weights, num_items_in_batch=(labels != -100).sum())
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, expected, rtol=1e-6)
    assert torch.allclose(bf16.grad.float(), reference.grad, atol=1e-3)  # the gradient is stored in bf16
