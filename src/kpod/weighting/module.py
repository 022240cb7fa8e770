"""The mask-learning module that finds keypoint tokens (method doc section 2).

    e   = Att(Emb(r))                       Emb: the student's frozen input embeddings
    w_j = sigmoid(f_w(e_j))                 f_w: two-layer MLP
    m_j = straight-through Gumbel sample     forward 0/1, backward the soft sample
    x_j = m_j * P(e_j) + (1 - m_j) * v_mask  into the reasoner's embedding space
                                            (option: P(Emb(r_j)), the token's own embedding)

The reasoner reads [question; masked rationale prefix] and predicts the answer. Because the mask
acts in embedding space, the gradient of the answer loss L_p reaches f_w through m.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kpod.student.load import is_seq2seq


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


class TokenWeighter(nn.Module):
    """Emb (frozen copy of the student's) -> one self-attention layer -> MLP -> sigmoid."""

    def __init__(self, student_embeddings: torch.Tensor, heads: int = 4, mlp_hidden: int = 256):
        super().__init__()
        vocab, width = student_embeddings.shape
        while width % heads:
            heads -= 1
        self.embed = nn.Embedding(vocab, width)
        self.embed.weight.data.copy_(student_embeddings)
        self.embed.weight.requires_grad_(False)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, 1))

    @property
    def width(self) -> int:
        return self.embed.embedding_dim

    def forward(self, token_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, e, w): token embeddings, contextual states and keep probabilities; (B, L, d), (B, L, d), (B, L)."""
        x = self.embed(token_ids)
        attended, _ = self.attention(x, x, x, key_padding_mask=~attention_mask.bool(), need_weights=False)
        e = self.norm(x + attended)
        w = torch.sigmoid(self.mlp(e).squeeze(-1))
        return x, e, w


class KeypointModel(nn.Module):
    """TokenWeighter + projection + learned mask vector + reasoner, with the loss L_p + alpha L_m."""

    def __init__(self, weighter: TokenWeighter, reasoner: nn.Module, alpha: float = 0.5, tau: float = 1.0,
                 mask_loss: str = "ratio", reasoner_input: str = "contextual", score_function: str = "greedy"):
        super().__init__()
        self.weighter = weighter
        self.reasoner = reasoner
        self.seq2seq = is_seq2seq(reasoner)
        reasoner_width = reasoner.get_input_embeddings().embedding_dim
        scale = reasoner.get_input_embeddings().weight.detach().float().std().item()
        source_scale = 1.0 if reasoner_input == "contextual" else weighter.embed.weight.detach().float().std().item()
        # P(.) starts at the scale of the reasoner's own token embeddings: far larger, the projected
        # tokens read as noise; far smaller, as silence
        self.project = nn.Linear(weighter.width, reasoner_width)
        nn.init.normal_(self.project.weight, std=scale / (source_scale * weighter.width**0.5))
        nn.init.zeros_(self.project.bias)
        self.mask_vector = nn.Parameter(torch.randn(reasoner_width) * scale)
        self.alpha, self.tau, self.mask_loss, self.reasoner_input = alpha, tau, mask_loss, reasoner_input
        if score_function not in ("greedy", "batch", "none"):
            raise ValueError(f"score_function must be 'greedy', 'batch' or 'none', not {score_function!r}")
        self.score_function = score_function

    def forward(self, batch: dict, keep_all: bool = False) -> dict:
        """batch (see weighting.data.PrefixCollator):
        rationale_ids/rationale_mask (R, L)   student tokens of each rationale
        question_ids/question_mask (R, Q)     reasoner tokens of each question
        prefix_owner (P,), prefix_length (P,) which rationale, how many of its tokens
        cue_ids (C,)                          reasoner tokens of the answer cue (after the prefix)
        answer_ids (R, A)                     reasoner tokens of the answer (-100 padded)
        """
        x, e, w = self.weighter(batch["rationale_ids"], batch["rationale_mask"])
        valid = batch["rationale_mask"].to(w.dtype)
        if keep_all:  # reasoner warm-up: 15% of tokens masked at random (so v_mask is learned), only L_p
            m = (torch.rand_like(w) > 0.15).to(w.dtype) * valid
        elif self.training:
            m = straight_through_gumbel(w, self.tau) * valid
        else:
            m = _greedy_mask(w, valid)
        # "contextual" (the method doc): the attention state e_j, which also carries other tokens'
        # content, so a masked keypoint can leak through kept neighbours; "token": Emb(r_j) only
        projected = self.project(x if self.reasoner_input == "token" else e)
        per_rationale = self._answer_loss(batch, self._masked(m, projected))
        l_p = per_rationale.mean()
        tokens = valid.sum(dim=1).clamp_min(1)
        kept = (m * valid).sum(dim=1)
        l_m = (kept / tokens).mean() if self.mask_loss == "ratio" else kept.mean()
        objective = l_p if keep_all else l_p + self.alpha * l_m
        loss = objective
        if self.training and self.score_function != "none" and not keep_all:
            if self.score_function == "greedy":  # self-critical baseline: the same rationale under the mask w > 0.5
                with torch.no_grad():
                    baseline = self._answer_loss(batch, self._masked(_greedy_mask(w, valid), projected))
            else:  # leave-one-out: the mean loss of the other rationales in the batch (no term for a batch of one)
                n = per_rationale.shape[0]
                baseline = (per_rationale.sum() - per_rationale) / (n - 1) if n > 1 else per_rationale
            loss = loss + _score_function_term(per_rationale.detach() - baseline.detach(), w, m.detach(), valid)
        # loss: what to backpropagate (objective + the surrogate); objective: L_p + alpha L_m, to report
        return {"loss": loss, "objective": objective, "answer_loss": l_p, "mask_loss": l_m, "w": w, "m": m}

    def _masked(self, m: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        """The reasoner's rationale inputs: m_j * P(.)_j + (1 - m_j) * v_mask."""
        m = m.unsqueeze(-1)
        return m * projected + (1 - m) * self.mask_vector

    def _answer_loss(self, batch: dict, masked: torch.Tensor) -> torch.Tensor:
        embed = self.reasoner.get_input_embeddings()
        owner, length = batch["prefix_owner"], batch["prefix_length"]
        question = embed(batch["question_ids"])[owner]  # (P, Q, d)
        question_mask = batch["question_mask"][owner]
        rationale = masked[owner]  # (P, L, d)
        positions = torch.arange(rationale.shape[1], device=rationale.device)
        prefix_mask = (positions.unsqueeze(0) < length.unsqueeze(1)).to(question_mask.dtype)
        cue = embed(batch["cue_ids"]).unsqueeze(0).expand(len(owner), -1, -1)
        cue_mask = torch.ones(cue.shape[:2], dtype=question_mask.dtype, device=cue.device)
        answers = batch["answer_ids"][owner]  # (P, A)
        if self.seq2seq:
            inputs = torch.cat([question, rationale, cue], dim=1)
            mask = torch.cat([question_mask, prefix_mask, cue_mask], dim=1)
            inputs, mask = _pack(inputs, mask, padding="right")
            logits = self.reasoner(inputs_embeds=inputs, attention_mask=mask, labels=answers).logits
            targets = answers
        else:
            answer_embeds = embed(answers.clamp_min(0))
            answer_mask = (answers != -100).to(question_mask.dtype)
            inputs = torch.cat([question, rationale, cue, answer_embeds], dim=1)
            mask = torch.cat([question_mask, prefix_mask, cue_mask, answer_mask], dim=1)
            labels = torch.cat([torch.full(mask.shape[:1] + (mask.shape[1] - answers.shape[1],), -100,
                                           dtype=answers.dtype, device=answers.device), answers], dim=1)
            # left padding puts every answer at the end of its row, so only the last A + 1 positions
            # need vocabulary logits (the rest would cost (P x length x vocab) memory for nothing)
            inputs, mask, labels = _pack(inputs, mask, labels, padding="left")
            keep = answers.shape[1] + 1
            logits = self.reasoner(inputs_embeds=inputs, attention_mask=mask, logits_to_keep=keep).logits[:, :-1]
            targets = labels[:, -(keep - 1):]
        nll = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=-100, reduction="none").sum(dim=1)
        # summed over answer tokens, averaged over each rationale's prefixes: (R,)
        rationales = batch["rationale_ids"].shape[0]
        total = torch.zeros(rationales, dtype=nll.dtype, device=nll.device).index_add_(0, owner, nll)
        return total / torch.bincount(owner, minlength=rationales).clamp_min(1)

    @torch.no_grad()
    def token_weights(self, rationale_ids: torch.Tensor, rationale_mask: torch.Tensor) -> torch.Tensor:
        """Deterministic w (no sampling) for export."""
        return self.weighter(rationale_ids, rationale_mask)[2]


def _greedy_mask(w: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The deterministic mask: keep the tokens with w > 0.5."""
    return (w > 0.5).to(w.dtype) * valid


def _score_function_term(advantage: torch.Tensor, w: torch.Tensor, m: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Surrogate whose gradient is the score-function (REINFORCE) estimate of dE[L_p]/dw:
    (L_i - b_i) * d log p(m_i | w_i) with a baseline b_i that does not depend on the sample m_i.
    It complements the straight-through gradient, which is ~0 where the reasoner's attention
    ignores a masked position: the derivative along v_mask -> P(e_j) then says nothing of what
    revealing token j is worth (measured; docs/method.md)."""
    eps = torch.finfo(w.dtype).eps
    log_prob = (m * torch.log(w.clamp_min(eps)) + (1 - m) * torch.log((1 - w).clamp_min(eps))) * valid
    return (advantage.unsqueeze(1) * log_prob).sum(dim=1).mean()


def _pack(inputs: torch.Tensor, mask: torch.Tensor, *extra: torch.Tensor, padding: str = "right"):
    """Move each row's padding (mask 0) to one end by a stable sort, so that padding in the middle
    of [question; prefix; cue; answer] ends up at the right (or left) end of the row."""
    key = (mask == 0) if padding == "right" else (mask != 0)
    order = torch.sort(key.to(torch.int8), dim=1, stable=True).indices
    gather = lambda t: torch.gather(t, 1, order if t.dim() == 2 else order.unsqueeze(-1).expand_as(t))
    return (gather(inputs), gather(mask), *[gather(t) for t in extra])
