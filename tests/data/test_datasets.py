import json

import pytest

from kpod.data import load_dataset_splits
from kpod.files import DataError
from kpod.rationale import answers_match, extract_answer


@pytest.mark.parametrize(
    "name,train,dev,test",
    [
        ("gsm8k", 7473, 660, 659),
        ("svamp", 700, 150, 150),
        ("commonsenseqa", 8520, 1221, 1221),
        ("asdiv", None, 313, 314),
    ],
)
def test_paper_split_sizes(data_dir, name, train, dev, test):
    splits = load_dataset_splits(name, data_dir)
    assert (len(splits.dev), len(splits.test)) == (dev, test)
    if train:
        assert len(splits.train) == train
    else:
        assert 1400 <= len(splits.train) <= 1500
    ids = [q.id for q in splits.train + splits.dev + splits.test]
    assert len(ids) == len(set(ids)), "a question sits in two splits"


@pytest.mark.parametrize(
    "name,folder", [("gsm8k", "GSM8K"), ("svamp", "SVAMP"), ("commonsenseqa", "CSQA"), ("asdiv", "ASDiv")]
)
def test_gold_answers_agree_with_mcc_kd_labels(data_dir, name, folder):
    splits = load_dataset_splits(name, data_dir)
    rows = json.loads((data_dir / "splits_mcc_kd" / folder / "test.json").read_text())
    task = "choice" if name == "commonsenseqa" else "math"
    assert all(answers_match(q.answer, r["label"], task) for q, r in zip(splits.test, rows))


def test_gsm8k_solution_is_clean_and_correct(data_dir):
    q = load_dataset_splits("gsm8k", data_dir).train[0]
    assert "<<" not in q.solution and "####" not in q.solution
    assert extract_answer(q.solution, "math") == q.answer == "72"


def test_csqa_record_has_choices(data_dir):
    q = load_dataset_splits("commonsenseqa", data_dir).test[0]
    assert q.task == "choice" and len(q.choices) == 5 and "(A)" in q.question and q.answer in "ABCDE"


def test_official_splits(data_dir):
    s = load_dataset_splits("gsm8k", data_dir, "official")
    assert (len(s.train), len(s.test)) == (7473, 1319)


def test_missing_and_malformed_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        load_dataset_splits("gsm8k", tmp_path / "nowhere")
    (tmp_path / "gsm8k").mkdir()
    with pytest.raises(DataError, match=r"gsm8k/train.jsonl: file not found"):
        load_dataset_splits("gsm8k", tmp_path, "official")
    (tmp_path / "gsm8k" / "train.jsonl").write_text('{"question": "q", "answer": "a #### 1"}\n{not json\n')
    with pytest.raises(DataError, match=r"train.jsonl:2: malformed JSON"):
        load_dataset_splits("gsm8k", tmp_path, "official")
    (tmp_path / "gsm8k" / "train.jsonl").write_bytes(
        b'{"question": "q", "answer": "a #### 1"}\n{"question": "caf\xe9"}\n'
    )
    with pytest.raises(DataError, match=r"train.jsonl:2: not UTF-8 text \(byte 0xe9 at column 18\)"):
        load_dataset_splits("gsm8k", tmp_path, "official")


@pytest.mark.parametrize("question", ["   ", "\n\t", 42])
def test_an_empty_question_is_refused_naming_the_row(tmp_path, question):
    (tmp_path / "gsm8k").mkdir()
    rows = [{"question": "How many?", "answer": "2 #### 2"}, {"question": question, "answer": "x #### 3"}]
    (tmp_path / "gsm8k" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"train.jsonl:2: the question is empty"):
        load_dataset_splits("gsm8k", tmp_path, "official")


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset_splits("mnist")


def test_hub_rows_become_questions_for_every_dataset(monkeypatch):
    """The Hub path of every registry entry, on rows shaped as each Hub dataset ships them."""
    import datasets

    from kpod.data import datasets as module

    rows = {
        "openai/gsm8k": {"question": "A has 2 and gets 3. How many?", "answer": "2+3=<<2+3=5>>5\n#### 5"},
        "ChilleD/SVAMP": {"ID": "chal-1", "Body": "A has 2.", "Question": "How many?", "Answer": 2.0},
        "EleutherAI/asdiv": {"body": "A has 2.", "question": "How many?", "answer": "2 (apples)"},
        "tau/commonsense_qa": {
            "id": "x1",
            "question": "Where?",
            "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["a", "b", "c", "d", "e"]},
            "answerKey": "B",
        },
    }

    def load_dataset(repo, config=None):
        spec = next(s for s in module.REGISTRY.values() if s.hub[0] == repo)
        return datasets.DatasetDict(
            {split: datasets.Dataset.from_list([rows[repo]]) for split in spec.hub_splits if split}
        )

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.delenv("KPOD_DATA_DIR")
    gsm8k = load_dataset_splits("gsm8k")
    assert gsm8k.train[0].answer == "5" and gsm8k.train[0].solution == "2+3=5" and len(gsm8k.test) == 1
    assert load_dataset_splits("svamp").test[0].question == "A has 2. How many?"
    asdiv = load_dataset_splits("asdiv")
    assert asdiv.train == [] and asdiv.test[0].answer == "2"
    csqa = load_dataset_splits("csqa")
    assert csqa.test[0].choices == ["a", "b", "c", "d", "e"] and csqa.test[0].answer == "B"


def test_a_new_dataset_is_one_registry_entry(data_dir, monkeypatch):
    from kpod.data import datasets as module

    svamp = module.REGISTRY["svamp"]
    monkeypatch.setitem(module.REGISTRY, "svamp-copy", module.DatasetSpec(**{**svamp.__dict__, "aliases": ("svc",)}))
    splits = load_dataset_splits("svc", data_dir)
    assert splits.name == "svamp-copy" and (len(splits.train), len(splits.dev), len(splits.test)) == (700, 150, 150)
