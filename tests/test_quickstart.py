"""The quickstart's printout on a tiny student: the table with its legend, one question with each arm's
answer, the keypoint check of the weighting stage, and the report's path."""

from pathlib import Path

from kpod import quickstart

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_prints_the_table_an_example_the_keypoints_and_the_report(tiny_llama, tmp_path, capsys):
    table = quickstart.run(
        ROOT / "configs/cpu-quickstart.yaml",
        [
            f"student.model={tiny_llama}",
            f"output_dir={tmp_path / 'kpod'}",
            "data.max_train_questions=6",
            "data.max_eval_questions=2",
            "train.epochs=1",
            "weighting.epochs=1",
            "weighting.holdout=2",
            "eval.max_new_tokens=4",
        ],
    )
    out = capsys.readouterr().out
    assert [row["arm"] for row in table] == ["base model", "KPOD", "Std-CoT"]
    assert all(row["rationale_loss"] > 0 for row in table)
    assert "held-out rationale loss" in out and "lower is better" in out and "answer sentence:" in out
    assert "one test question: " in out and "  Std-CoT" in out
    assert "keypoints: top 5 % = " in out and "on 2 held-out rationales" in out
    assert f"open {(tmp_path / 'kpod/report.html').resolve()}" in out and (tmp_path / "kpod/report.html").is_file()
