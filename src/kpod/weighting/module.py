"""The mask-learning module that finds keypoint tokens (method doc section 2).

    e   = Att(Emb(r))                       Emb: the student's frozen input embeddings
    w_j = sigmoid(f_w(e_j))                 f_w: two-layer MLP
    m_j ~ Bernoulli(w_j)                    keep (1) or mask (0) token j
    reasoner reads [question; r masked by m; answer cue] and predicts the answer: L_p
    L_k = L_p + alpha * L_m,  L_m = mean (or sum) of m over the rationale's tokens

What the reasoner sees of a kept token (`reasoner_input`): P(e_j) (the method doc), P(Emb(r_j)), or
the reasoner's own embedding of the same token id (student and reasoner share a vocabulary). A masked
token is replaced by a learned vector v_mask (`masking="embedding"`) or removed from the reasoner's
input (`masking="delete"`).

How d E[L_k] / dw is estimated (`estimator`, docs/method.md):
- "straight_through": the paper's Gumbel straight-through sample; forward 0/1, backward the soft
  sample. It estimates the gradient of the relaxed (Concrete) objective, and is ~0 where the
  reasoner's attention ignores a masked position.
- "score_function": K >= 2 Bernoulli(w) masks per rationale, each scored against the leave-one-out
  mean of the other K - 1 (a baseline independent of the sample); a prefix's loss scores only the
  tokens inside that prefix; E[L_m] = mean w is differentiated exactly. Unbiased for E_m[L_k(m)],
  and needs no gradient through the reasoner, so a frozen reasoner costs forward passes only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from kpod.models import is_seq2seq

ReasonerInput = Literal["contextual", "token", "reasoner_tokens"]
Masking = Literal["embedding", "delete"]


def straight_through_gumbel(w: torch.Tensor, tau: float = 1.0, hard: bool = True) -> torch.Tensor:
    """Keep-mask m from keep probabilities w: two-class logits [log w, log(1-w)], Gumbel noise,
    softmax at temperature tau; the forward value is the hard 0/1 sample, the gradient the soft one's."""
    eps = torch.finfo(w.dtype).tiny
    logits = torch.stack([torch.log(w.clamp_min(eps)), torch.log((1 - w).clamp_min(eps))], dim=-1)
    uniform = torch.rand_like(logits).clamp(eps, 1.0 - 1e-7)
    gumbel = -torch.log(-torch.log(uniform))
    soft = F.softmax((logits + gumbel) / tau, dim=-1)[..., 0]
    if not hard:
        return soft
    return (soft > 0.5).to(soft.dtype) - soft.detach() + soft


def score_function_surrogate(
    losses: torch.Tensor, log_probs: torch.Tensor, prefix_length: torch.Tensor
) -> torch.Tensor:
    """Surrogate whose gradient is the leave-one-out REINFORCE estimate of d mean_p E[L_p] / dw.

    losses (K, P): loss of prefix p under mask sample k; log_probs (K, P, L): log p(m_kj | w_j) of the
    sample of prefix p's rationale (0 at padding); prefix_length (P,). Each prefix's advantage
    L_kp - mean_{k' != k} L_k'p multiplies only the log-probabilities of the tokens inside prefix p
    (its loss cannot depend on later tokens, so their terms would add variance and nothing else).
    Returns the sum over prefixes of the mean over samples (divide by prefixes per rationale outside).
    """
    k = losses.shape[0]
    if k < 2:
        raise ValueError("the leave-one-out baseline needs at least 2 mask samples per rationale")
    advantage = (losses - (losses.sum(0, keepdim=True) - losses) / (k - 1)).detach()
    inside = torch.arange(log_probs.shape[-1], device=log_probs.device) < prefix_length.unsqueeze(-1)  # (P, L)
    prefix_log_prob = (log_probs * inside).sum(-1)  # (K, P)
    return (advantage * prefix_log_prob).mean(0)


class TokenWeighter(nn.Module):
    """Emb (frozen copy of the student's) -> one self-attention layer -> MLP -> sigmoid.

    keep_rate (ours): the MLP's logits are centred per rationale and shifted to logit(keep_rate):
    the mean logit is pinned, so w can neither all go to 0 nor all to 1; None: w = sigmoid(f_w(e)),
    as the paper.

    positions="from_end" adds a sinusoidal code of each token's distance to the rationale's end
    (ours: the paper's Att has no stated position code, and without one the layer cannot tell the
    final result from the same number earlier on)."""

    def __init__(
        self,
        student_embeddings: torch.Tensor,
        heads: int = 4,
        mlp_hidden: int = 256,
        positions: Literal["from_end", "none"] = "from_end",
        keep_rate: float | None = 0.8,
        head_init: Literal["zero", "random"] = "zero",
    ):
        super().__init__()
        self.keep_rate = keep_rate
        vocab, width = student_embeddings.shape
        self.positions = positions
        self.position_scale = float(student_embeddings.float().std())
        while width % heads:
            heads -= 1
        self.embed = nn.Embedding(vocab, width)
        self.embed.weight.data.copy_(student_embeddings)
        self.embed.weight.requires_grad_(False)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, 1))
        if head_init == "zero":
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    @property
    def width(self) -> int:
        return self.embed.embedding_dim

    def forward(
        self, token_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, e, w): token embeddings, contextual states and keep probabilities; (B, L, d), (B, L, d), (B, L)."""
        x = self.embed(token_ids)
        if self.positions == "from_end":
            x = x + self.position_scale * _distance_from_end_encoding(attention_mask, x.shape[-1]).to(x.dtype)
        attended, _ = self.attention(x, x, x, key_padding_mask=~attention_mask.bool(), need_weights=False)
        e = self.norm(x + attended)
        logits = self.mlp(e).squeeze(-1)
        if self.keep_rate is not None:
            # centred per rationale: the module ranks tokens, and the masks never collapse to
            # "delete all" or "keep all", where every sample scores the same and no signal is left
            valid = attention_mask.to(logits.dtype)
            mean = (logits * valid).sum(1, keepdim=True) / valid.sum(1, keepdim=True).clamp_min(1)
            logits = logits - mean + math.log(self.keep_rate / (1 - self.keep_rate))
        return x, e, torch.sigmoid(logits)


class KeypointModel(nn.Module):
    """TokenWeighter + the reasoner's view of the masked rationale + reasoner, with L_p + alpha L_m."""

    def __init__(
        self,
        weighter: TokenWeighter,
        reasoner: nn.Module,
        *,
        alpha: float = 0.5,
        tau: float = 1.0,
        mask_loss: Literal["ratio", "sum"] = "ratio",
        reasoner_input: ReasonerInput = "reasoner_tokens",
        estimator: str = "score_function",
        samples: int = 2,
        masking: Masking = "delete",
        warmup_mask_rate: float = 0.15,
    ):
        super().__init__()
        problem = estimator_problem(estimator, masking=masking, samples=samples)
        if problem:
            raise ValueError(problem)
        self.weighter = weighter
        self.reasoner = reasoner
        self.seq2seq = is_seq2seq(reasoner)
        reasoner_embeddings = reasoner.get_input_embeddings()
        if reasoner_input == "reasoner_tokens" and reasoner_embeddings.num_embeddings < weighter.embed.num_embeddings:
            raise ValueError(
                "reasoner_input='reasoner_tokens' needs a reasoner with the student's vocabulary; "
                "use 'token' or 'contextual' (with a reasoner warm-up) for another tokenizer"
            )
        reasoner_width = reasoner_embeddings.embedding_dim
        scale = reasoner_embeddings.weight.detach().float().std().item()
        source_scale = 1.0 if reasoner_input == "contextual" else weighter.embed.weight.detach().float().std().item()
        # P(.) starts at the scale of the reasoner's own token embeddings: far larger, the projected
        # tokens read as noise; far smaller, as silence
        self.project = nn.Linear(weighter.width, reasoner_width)
        nn.init.normal_(self.project.weight, std=scale / (source_scale * weighter.width**0.5))
        nn.init.zeros_(self.project.bias)
        self.mask_vector = nn.Parameter(torch.randn(reasoner_width) * scale)
        if reasoner_input == "reasoner_tokens":
            self.project.requires_grad_(False)  # unused: the reasoner embeds the token ids itself
        if masking == "delete":
            self.mask_vector.requires_grad_(False)  # unused: masked tokens are removed
        self.alpha, self.tau, self.mask_loss = alpha, tau, mask_loss
        self.reasoner_input, self.estimator, self.samples, self.masking = reasoner_input, estimator, samples, masking
        self.warmup_mask_rate = warmup_mask_rate

    def reasoner_side_parameters(self) -> list[nn.Parameter]:
        """What the reasoner's view is made of: the reasoner, P and v_mask (trainable ones only)."""
        params = list(self.reasoner.parameters()) + list(self.project.parameters()) + [self.mask_vector]
        return [p for p in params if p.requires_grad]

    def freeze_reasoner_side(self) -> None:
        for p in self.reasoner_side_parameters():
            p.requires_grad_(False)

    def forward(self, batch: dict, warmup: bool = False) -> dict:
        """batch (see weighting.data.PrefixCollator):
        rationale_ids/rationale_mask (R, L)   student tokens of each rationale
        question_ids/question_mask (R, Q)     reasoner tokens of each question
        prefix_owner (P,), prefix_length (P,) which rationale, how many of its tokens
        cue_ids (C,)                          reasoner tokens of the answer cue (after the prefix)
        answer_ids (R, A)                     reasoner tokens of the answer (-100 padded)

        warmup: train the reasoner side on rationales with a random warmup_mask_rate of tokens
        masked (so it learns to read masked input), L_p only.
        Returns loss (what to backpropagate), objective (L_p + alpha E[L_m], to report), answer_loss,
        mask_loss, w, m.
        """
        x, e, w = self.weighter(batch["rationale_ids"], batch["rationale_mask"])
        valid = batch["rationale_mask"].to(w.dtype)
        tokens = valid.sum(dim=1).clamp_min(1)
        reduce_mask = (
            (lambda m: ((m * valid).sum(1) / tokens).mean())
            if self.mask_loss == "ratio"
            else (lambda m: (m * valid).sum(1).mean())
        )
        view = self._reasoner_view(batch, x, e)
        if warmup or not self.training:
            if warmup:
                m = (torch.rand_like(w) >= self.warmup_mask_rate).to(w.dtype) * valid
            else:
                m = (w > 0.5).to(w.dtype) * valid
            l_p = self._answer_loss_of(batch, view, m)
            l_m = reduce_mask(m)
            objective = l_p if warmup else l_p + self.alpha * l_m
            return {"loss": objective, "objective": objective, "answer_loss": l_p, "mask_loss": l_m, "w": w, "m": m}
        return ESTIMATORS[self.estimator].step(self, batch, view, w=w, valid=valid, reduce_mask=reduce_mask)

    def _reasoner_view(self, batch: dict, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """The reasoner's input vector for each (unmasked) rationale token: (R, L, d_reasoner)."""
        if self.reasoner_input == "reasoner_tokens":
            return self.reasoner.get_input_embeddings()(batch["rationale_ids"])
        return self.project(x if self.reasoner_input == "token" else e)

    def _answer_loss_of(self, batch: dict, view: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """L_p under one mask m (R, L): prefix losses averaged per rationale, then over rationales."""
        return self._per_rationale(
            self._prefix_losses(batch, view, m.unsqueeze(0))[0], batch["prefix_owner"], len(m)
        ).mean()

    @staticmethod
    def _per_rationale(prefix_values: torch.Tensor, owner: torch.Tensor, rationales: int) -> torch.Tensor:
        total = torch.zeros(rationales, dtype=prefix_values.dtype, device=prefix_values.device).index_add_(
            0, owner, prefix_values
        )
        return total / torch.bincount(owner, minlength=rationales).clamp_min(1)

    def _prefix_losses(self, batch: dict, view: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Answer NLL (summed over answer tokens) of every prefix under each of K masks: (K, P)."""
        k = masks.shape[0]
        owner, length = batch["prefix_owner"], batch["prefix_length"]
        positions = torch.arange(view.shape[1], device=view.device)
        in_prefix = (positions.unsqueeze(0) < length.unsqueeze(1)).to(batch["question_mask"].dtype)  # (P, L)
        m = masks[:, owner]  # (K, P, L)
        if self.masking == "delete":
            rationale = view[owner].expand(k, -1, -1, -1)
            rationale_mask = in_prefix * (m > 0.5).to(in_prefix.dtype)
        else:
            mm = m.unsqueeze(-1)
            rationale = mm * view[owner] + (1 - mm) * self.mask_vector
            rationale_mask = in_prefix.expand(k, -1, -1)
        nll = self._answer_nll(
            batch, owner.repeat(k), rationale=rationale.flatten(0, 1), rationale_mask=rationale_mask.flatten(0, 1)
        )
        return nll.view(k, -1)

    def _answer_nll(
        self, batch: dict, owner: torch.Tensor, rationale: torch.Tensor, rationale_mask: torch.Tensor
    ) -> torch.Tensor:
        """Answer NLL of rows [question; rationale; cue; answer] (N,); masked-out positions are removed."""
        embed = self.reasoner.get_input_embeddings()
        question = embed(batch["question_ids"])[owner]
        question_mask = batch["question_mask"][owner]
        cue = embed(batch["cue_ids"]).unsqueeze(0).expand(len(owner), -1, -1)
        cue_mask = torch.ones(cue.shape[:2], dtype=question_mask.dtype, device=cue.device)
        answers = batch["answer_ids"][owner]
        rationale_mask = rationale_mask.to(question_mask.dtype)
        if self.seq2seq:
            inputs = torch.cat([question, rationale.to(question.dtype), cue], dim=1)
            mask = torch.cat([question_mask, rationale_mask, cue_mask], dim=1)
            inputs, mask = _pack(inputs, mask, padding="right")
            logits = self.reasoner(inputs_embeds=inputs, attention_mask=mask, labels=answers).logits
            targets = answers
        else:
            answer_embeds = embed(answers.clamp_min(0))
            answer_mask = (answers != -100).to(question_mask.dtype)
            inputs = torch.cat([question, rationale.to(question.dtype), cue, answer_embeds], dim=1)
            mask = torch.cat([question_mask, rationale_mask, cue_mask, answer_mask], dim=1)
            labels = torch.cat(
                [
                    torch.full(
                        mask.shape[:1] + (mask.shape[1] - answers.shape[1],),
                        -100,
                        dtype=answers.dtype,
                        device=answers.device,
                    ),
                    answers,
                ],
                dim=1,
            )
            # left padding puts every answer at the end of its row, so only the last A + 1 positions
            # need vocabulary logits (the rest would cost (P x length x vocab) memory for nothing);
            # positions count only the kept tokens, so a removed token leaves no gap
            inputs, mask, labels = _pack(inputs, mask, labels, padding="left")
            position_ids = (mask.long().cumsum(1) - 1).clamp_min(0)
            keep = answers.shape[1] + 1
            logits = self.reasoner(
                inputs_embeds=inputs, attention_mask=mask, position_ids=position_ids, logits_to_keep=keep
            ).logits[:, :-1]
            targets = labels[:, -(keep - 1) :]
        return F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=-100, reduction="none").sum(dim=1)

    @torch.no_grad()
    def token_weights(self, rationale_ids: torch.Tensor, rationale_mask: torch.Tensor) -> torch.Tensor:
        """Deterministic w (no sampling) for export."""
        return self.weighter(rationale_ids, rationale_mask)[2]


# How d E[L_k] / dw is estimated: one entry per estimator. A step takes the model, the batch, the
# reasoner's view of the rationale, w (R, L), the valid-token mask and the L_m reduction, and returns
# the dict KeypointModel.forward returns. `problem` says why other weighting settings do not fit it.
# A new estimator is one decorated function here (and its test); weighting.estimator takes its name.


@dataclass(frozen=True)
class Estimator:
    step: Callable[..., dict]
    problem: Callable[[str, int], str | None]  # (masking, samples) -> why they do not fit, or None


ESTIMATORS: dict[str, Estimator] = {}


def estimator(name: str, problem: Callable[[str, int], str | None] = lambda masking, samples: None):
    def register(step: Callable[..., dict]) -> Callable[..., dict]:
        ESTIMATORS[name] = Estimator(step, problem)
        return step

    return register


def estimator_problem(name: str, masking: str, samples: int) -> str | None:
    """Why weighting.estimator (with weighting.masking and weighting.samples) cannot run, or None."""
    if name not in ESTIMATORS:
        return f"weighting.estimator: unknown {name!r}; known: {', '.join(sorted(ESTIMATORS))}"
    problem = ESTIMATORS[name].problem(masking, samples)
    return f"weighting.estimator={name}: {problem}" if problem else None


@estimator(
    "straight_through",
    problem=lambda masking, samples: (
        "masking=delete leaves no gradient path through the mask; use masking=embedding or estimator=score_function"
        if masking == "delete"
        else None
    ),
)
def straight_through_step(model: KeypointModel, batch: dict, view, w, valid, reduce_mask) -> dict:
    """The paper's Gumbel straight-through sample: forward 0/1, backward the soft sample."""
    m = straight_through_gumbel(w, model.tau) * valid
    l_p = model._answer_loss_of(batch, view, m)
    l_m = reduce_mask(m)
    objective = l_p + model.alpha * l_m
    return {"loss": objective, "objective": objective, "answer_loss": l_p, "mask_loss": l_m, "w": w, "m": m}


@estimator(
    "score_function",
    problem=lambda masking, samples: (
        "needs samples >= 2 (each sample's baseline is the mean of the others)" if samples < 2 else None
    ),
)
def score_function_step(model: KeypointModel, batch: dict, view, w, valid, reduce_mask) -> dict:
    """K Bernoulli(w) masks, leave-one-out baselines, per-prefix credit, exact dE[L_m]/dw."""
    k = model.samples
    m = (torch.rand((k,) + w.shape, device=w.device) < w.detach()).to(w.dtype) * valid  # (K, R, L)
    reasoner_learns = any(p.requires_grad for p in model.reasoner_side_parameters())
    with torch.set_grad_enabled(reasoner_learns):
        losses = model._prefix_losses(batch, view, m)  # (K, P)
    eps = torch.finfo(w.dtype).eps
    log_probs = (m * torch.log(w.clamp_min(eps)) + (1 - m) * torch.log((1 - w).clamp_min(eps))) * valid
    owner = batch["prefix_owner"]
    per_prefix = score_function_surrogate(losses, log_probs[:, owner], batch["prefix_length"])  # (P,)
    rationales = w.shape[0]
    prefixes = torch.bincount(owner, minlength=rationales).clamp_min(1)
    surrogate = (
        torch.zeros(rationales, dtype=per_prefix.dtype, device=per_prefix.device).index_add_(0, owner, per_prefix)
        / prefixes
    ).mean()
    l_p = model._per_rationale(losses.mean(0), owner, rationales).mean()
    expected_l_m = reduce_mask(w)  # E[m_j] = w_j: the exact gradient of E[L_m], no sampling
    loss = surrogate + model.alpha * expected_l_m + (l_p if reasoner_learns else 0.0)
    objective = l_p.detach() + model.alpha * expected_l_m.detach()
    return {
        "loss": loss,
        "objective": objective,
        "answer_loss": l_p.detach(),
        "mask_loss": expected_l_m.detach(),
        "w": w,
        "m": m[0],
    }


def _distance_from_end_encoding(attention_mask: torch.Tensor, width: int) -> torch.Tensor:
    """Sinusoidal code (B, L, width) of (tokens after j) for each valid token j; 0 at padding."""
    valid = attention_mask.float()
    distance = valid.sum(1, keepdim=True) - valid.cumsum(1)  # 0 for the last token
    frequencies = torch.exp(
        -torch.arange(0, width, 2, dtype=torch.float32, device=valid.device) * (math.log(10000.0) / width)
    )
    angles = distance.unsqueeze(-1) * frequencies
    code = torch.zeros(*distance.shape, width, device=valid.device)
    code[..., 0::2] = torch.sin(angles)
    code[..., 1::2] = torch.cos(angles[..., : width // 2])
    return code * valid.unsqueeze(-1)


def _pack(inputs: torch.Tensor, mask: torch.Tensor, *extra: torch.Tensor, padding: str = "right"):
    """Move each row's padding (mask 0) to one end by a stable sort, so that padding in the middle
    of [question; prefix; cue; answer] ends up at the right (or left) end of the row."""
    key = (mask == 0) if padding == "right" else (mask != 0)
    order = torch.sort(key.to(torch.int8), dim=1, stable=True).indices

    def gather(t):
        return torch.gather(t, 1, order if t.dim() == 2 else order.unsqueeze(-1).expand_as(t))

    return (gather(inputs), gather(mask), *[gather(t) for t in extra])
