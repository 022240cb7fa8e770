"""kpod's token weights in TRL's `SFTTrainer` (`pip install trl`).

    import datasets
    from trl import SFTConfig
    from kpod.integrations.trl import KPODSFTTrainer, weighted_sft_dataset

    rows = datasets.Dataset.from_parquet("weights.parquet")          # kpod export RUN --weights weights.parquet
    train = weighted_sft_dataset(rows, tokenizer, max_length=1024)
    trainer = KPODSFTTrainer(model=model, args=SFTConfig(output_dir="out", max_length=1024),
                             train_dataset=train, processing_class=tokenizer)
    trainer.train()

`weighted_sft_dataset` builds the items kpod's own `train` stage builds for a causal student (the
prompt, the rationale and the answer sentence; labels only on the target; each target token's weight
mapped from the stored character offsets, normalised to mean 1 over the rationale), pre-tokenised,
so TRL trains on them as they are. `KPODSFTTrainer` is `SFTTrainer` whose loss is kpod's token-weighted
loss (sum_j w_j NLL_j / N); the rest (PEFT, logging, checkpoints, accelerate) is TRL's. Without the
curriculum: that is kpod's own trainer (`kpod train`).
"""

from __future__ import annotations

from trl import SFTTrainer

from kpod.layout import DistillCollator, DistillExample
from kpod.models import is_seq2seq
from kpod.student.data import DistillDataset
from kpod.student.trainer import distill_loss
from kpod.token_weights import TokenWeights


def weighted_sft_dataset(
    rows,
    tokenizer,
    max_length: int | None = 1024,
    weight_floor: float = 0.0,
    weight_norm: str = "example_mean",
    include_incorrect: bool = False,
):
    """A `datasets.Dataset` of input_ids, labels and token_weights from kpod's exported weights rows
    (question, rationale, answer, offsets, weights). Items longer than `max_length` are truncated by
    kpod (prompt first, then target), so TRL's own truncation never cuts the weights out of line.
    Rationales whose answer disagrees with the gold one are left out, as `kpod train` leaves them out
    (include_incorrect=True keeps them, as train.include_incorrect does). A seq2seq run is refused:
    SFTTrainer trains causal LMs."""
    import datasets

    if any(row.get("seq2seq") for row in rows):
        student = next(row.get("student") for row in rows if row.get("seq2seq"))
        raise ValueError(
            f"these weights are for a seq2seq student ({student}); TRL's SFTTrainer trains causal LMs: "
            "train a seq2seq student with `kpod train`"
        )
    rows = [row for row in rows if include_incorrect or row.get("correct", True)]
    if not rows:
        raise ValueError("no correct rationale in these rows (pass include_incorrect=True to train on them anyway)")
    examples = [
        DistillExample(
            str(row.get("key", i)),
            row["question"],
            answer=str(row["answer"]),
            steps=[row["rationale"]],
            weights=TokenWeights([tuple(o) for o in row["offsets"]], list(row["weights"])),
        )
        for i, row in enumerate(rows)
    ]
    longest = max_length or 10**9
    items = DistillDataset(
        examples,
        tokenizer,
        seq2seq=False,
        max_input_tokens=max(8, longest // 2),
        max_target_tokens=max(8, longest - longest // 2),
        weight_norm=weight_norm,
        weight_floor=weight_floor,
    )
    return datasets.Dataset.from_list([items[i] for i in range(len(items))])


class KPODSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer with kpod's token-weighted loss; the dataset comes from `weighted_sft_dataset`."""

    def __init__(self, *args, data_collator=None, **kwargs):
        tokenizer = kwargs.get("processing_class")
        if data_collator is None and tokenizer is not None:
            data_collator = DistillCollator(tokenizer.pad_token_id, seq2seq=False)
        super().__init__(*args, data_collator=data_collator, **kwargs)
        if is_seq2seq(self.model):
            raise ValueError(
                f"{self.model.config.name_or_path} is a seq2seq (encoder-decoder) model; KPODSFTTrainer trains "
                "causal LMs: train a seq2seq student with `kpod train`"
            )
        if self.args.packing:
            raise ValueError("packing joins examples, and their token weights with them: use SFTConfig(packing=False)")

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "token_weights" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "token_weights", "attention_mask"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if inputs["token_weights"].shape != inputs["labels"].shape:
            raise ValueError("token_weights and labels differ in length: build the dataset with weighted_sft_dataset")
        loss, outputs = distill_loss(self, model, inputs, seq2seq=False, num_items_in_batch=num_items_in_batch)
        return (loss, outputs) if return_outputs else loss
