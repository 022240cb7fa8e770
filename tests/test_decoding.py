import pytest
import torch

from kpod.data import Question
from kpod.decoding import clean_generation, evaluate_questions, greedy_continuations
from kpod.models import load_student


def test_clean_generation_cuts_at_answer_and_next_question():
    text = "He has 3 + 4 = 7 apples. Therefore, the answer is 7.\nQ: Another question? A: the answer is 9."
    assert clean_generation(text) == "He has 3 + 4 = 7 apples. Therefore, the answer is 7."
    assert clean_generation("It is 12 Q: next") == "It is 12"


@pytest.mark.parametrize("fixture", ["tiny_t5", "tiny_llama"])
def test_batched_generation_equals_one_at_a_time(request, fixture):
    model, tokenizer = load_student(str(request.getfixturevalue(fixture)))
    prompts = [
        "Q: What is 2 + 3? A: Let's think step by step.",
        "Q: Tom has four apples and buys a few more. A: ...",
        "Q: x A:",
    ]
    assert greedy_continuations(model, tokenizer, prompts, 6, batch_size=3, progress=False) == [
        greedy_continuations(model, tokenizer, [p], 6, batch_size=1, progress=False)[0] for p in prompts
    ]


def test_out_of_memory_retries_the_batch_in_halves(tiny_llama, caplog):
    model, tokenizer = load_student(str(tiny_llama))
    prompts = [f"Q: What is {n} + {n}? A:" for n in range(7)]
    expected = greedy_continuations(model, tokenizer, prompts, 5, batch_size=1, progress=False)
    generate, sizes = model.generate, []

    def generate_within_memory(**kwargs):
        sizes.append(len(kwargs["input_ids"]))
        if sizes[-1] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return generate(**kwargs)

    model.generate = generate_within_memory
    with caplog.at_level("WARNING"):
        assert greedy_continuations(model, tokenizer, prompts, 5, batch_size=8, progress=False) == expected
    assert sizes == [7, 3, 3, 1]  # the 7 questions fail together, then go in halves of the failed batch
    assert "going on with batches of 3" in caplog.text

    model.generate = lambda **kwargs: (_ for _ in ()).throw(RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors are not retried
        greedy_continuations(model, tokenizer, prompts, 5, batch_size=8, progress=False)


def test_metrics_and_predictions(tmp_path, tiny_llama):
    model, tokenizer = load_student(str(tiny_llama))
    questions = [
        Question("q1", "What is 1 + 1?", "2", "math"),
        Question("q2", "Pick one. Answer Choices: (A) x (B) y", "B", "choice", ["x", "y"]),
    ]
    metrics, predictions = evaluate_questions(model, tokenizer, questions, max_new_tokens=4, progress=False)
    assert metrics["total"] == 2 and metrics["accuracy"] == 100.0 * metrics["correct"] / 2
    assert [p["id"] for p in predictions] == ["q1", "q2"]
    assert all(set(p) >= {"prediction", "correct", "output", "gold"} for p in predictions)


@pytest.mark.slow
def test_data_parallel_evaluation_gathers_in_order(tmp_path, tiny_llama):
    """torchrun --nproc_per_node 2: questions split across processes, predictions identical and in order."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "ev.py"
    script.write_text(
        "import sys\nfrom kpod import pipeline\nfrom kpod.config import load_config\n"
        f"cfg = load_config(overrides={{'output_dir': sys.argv[1], 'data.max_eval_questions': 7, 'eval.max_new_tokens': 6, "
        f"'eval.batch_size': 2, 'student.model': r'{tiny_llama}'}})\n"
        "pipeline.evaluate(cfg, model_path=cfg.student.model)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "one")], env=env, check=True, capture_output=True)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29541",
            str(script),
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]

    def read(d):
        return [json.loads(line) for line in (tmp_path / d / "eval/test/predictions.jsonl").read_text().splitlines()]

    one, two = read("one"), read("two")
    assert [p["id"] for p in one] == [p["id"] for p in two] and len(one) == 7
    assert [p["raw_output"] for p in one] == [p["raw_output"] for p in two]


def test_stopping_when_complete_keeps_what_clean_generation_keeps(data_dir):
    """At the first token where a generation counts as complete, the cleaned text is already final: on
    real GPT-3.5 rationales with the answer sentence a student writes, followed by chatter, a next
    question, or nothing."""
    from transformers import AutoTokenizer

    from kpod.data import load_dataset_splits
    from kpod.decoding import generation_complete
    from kpod.rationale import answer_sentence
    from kpod.teacher.importers import import_rationales

    tokenizer = AutoTokenizer.from_pretrained(data_dir / "tokenizers" / "llama")
    questions = load_dataset_splits("svamp", data_dir).train
    records, _ = import_rationales(data_dir / "splits_mcc_kd/SVAMP/train.json", questions, "mcc_kd")
    tails = [
        "",
        "\nQ: Next question? A: Let's think. Therefore, the answer is 3.",
        " Then we are done. Really.",
        " 5.5 more words\n\nand more",
    ]
    stopped_early = 0
    for record, tail in zip(records[:120], tails * 30):
        full = f" {record['raw']} {answer_sentence(record['gold'])}{tail}"
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        for n in range(1, len(ids) + 1):
            prefix = tokenizer.decode(ids[:n])
            if generation_complete(prefix):
                assert clean_generation(prefix) == clean_generation(tokenizer.decode(ids)), (prefix, full)
                stopped_early += n < len(ids)
                break
    assert stopped_early == 90  # all but those that end with their answer sentence


def test_generation_complete_needs_a_finished_sentence():
    from kpod.decoding import generation_complete

    assert not generation_complete("So the answer is 5")
    assert not generation_complete("So the answer is 5.")  # could still be 5.5
    assert generation_complete("So the answer is 5. ")
    assert generation_complete("So the answer is 5\n")
    assert generation_complete("It is 7.\nQ: ")
    assert not generation_complete("It is 7. Next")


@pytest.mark.parametrize("tokenizer_name", ["llama", "smollm2", "flan-t5"])
def test_stopping_decides_as_decoding_the_whole_continuation_would(data_dir, tokenizer_name):
    """StopWhenComplete keeps each sequence's text by decoding only its new tokens; at every step of
    real continuations (GPT-3.5 rationales, the answer sentence, then chatter or a next question, with
    a prompt and padding before them) it stops exactly the rows that the whole decoded text would."""
    from kpod.data import load_dataset_splits
    from kpod.decoding import StopWhenComplete, generation_complete
    from kpod.models import load_tokenizer
    from kpod.rationale import answer_sentence
    from kpod.teacher.importers import import_rationales

    tokenizer = load_tokenizer(str(data_dir / "tokenizers" / tokenizer_name))
    records, _ = import_rationales(
        data_dir / "splits_mcc_kd/SVAMP/train.json", load_dataset_splits("svamp", data_dir).train, "mcc_kd"
    )
    tails = ["", "\nQ: Next? A: So the answer is 3.", " Then we are done. Really.", " 5.5 más café\n\nand €"]
    texts = [f" {r['raw']} {answer_sentence(r['gold'])}{t}" for r, t in zip(records[:48:3], tails * 4)]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    longest = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prompt = torch.full((len(rows), 5), pad)
    criterion = StopWhenComplete(tokenizer, prompt_length=5)
    expected = [False] * len(rows)
    for n in range(1, longest + 1):
        step = torch.tensor([(r + [tokenizer.eos_token_id] * longest)[:n] for r in rows])
        done = criterion(torch.cat([prompt, step], dim=1), None)
        whole = [generation_complete(tokenizer.decode(s, skip_special_tokens=True)) for s in step.tolist()]
        expected = [w or before for w, before in zip(whole, expected)]  # a row stays done, as generate keeps it
        assert done.tolist() == expected, n
    assert sum(expected) == 12  # all but the 4 that end with their answer sentence and nothing after it
