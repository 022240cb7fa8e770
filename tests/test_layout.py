"""The curriculum layout keeps the rationale's own text: at every c, source + target is the
full-rationale training text, and a causal student's tokens are the full text's tokens."""

import pytest

from kpod.data import load_dataset_splits
from kpod.layout import DistillExample, encode_example, split_texts
from kpod.models import load_tokenizer
from kpod.teacher.importers import import_rationales, reference_rationales
from kpod.token_weights import TokenWeights


@pytest.fixture(scope="module")
def real_examples(data_dir) -> list[DistillExample]:
    """GSM8K worked solutions (newline-separated steps) and MCC-KD's GPT-3.5 SVAMP rationales."""
    gsm8k = reference_rationales(load_dataset_splits("gsm8k", data_dir).train[:20])
    svamp_questions = load_dataset_splits("svamp", data_dir).train[:40]
    svamp, _ = import_rationales(data_dir / "splits_mcc_kd/SVAMP/train.json", svamp_questions, "mcc_kd")
    records = gsm8k + [r for r in svamp if r["sample"] == 0]
    return [DistillExample(f"{r['id']}#{r['sample']}", r["question"], r["gold"], r["steps"]) for r in records]


def test_source_and_target_concatenate_to_the_full_text_at_every_stage(real_examples):
    newline_boundaries = 0
    for example in real_examples:
        full_source, full_target, start = split_texts(example, 0)
        full = full_source + full_target
        assert full[start:].startswith(example.rationale.rstrip())
        for c in range(len(example.steps) + 1):
            source, target, _ = split_texts(example, c)
            assert source + target == full
            if 0 < c < len(example.steps):
                assert source.endswith(example.steps[c - 1])  # step c with the separator that ends it
                assert target.startswith(example.steps[c].rstrip())
                newline_boundaries += example.steps[c - 1].endswith("\n")
    assert newline_boundaries > 100  # the case that was rewritten before: real newline step boundaries


@pytest.mark.parametrize("tokenizer_name", ["smollm2", "llama"])
def test_causal_tokens_are_the_full_texts_at_every_stage(real_examples, data_dir, tokenizer_name):
    tokenizer = load_tokenizer(str(data_dir / "tokenizers" / tokenizer_name))
    after_newline = 0
    for example in real_examples:
        full = encode_example(example, 0, tokenizer, False, 10_000, 10_000)
        tokens = full.source_ids + full.target_ids
        for c in range(1, len(example.steps) + 1):
            enc = encode_example(example, c, tokenizer, False, 10_000, 10_000)
            assert enc.source_ids + enc.target_ids == tokens
            n = len(enc.target_ids)
            # the target is the tail of the full-rationale target, with the same character offsets
            assert enc.target_offsets == full.target_offsets[-n:]
            assert enc.in_rationale == full.in_rationale[-n:]
            if c < len(example.steps) and example.steps[c - 1].endswith("\n"):
                first = tokenizer.convert_ids_to_tokens(enc.target_ids[0])
                assert first.lstrip("Ġ▁") == first  # "The" after a newline, not " The"
                after_newline += 1
    assert after_newline > 100


def test_seq2seq_target_weights_stay_on_their_characters(real_examples, data_dir):
    tokenizer = load_tokenizer(str(data_dir / "tokenizers" / "flan-t5"))
    for example in real_examples[:30]:
        rationale = example.rationale
        for c in range(len(example.steps) + 1):
            enc = encode_example(example, c, tokenizer, True, 10_000, 10_000)
            source, target, _ = split_texts(example, c)
            assert tokenizer.decode(enc.target_ids, skip_special_tokens=True) == tokenizer.decode(
                tokenizer(target)["input_ids"], skip_special_tokens=True
            )
            for (a, b), inside in zip(enc.target_offsets, enc.in_rationale):
                if inside:  # every rationale token of the target lies after the given steps
                    assert len("".join(example.steps[:c])) <= a < b <= len(rationale)


def test_stored_weights_map_onto_the_same_tokens_at_every_stage(real_examples, data_dir):
    """Weights over rationale characters reach the same target token whether it is trained at c = 0 or later."""
    from kpod.student.data import DistillDataset

    tokenizer = load_tokenizer(str(data_dir / "tokenizers" / "smollm2"))
    example = next(e for e in real_examples if len(e.steps) >= 4 and "\n" in e.rationale)
    enc = tokenizer(example.rationale, add_special_tokens=False, return_offsets_mapping=True)
    stored = [0.1 + 0.05 * (i % 17) for i in range(len(enc["input_ids"]))]
    example.weights = TokenWeights([tuple(o) for o in enc["offset_mapping"]], stored)
    example.input_steps = list(range(len(example.steps), -1, -1))
    dataset = DistillDataset([example], tokenizer, seq2seq=False, weight_norm="none")
    dataset.phase = len(example.steps)  # c = 0
    full = dataset[0]["token_weights"]
    for phase in range(len(example.steps)):
        dataset.phase = phase
        item = dataset[0]
        target = [w for w, label in zip(item["token_weights"], item["labels"]) if label != -100]
        assert target == pytest.approx(full[-len(target) :])
