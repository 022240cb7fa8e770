"""The student trainer: Hugging Face `Trainer` with the token-weighted loss (paper Eq. 15) and the
progressive schedule hook. Everything else (accelerate/torchrun, DeepSpeed, FSDP, bf16, gradient
accumulation, checkpoints, resume, TensorBoard/W&B) is the Trainer's own."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
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
    accumulation and data parallelism, as plain CE uses). All-ones weights give plain CE exactly."""
    nll = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="none"
    )
    total = (nll * weights.reshape(-1).to(nll.dtype)).sum()
    count = num_items_in_batch if num_items_in_batch is not None else (labels != -100).sum()
    if torch.is_tensor(count):
        count = count.to(total.device)
    return total / count


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    decoder_input = labels.new_full(labels.shape, pad_id)
    decoder_input[:, 1:] = labels[:, :-1]
    decoder_input[:, 0] = start_id
    return decoder_input.masked_fill(decoder_input == -100, pad_id)


class DistillTrainer(Trainer):
    """`Trainer` whose loss weighs each target token (batch key `token_weights`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        dataset = self.train_dataset
        if dataset is not None and not isinstance(dataset, DistillDataset):
            raise TypeError("DistillTrainer trains on a kpod.student.data.DistillDataset")
        self.seq2seq = is_seq2seq(self.model)
        # our compute_loss normalises by num_items_in_batch itself, so the Trainer must count tokens
        # and must not divide by the accumulation steps again
        self.model_accepts_loss_kwargs = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        weights = inputs.pop("token_weights")
        labels = inputs.pop("labels")
        if self.seq2seq:
            config = self.accelerator.unwrap_model(model).config
            start = config.decoder_start_token_id if config.decoder_start_token_id is not None else config.pad_token_id
            outputs = model(**inputs, decoder_input_ids=shift_right(labels, start, config.pad_token_id))
            logits, targets, target_weights = outputs.logits, labels, weights
        else:
            outputs = model(**inputs)
            # shift the labels, not the logits: slicing logits would copy a (batch x length x vocab) tensor
            targets = F.pad(labels[:, 1:], (0, 1), value=-100)
            logits, target_weights = outputs.logits, F.pad(weights[:, 1:], (0, 1), value=0.0)
        loss = weighted_token_loss(logits, targets, weights=target_weights, num_items_in_batch=num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        return (loss, outputs) if return_outputs else loss


def stage_at_step(step: int, max_steps: int, stages: int) -> int:
    """The stage of optimizer step `step` (0-based) when `stages` stages share `max_steps` steps equally."""
    return min(stages - 1, step * stages // max(1, max_steps))


class StageCallback(TrainerCallback):
    """Sets the dataset's stage so each example uses its c_i(t): one stage per epoch (stages=None,
    the paper), or `stages` stages sharing the run's optimizer steps equally (switching at step
    boundaries). The data loader reads one batch ahead, so at the end of step k the stage of step
    k + 2 is set (step k + 1's batch is already read); the first batch of an epoch is read after
    on_epoch_begin (the second with it, so it shares the first's stage). On a resume the stage
    follows the restored global step."""

    def __init__(self, dataset: DistillDataset, stages: int | None = None):
        self.dataset, self.stages = dataset, stages

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.stages is None:
            self.dataset.stage = int(round(state.epoch or 0))
        else:
            self.dataset.stage = stage_at_step(state.global_step, state.max_steps, self.stages)

    def on_step_end(self, args, state, control, **kwargs):
        if self.stages is not None:
            self.dataset.stage = stage_at_step(state.global_step + 1, state.max_steps, self.stages)


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
