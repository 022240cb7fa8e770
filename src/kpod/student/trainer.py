"""The student trainer: Hugging Face `Trainer` with the token-weighted loss (paper Eq. 15) and the
progressive schedule hook. Everything else (accelerate/torchrun, DeepSpeed, FSDP, bf16, gradient
accumulation, checkpoints, resume, TensorBoard/W&B) is the Trainer's own."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from torch.utils.data import Sampler
from transformers import Trainer, TrainerCallback

from kpod.data.datasets import Question
from kpod.decoding import evaluate_questions
from kpod.models import is_seq2seq, save_trained_student
from kpod.student.data import DistillDataset

log = logging.getLogger(__name__)


def weighted_token_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """sum_j w_j * NLL_j / N, N = the number of target tokens (the global count under gradient
    accumulation and data parallelism, as plain CE uses). All-ones weights give plain CE exactly.

    Low-precision logits (bf16 on a GPU) are scored in float32 a chunk of rows at a time, each chunk
    recomputed in the backward pass, so no float32 copy of the whole (tokens x vocabulary) logits is
    ever held; float32 logits take the direct path."""
    vocab = logits.shape[-1]
    flat_logits, flat_labels = logits.reshape(-1, vocab), labels.reshape(-1)
    flat_weights = weights.reshape(-1)
    if logits.dtype == torch.float32 or not torch.is_grad_enabled() or not logits.requires_grad:
        total = _weighted_nll_sum(flat_logits, flat_labels, flat_weights)
    else:
        rows = max(1, LOSS_CHUNK_ELEMENTS // vocab)
        total = sum(
            checkpoint(
                _weighted_nll_sum,
                flat_logits[i : i + rows],
                flat_labels[i : i + rows],
                flat_weights[i : i + rows],
                use_reentrant=False,
            )
            for i in range(0, flat_labels.shape[0], rows)
        )
    count = num_items_in_batch if num_items_in_batch is not None else (labels != -100).sum()
    if torch.is_tensor(count):
        count = count.to(total.device)
    return total / count


LOSS_CHUNK_ELEMENTS = 1 << 26  # logits per float32 chunk (256 MiB)


def _weighted_nll_sum(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    nll = F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="none")
    return (nll * weights.to(nll.dtype)).sum()


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    decoder_input = labels.new_full(labels.shape, pad_id)
    decoder_input[:, 1:] = labels[:, :-1]
    decoder_input[:, 0] = start_id
    return decoder_input.masked_fill(decoder_input == -100, pad_id)


class DistillTrainer(Trainer):
    """`Trainer` whose loss weighs each target token (batch key `token_weights`)."""

    def __init__(self, *args, phases: int | None = None, **kwargs):
        """phases: the schedule's phases over the run (schedule.phases); None: one per epoch."""
        self.phases = phases
        super().__init__(*args, **kwargs)
        dataset = self.train_dataset
        if dataset is not None and not isinstance(dataset, DistillDataset):
            raise TypeError("DistillTrainer trains on a kpod.student.data.DistillDataset")
        self.seq2seq = is_seq2seq(self.model)
        # our compute_loss normalises by num_items_in_batch itself, so the Trainer must count tokens
        # and must not divide by the accumulation steps again
        self.model_accepts_loss_kwargs = True

    def get_train_dataloader(self):
        """The Trainer's loader, its sampler wrapped in a PhasedSampler (the schedule's phases)."""
        loader = super().get_train_dataloader()
        holder = loader.batch_sampler
        holder = getattr(holder, "batch_sampler", holder)  # under data parallelism: BatchSamplerShard's inner one
        if not hasattr(holder, "sampler"):
            raise ValueError(
                f"train.trainer_args.train_sampling_strategy={self.args.train_sampling_strategy} builds whole "
                "batches itself, so the curriculum cannot give items their phase: use 'random' or 'group_by_length'"
            )
        # the Trainer's own step count (Trainer.set_initial_training_values)
        steps_per_epoch = max(1, math.ceil(len(loader) / self.args.gradient_accumulation_steps))
        max_steps = (
            self.args.max_steps if self.args.max_steps > 0 else math.ceil(self.args.num_train_epochs * steps_per_epoch)
        )
        holder.sampler = PhasedSampler(
            holder.sampler,
            self.phases,
            batch_size=self._train_batch_size,
            steps_per_epoch=steps_per_epoch,
            max_steps=max_steps,
            processes=self.accelerator.num_processes,
            accumulation=self.args.gradient_accumulation_steps,
        )
        return loader

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = distill_loss(self, model, inputs, self.seq2seq, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss


def distill_loss(trainer: Trainer, model, inputs: dict, seq2seq: bool, num_items_in_batch=None):
    """(loss, outputs) of a batch with `token_weights` (paper Eq. 15), for any Trainer subclass."""
    inputs = dict(inputs)
    weights = inputs.pop("token_weights")
    labels = inputs.pop("labels")
    if seq2seq:
        config = trainer.accelerator.unwrap_model(model).config
        start = config.decoder_start_token_id if config.decoder_start_token_id is not None else config.pad_token_id
        outputs = model(**inputs, decoder_input_ids=shift_right(labels, start, config.pad_token_id))
        logits, targets, target_weights = outputs.logits, labels, weights
    else:
        outputs = model(**inputs)
        # shift the labels, not the logits: slicing logits would copy a (batch x length x vocab) tensor
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)
        logits, target_weights = outputs.logits, F.pad(weights[:, 1:], (0, 1), value=0.0)
    loss = weighted_token_loss(logits, targets, weights=target_weights, num_items_in_batch=num_items_in_batch)
    if trainer.args.average_tokens_across_devices and num_items_in_batch is not None:
        loss = loss * trainer.accelerator.num_processes  # DDP averages gradients over processes
    return loss, outputs


def phase_at_step(step: int, max_steps: int, phases: int) -> int:
    """The phase of optimizer step `step` (0-based) when `phases` phases share `max_steps` steps equally."""
    return min(phases - 1, step * phases // max(1, max_steps))


class PhasedSampler(Sampler):
    """Wraps the Trainer's own sampler (same order, same seeds) and yields (index, phase): the phase of
    the optimizer step that will read the item, from the item's place in the epoch. One phase per epoch
    (phases=None, the paper), or `phases` phases sharing the run's optimizer steps equally.

    The phase travels with the index, so DataLoader workers and read-ahead see the right one, and a
    resumed run (the Trainer skips the epoch's first batches) gets the phases of its restored steps.
    Under data parallelism the sampler's batches are dealt out to the processes in turn."""

    def __init__(
        self,
        inner,
        phases: int | None,
        *,
        batch_size: int,
        steps_per_epoch: int = 1,
        max_steps: int = 1,
        processes: int = 1,
        accumulation: int = 1,
    ):
        self.inner, self.phases = inner, phases
        self.batch_size, self.processes, self.accumulation = batch_size, processes, accumulation
        self.steps_per_epoch, self.max_steps = steps_per_epoch, max_steps
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def phase_of(self, epoch: int, position: int) -> int:
        if self.phases is None:
            return epoch
        local_batch = position // self.batch_size // self.processes
        step = epoch * self.steps_per_epoch + local_batch // self.accumulation
        return phase_at_step(step, self.max_steps, self.phases)

    def __iter__(self):
        epoch = self.epoch
        for position, index in enumerate(self.inner):
            yield index, self.phase_of(epoch, position)
        self.epoch = epoch + 1  # as accelerate's seedable sampler counts its epochs


class DevAccuracyCallback(TrainerCallback):
    """Every `every` epochs: dev accuracy by generation; the best model is saved to `best_dir`."""

    def __init__(
        self,
        questions: list[Question],
        tokenizer,
        best_dir: Path,
        base_model: str,
        every: int = 1,
        max_new_tokens: int = 256,
        batch_size: int = 16,
    ):
        self.questions, self.tokenizer, self.best_dir, self.base_model = questions, tokenizer, best_dir, base_model
        self.every, self.max_new_tokens, self.batch_size = every, max_new_tokens, batch_size
        self.best: float | None = None
        self.history: list[dict] = []

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = int(round(state.epoch))
        if not self.every or epoch % self.every:
            return
        metrics, _ = evaluate_questions(
            model,
            self.tokenizer,
            questions=self.questions,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            progress=False,
        )
        accuracy = metrics["accuracy"]
        self.history.append({"epoch": epoch, "dev_accuracy": accuracy, "step": state.global_step})
        state.log_history.append({"epoch": epoch, "step": state.global_step, "eval_dev_accuracy": accuracy})
        log.info("epoch %d: dev accuracy %.2f%%", epoch, accuracy)
        if self.best is None or accuracy > self.best:
            self.best = accuracy
            if state.is_world_process_zero:
                save_trained_student(model, self.tokenizer, folder=self.best_dir, base_model=self.base_model)
