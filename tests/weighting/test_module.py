import pytest
import torch

from kpod.student.load import load_model, load_tokenizer
from kpod.weighting.data import PrefixCollator, WeightingItem, prefix_lengths
from kpod.weighting.diagnostic import run_keypoint_diagnostic, synthetic_items, token_roles
from kpod.weighting.module import KeypointModel, TokenWeighter, _score_function_term, straight_through_gumbel
from kpod.weighting.offsets import TokenWeights, map_weights
from kpod.weighting.train import fit_keypoint_model


def _model(reasoner_dir, student_dir=None, alpha=0.5, seed=0, score_function="greedy"):
    torch.manual_seed(seed)
    student = load_model(str(student_dir or reasoner_dir))
    reasoner = load_model(str(reasoner_dir))
    weighter = TokenWeighter(student.get_input_embeddings().weight.detach().clone(), heads=4, mlp_hidden=32)
    model = KeypointModel(weighter, reasoner, alpha=alpha, score_function=score_function)
    collator = PrefixCollator(load_tokenizer(str(student_dir or reasoner_dir)), load_tokenizer(str(reasoner_dir)),
                              model.seq2seq, "steps", 64, 32)
    return model, collator


ITEMS = [WeightingItem("a", "Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips.",
                       ["Natalia sold 48/2 = 24 clips in May.\n", "She sold 48+24 = 72 clips."], "How many clips?", "72"),
         WeightingItem("b", "Weng earns 0.2 per minute. She earned 10.", ["Weng earns 0.2 per minute. ", "She earned 10."],
                       "How much did Weng earn?", "10")]


def test_straight_through_gumbel_is_hard_forward_soft_backward():
    w = torch.full((1000,), 0.8, requires_grad=True)
    m = straight_through_gumbel(w)
    assert set(m.detach().unique().tolist()) <= {0.0, 1.0}
    assert 0.75 < m.mean().item() < 0.85
    m.sum().backward()
    assert w.grad.abs().sum() > 0


@pytest.mark.parametrize("score_function", ["none", "greedy"])
@pytest.mark.parametrize("pair", [("tiny_t5", "tiny_t5"), ("tiny_llama", "tiny_llama"), ("tiny_llama", "tiny_t5")])
def test_answer_loss_gradient_reaches_the_mlp_through_the_mask(request, pair, score_function):
    """alpha = 0: the only gradient the MLP f_w can get is from L_p through m (straight-through
    alone, and with the score-function term)."""
    student, reasoner = (request.getfixturevalue(name) for name in pair)
    model, collator = _model(reasoner, student, alpha=0.0, score_function=score_function)
    model.train()
    out = model(collator(ITEMS))
    out["loss"].backward()
    grads = [p.grad for p in model.weighter.mlp.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum().item() for g in grads) > 0
    assert model.weighter.embed.weight.grad is None  # Emb stays frozen
    assert out["answer_loss"].item() == pytest.approx(out["objective"].item())


def test_score_function_term_is_the_reinforce_gradient():
    """d/dw_j of the surrogate = advantage * (m_j - w_j) / (w_j (1 - w_j)): a sample whose loss
    beat its baseline (advantage < 0) makes the kept tokens likelier and the masked ones less."""
    w = torch.tensor([[0.3, 0.6, 0.9, 0.5]], requires_grad=True)
    m = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    valid = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    advantage = torch.tensor([-2.0])
    _score_function_term(advantage, w, m, valid).backward()
    expected = advantage * (m - w.detach()) / (w.detach() * (1 - w.detach())) * valid
    assert torch.allclose(w.grad, expected)
    assert w.grad[0, 0] < 0 and w.grad[0, 1] > 0 and w.grad[0, 3] == 0  # gradient descent: keep 0, mask 1


def test_score_function_term_is_unbiased():
    """Averaged over Bernoulli(w) samples, the surrogate's gradient matches the exact dE[L]/dw of a
    loss that only grows when token 0 is masked (the case where straight-through sees ~0)."""
    torch.manual_seed(0)
    w = torch.tensor([0.4, 0.7], requires_grad=True)
    m = torch.bernoulli(w.detach().expand(200_000, 2))
    loss = 2.0 * (1 - m[:, 0])  # E[L] = 2 (1 - w_0): dE/dw = (-2, 0)
    baseline = 2.0 * (1 - 0.5)
    _score_function_term(loss - baseline, w.expand(200_000, 2), m, torch.ones_like(m)).backward()
    assert w.grad[0].item() == pytest.approx(-2.0, abs=0.05) and w.grad[1].item() == pytest.approx(0.0, abs=0.05)


def test_keypoint_diagnostic_finds_the_computation(data_dir, tmp_path):
    """The issue's proof: on synthetic rationales whose answer depends on the operator and one
    operand only, the learned w rank those tokens above the filler with ROC AUC >= 0.9."""
    result = run_keypoint_diagnostic(data_dir / "tokenizers" / "llama", n=600, seed=0, progress=False, work_dir=tmp_path)
    print(result)
    assert result["roc_auc"] >= 0.9
    assert result["mean_w_needed"] - result["mean_w_filler"] > 0.3


def test_token_roles_of_a_synthetic_rationale():
    tokens = ["▁so", "▁", "7", "▁-", "▁", "3", "▁now", "."]
    assert token_roles(tokens, "3") == ["filler", None, "other", "needed", None, "needed", "filler", None]
    assert token_roles(["▁", "7", "▁+", "▁", "3"], "7") == [None, "needed", "needed", None, "other"]


def test_all_prefixes_in_one_batch(tiny_llama):
    _, collator = _model(tiny_llama)
    batch = collator(ITEMS)
    assert batch["prefix_owner"].tolist() == [0, 0, 1, 1]
    full = batch["rationale_mask"].sum(1).tolist()
    assert batch["prefix_length"].tolist()[1] == full[0] and batch["prefix_length"].tolist()[3] == full[1]
    assert prefix_lengths([3, 7, 9], ["abc", "defg", "hi"], "all") == [1, 2, 3]


def test_alpha_moves_the_mean_weight(tiny_llama):
    items = synthetic_items(96, seed=0)
    means = {}
    for alpha in (0.0, 3.0):
        model, collator = _model(tiny_llama, alpha=alpha, seed=1)
        history = fit_keypoint_model(model, collator, items, 3, 3e-3, 8, seed=0, progress=False, warmup_epochs=2)
        means[alpha] = (history[2]["mean_w"], history[-1]["mean_w"])  # first masked epoch, last epoch
    print(means)
    assert means[3.0][1] < means[3.0][0] and means[0.0][1] > means[0.0][0], "alpha = 0 raises w, a large alpha lowers it"
    assert means[3.0][1] < means[0.0][1]


def test_weight_mapping_is_exact_for_identical_tokenisation(tiny_t5):
    tokenizer = load_tokenizer(str(tiny_t5))
    text = ITEMS[0].rationale
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    stored = [i / len(offsets) for i in range(len(offsets))]
    chars = TokenWeights(offsets, stored).char_array(len(text))
    assert map_weights(chars, offsets) == pytest.approx(stored)
    # a coarser tokenisation takes the max of the overlapped tokens
    assert map_weights(chars, [(0, len(text))])[0] == pytest.approx(max(stored))
