import math

import pytest
import torch

from kpod.models import load_model, load_tokenizer
from kpod.token_weights import TokenWeights, map_weights
from kpod.weighting.data import PrefixCollator, WeightingItem, prefix_lengths
from kpod.weighting.diagnostic import run_keypoint_diagnostic, synthetic_items, token_roles
from kpod.weighting.module import KeypointModel, TokenWeighter, score_function_surrogate, straight_through_gumbel
from kpod.weighting.train import fit_keypoint_model


def _model(reasoner_dir, student_dir=None, alpha=0.5, seed=0, keep_rate=0.8, head_init="random", **options):
    torch.manual_seed(seed)
    student = load_model(str(student_dir or reasoner_dir))
    reasoner = load_model(str(reasoner_dir))
    weighter = TokenWeighter(
        student.get_input_embeddings().weight.detach().clone(),
        heads=4,
        mlp_hidden=32,
        keep_rate=keep_rate,
        head_init=head_init,
    )
    model = KeypointModel(weighter, reasoner, alpha=alpha, **options)
    collator = PrefixCollator(
        load_tokenizer(str(student_dir or reasoner_dir)),
        load_tokenizer(str(reasoner_dir)),
        model.seq2seq,
        "steps",
        64,
        32,
    )
    return model, collator


ITEMS = [
    WeightingItem(
        "a",
        "Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips.",
        ["Natalia sold 48/2 = 24 clips in May.\n", "She sold 48+24 = 72 clips."],
        "How many clips?",
        "72",
    ),
    WeightingItem(
        "b",
        "Weng earns 0.2 per minute. She earned 10.",
        ["Weng earns 0.2 per minute. ", "She earned 10."],
        "How much did Weng earn?",
        "10",
    ),
]


def test_straight_through_gumbel_is_hard_forward_soft_backward():
    w = torch.full((1000,), 0.8, requires_grad=True)
    m = straight_through_gumbel(w)
    assert set(m.detach().unique().tolist()) <= {0.0, 1.0}
    assert 0.75 < m.mean().item() < 0.85
    m.sum().backward()
    assert w.grad.abs().sum() > 0


ESTIMATORS = [
    dict(estimator="straight_through", masking="embedding", reasoner_input="contextual"),
    dict(estimator="score_function", masking="embedding", reasoner_input="contextual"),
    dict(estimator="score_function", masking="delete", reasoner_input="token"),
]


@pytest.mark.parametrize("options", ESTIMATORS, ids=lambda o: f"{o['estimator']}-{o['masking']}")
@pytest.mark.parametrize("pair", [("tiny_t5", "tiny_t5"), ("tiny_llama", "tiny_llama"), ("tiny_llama", "tiny_t5")])
def test_answer_loss_gradient_reaches_the_mlp_through_the_mask(request, pair, options):
    """alpha = 0: the only gradient the MLP f_w can get is from L_p through the mask."""
    student, reasoner = (request.getfixturevalue(name) for name in pair)
    model, collator = _model(reasoner, student, alpha=0.0, **options)
    model.train()
    out = model(collator(ITEMS))
    out["loss"].backward()
    grads = [p.grad for p in model.weighter.mlp.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum().item() for g in grads) > 0
    assert model.weighter.embed.weight.grad is None  # Emb stays frozen
    assert out["answer_loss"].item() == pytest.approx(out["objective"].item())


def test_frozen_reasoner_costs_no_reasoner_gradient(tiny_llama):
    """A frozen reasoner with the score-function estimator: the reasoner runs without autograd, only
    the weighter learns, and a deleted token is really gone (same loss as a prompt without it)."""
    model, collator = _model(tiny_llama)  # defaults: score_function, delete, reasoner_tokens
    model.freeze_reasoner_side()
    model.train()
    out = model(collator(ITEMS))
    out["loss"].backward()
    assert all(p.grad is None for p in model.reasoner.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.weighter.mlp.parameters())
    # deletion = the reasoner reading the rationale without those tokens
    model.eval()
    batch = collator(ITEMS[:1])
    keep = torch.ones_like(batch["rationale_mask"], dtype=torch.float)
    keep[0, 2:5] = 0
    view = model._reasoner_view(batch, None, None)
    deleted = model._prefix_losses(batch, view, keep.unsqueeze(0))[0, -1]
    short = dict(
        batch,
        rationale_ids=torch.cat([batch["rationale_ids"][:, :2], batch["rationale_ids"][:, 5:]], 1),
        rationale_mask=torch.cat([batch["rationale_mask"][:, :2], batch["rationale_mask"][:, 5:]], 1),
        prefix_owner=torch.tensor([0]),
        prefix_length=torch.tensor([batch["rationale_mask"].shape[1] - 3]),
    )
    alone = model._prefix_losses(
        short, model._reasoner_view(short, None, None), torch.ones(1, *short["rationale_ids"].shape)
    )
    assert deleted.item() == pytest.approx(alone[0, 0].item(), rel=1e-4)


def _toy_losses(m: torch.Tensor) -> torch.Tensor:
    """Two prefixes of a 3-token rationale, (..., 2): prefix 1 = tokens 0-1, prefix 2 = all three.
    E[L1] = 2 (1 - w0) + w1,  E[L2] = -1.5 w2 + 3 (1 - w0)(1 - w1)."""
    first = 2.0 * (1 - m[..., 0]) + m[..., 1]
    second = -1.5 * m[..., 2] + 3.0 * (1 - m[..., 0]) * (1 - m[..., 1])
    return torch.stack([first, second], dim=-1)


def _exact_toy_gradient(w: torch.Tensor) -> torch.Tensor:
    w0, w1, _ = w.tolist()  # d/dw of the mean over the two prefixes
    return torch.tensor([(-2 - 3 * (1 - w1)) / 2, (1 - 3 * (1 - w0)) / 2, -1.5 / 2])


def test_score_function_estimator_matches_the_exact_gradient():
    """Leave-one-out baselines and per-prefix credit keep the estimate unbiased: averaged over many
    rationales the backpropagated gradient matches the exact d mean_p E[L_p] / dw within MC error."""
    torch.manual_seed(0)
    n, k = 40_000, 2
    w = torch.tensor([0.3, 0.6, 0.8], requires_grad=True)
    ws = w.expand(n, 3)
    m = torch.bernoulli(ws.detach().expand(k, n, 3))
    losses = _toy_losses(m).reshape(k, 2 * n)  # prefixes ordered (rationale, prefix)
    log_probs = m * torch.log(ws) + (1 - m) * torch.log(1 - ws)  # (K, n, 3)
    log_probs = log_probs.repeat_interleave(2, dim=1)  # each rationale's two prefixes
    lengths = torch.tensor([2, 3]).repeat(n)
    per_prefix = score_function_surrogate(losses, log_probs, lengths)
    (per_prefix.view(n, 2).mean(1).mean()).backward()
    exact = _exact_toy_gradient(w.detach())
    # MC error from 20 independent chunks of the same estimate
    chunks = []
    for chunk in torch.arange(n).chunk(20):
        wc = w.detach().clone().requires_grad_(True)
        lp = (m[:, chunk] * torch.log(wc) + (1 - m[:, chunk]) * torch.log(1 - wc)).repeat_interleave(2, dim=1)
        score_function_surrogate(_toy_losses(m[:, chunk]).reshape(k, -1), lp, lengths[: 2 * len(chunk)]).view(
            -1, 2
        ).mean(1).mean().backward()
        chunks.append(wc.grad)
    error = torch.stack(chunks).std(0) / len(chunks) ** 0.5
    assert torch.all((w.grad - exact).abs() < 4 * error + 1e-3), (w.grad, exact, error)


def test_score_function_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2"):
        score_function_surrogate(torch.zeros(1, 3), torch.zeros(1, 3, 4), torch.tensor([1, 2, 3]))


def test_straight_through_estimates_the_relaxed_objective_not_the_exact_one():
    """For L = c m, the straight-through gradient is c dE[soft]/dw, the gradient of the Concrete
    relaxation: at w = 0.5, tau = 1 that is c * 4 * E[sigmoid'(g)] = c * 2/3 (g logistic), not c."""
    torch.manual_seed(0)
    w = torch.full((400_000,), 0.5, requires_grad=True)
    (3.0 * straight_through_gumbel(w)).sum().backward()
    assert w.grad.mean().item() == pytest.approx(3.0 * 2 / 3, abs=0.02)


def test_weighter_and_reasoner_are_clipped_apart(tiny_llama):
    """A huge weighter gradient must not shrink the reasoner's step (each group is clipped alone)."""
    _, collator = _model(tiny_llama)
    steps = {}
    for scale in (1.0, 1e6):
        model_copy, _ = _model(tiny_llama, estimator="straight_through", masking="embedding")
        before = [p.detach().clone() for p in model_copy.reasoner.parameters()]
        hook = model_copy.weighter.mlp[2].weight.register_hook(lambda g, s=scale: g * s)
        fit_keypoint_model(
            model_copy, collator, ITEMS, epochs=1, lr=1e-3, batch_size=2, progress=False, freeze_reasoner=False
        )
        hook.remove()
        steps[scale] = sum(
            (p.detach() - b).abs().sum().item() for p, b in zip(model_copy.reasoner.parameters(), before)
        )
    assert steps[1e6] == pytest.approx(steps[1.0], rel=1e-3)


def test_keypoint_diagnostic_finds_the_computation(data_dir, tmp_path):
    """The issue's proof: on synthetic rationales whose answer depends on the operator and one
    operand only, the learned w rank those tokens above the filler with ROC AUC >= 0.9."""
    result = run_keypoint_diagnostic(
        data_dir / "tokenizers" / "llama", n=600, seed=0, progress=False, work_dir=tmp_path
    )
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


def test_keep_rate_pins_each_rationales_mean_logit(tiny_llama):
    model, collator = _model(tiny_llama, keep_rate=0.8)
    with torch.no_grad():
        model.weighter.mlp[2].weight.normal_(std=3.0)  # spread logits: the centring must still hold the mean
    batch = collator(ITEMS)
    w = model.weighter(batch["rationale_ids"], batch["rationale_mask"])[2].double()
    for row, mask in zip(w, batch["rationale_mask"].bool()):
        logits = torch.log(row[mask] / (1 - row[mask]))
        assert logits.mean().item() == pytest.approx(math.log(0.8 / 0.2), abs=1e-2)  # pinned: no collapse either way
        assert row[mask].max() > 0.9 and row[mask].min() < 0.5


def test_a_zero_head_starts_every_token_at_the_same_weight_whatever_the_seed(tiny_llama):
    """head_init=zero: before training w is keep_rate on every token, so the seed cannot put a ranking in
    place that 18 steps of training then only perturb; head_init=random starts from a ranking of its own
    that differs by seed. A first step moves the zero head (its gradient is not zero)."""
    batch_items = ITEMS

    def initial_weights(seed, head_init):
        model, collator = _model(tiny_llama, seed=seed, head_init=head_init)
        batch = collator(batch_items)
        w = model.weighter(batch["rationale_ids"], batch["rationale_mask"])[2]
        return w[batch["rationale_mask"].bool()], model, batch

    for seed in (0, 1):
        w, _, _ = initial_weights(seed, "zero")
        assert torch.allclose(w, torch.full_like(w, 0.8))
    random0, random1 = initial_weights(0, "random")[0], initial_weights(1, "random")[0]
    assert random0.std() > 0 and not torch.allclose(random0, random1)
    _, model, batch = initial_weights(0, "zero")
    model(batch)["loss"].backward()
    assert model.weighter.mlp[-1].weight.grad.abs().sum() > 0


def test_alpha_moves_the_mean_weight(tiny_llama):
    """Without keep_rate (the paper's parameterisation) alpha is what sets the sparsity."""
    items = synthetic_items(96, seed=0)
    means = {}
    for alpha in (0.0, 3.0):
        model, collator = _model(tiny_llama, alpha=alpha, seed=1, keep_rate=None)
        history = fit_keypoint_model(
            model, collator, items, epochs=3, lr=3e-3, batch_size=8, seed=0, progress=False, warmup_epochs=2
        )
        means[alpha] = (history[2]["mean_w"], history[-1]["mean_w"])  # first masked epoch, last epoch
    print(means)
    assert means[3.0][1] < means[3.0][0] and means[0.0][1] > means[0.0][0], (
        "alpha = 0 raises w, a large alpha lowers it"
    )
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


def test_a_new_estimator_is_one_registered_function(tiny_llama, monkeypatch, tmp_path):
    """Registered in weighting/module.py's table, an estimator is accepted by the config check, its
    problem rule is applied, and the module's forward runs it."""
    from kpod.config import ConfigError, load_config
    from kpod.pipeline import check_choices
    from kpod.weighting import module

    calls = []

    def greedy_step(model, batch, view, w, valid, reduce_mask):
        calls.append(w.shape)
        return module.straight_through_step(model, batch, view, w, valid, reduce_mask)

    monkeypatch.setitem(
        module.ESTIMATORS,
        "greedy",
        module.Estimator(
            greedy_step, lambda masking, samples: "needs masking=embedding" if masking == "delete" else None
        ),
    )
    with pytest.raises(ConfigError, match="weighting.estimator=greedy: needs masking=embedding"):
        check_choices(load_config(overrides=["weighting.estimator=greedy", f"output_dir={tmp_path}"]))
    check_choices(
        load_config(overrides=["weighting.estimator=greedy", "weighting.masking=embedding", f"output_dir={tmp_path}"])
    )
    model, collator = _model(tiny_llama, estimator="greedy", masking="embedding")
    model.train()
    out = model(collator(ITEMS))
    assert calls and torch.isfinite(out["loss"])


def test_a_saved_weighting_module_weighs_rationales_as_when_it_was_trained(finished_tiny_run):
    """weights/module.pt, loaded on its student, gives every rationale the weights the stage stored,
    so it can weigh rationales it never saw (studies/faithfulness_unseen.py)."""
    from kpod.artifacts import RunPaths, rationale_key, read_rationales
    from kpod.files import read_jsonl
    from kpod.weighting.train import export_weights, load_weighting_module

    run, _ = finished_tiny_run
    stored = read_jsonl(RunPaths(run).weights)
    rows = {rationale_key(r): r for r in read_rationales(RunPaths(run).rationales("train"), include_incorrect=True)}
    model, collator = load_weighting_module(run)
    items = [
        WeightingItem(s["key"], rows[s["key"]]["rationale"], rows[s["key"]]["steps"], rows[s["key"]]["question"], "1")
        for s in stored
    ]
    again = export_weights(model, collator, items)
    assert [r["weights"] for r in again] == [s["weights"] for s in stored]
    assert len({w for s in stored for w in s["weights"]}) > 1
