import pytest

from kpod import pipeline
from kpod.config import load_config
from kpod.data import Question
from kpod.evaluation.evaluate import clean_generation, evaluate_questions, generate
from kpod.student.load import load_student


def test_clean_generation_cuts_at_answer_and_next_question():
    text = "He has 3 + 4 = 7 apples. Therefore, the answer is 7.\nQ: Another question? A: the answer is 9."
    assert clean_generation(text) == "He has 3 + 4 = 7 apples. Therefore, the answer is 7."
    assert clean_generation("It is 12 Q: next") == "It is 12"


@pytest.mark.parametrize("fixture", ["tiny_t5", "tiny_llama"])
def test_batched_generation_equals_one_at_a_time(request, fixture):
    model, tokenizer = load_student(str(request.getfixturevalue(fixture)))
    prompts = ["Q: What is 2 + 3? A: Let's think step by step.", "Q: Tom has four apples and buys a few more. A: ...",
               "Q: x A:"]
    assert generate(model, tokenizer, prompts, 6, batch_size=3, progress=False) == \
        [generate(model, tokenizer, [p], 6, batch_size=1, progress=False)[0] for p in prompts]


def test_metrics_and_predictions(tmp_path, tiny_llama):
    model, tokenizer = load_student(str(tiny_llama))
    questions = [Question("q1", "What is 1 + 1?", "2", "math"), Question("q2", "Pick one. Answer Choices: (A) x (B) y", "B", "choice", ["x", "y"])]
    metrics, predictions = evaluate_questions(model, tokenizer, questions, max_new_tokens=4, progress=False)
    assert metrics["total"] == 2 and metrics["accuracy"] == 100.0 * metrics["correct"] / 2
    assert [p["id"] for p in predictions] == ["q1", "q2"]
    assert all(set(p) >= {"prediction", "correct", "output", "gold"} for p in predictions)


@pytest.mark.slow
def test_smollm2_evaluates_five_gsm8k_questions(tmp_path):
    cfg = load_config(overrides={"dataset": "gsm8k", "output_dir": str(tmp_path), "data.max_eval_questions": 5,
                                 "eval.max_new_tokens": 96, "student.model": "smollm2"})
    metrics = pipeline.evaluate(cfg, model_path="smollm2")
    assert metrics["total"] == 5 and metrics["answer_found"] >= 3
    assert (tmp_path / "eval/test/predictions.jsonl").read_text().count("\n") == 5
