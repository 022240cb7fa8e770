"""Two processes on one run folder: the second refuses, naming the first; a killed holder's lock is taken."""

import subprocess
import sys

import pytest

from kpod import pipeline
from kpod.config import load_config
from kpod.runlock import RunFolderBusy, run_folder_lock

HOLD = "import sys, time; from kpod.runlock import run_folder_lock\nwith run_folder_lock(sys.argv[1]):\n print('held', flush=True); time.sleep(120)"


def test_a_second_process_refuses_and_a_killed_holders_lock_is_taken(tmp_path):
    run = tmp_path / "run"
    cfg = load_config(
        overrides=["dataset=gsm8k", "teacher.kind=reference", "data.max_train_questions=2", f"output_dir={run}"]
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run), "--holder-marker"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for attempt in (lambda: pipeline.generate(cfg), lambda: pipeline.full_pipeline(cfg)):
            with pytest.raises(RunFolderBusy, match=rf"pid {holder.pid} since .*--holder-marker"):
                attempt()
        assert not (run / "rationales").exists() and not (run / "stages.json").exists()
        with pytest.raises(RunFolderBusy):
            with run_folder_lock(run, wait_s=1.0):  # waits, then refuses
                pass
    finally:
        holder.kill()
        holder.wait()
    assert pipeline.generate(cfg)["rationales"] == 2  # the dead holder's lock is taken over
    with run_folder_lock(run), run_folder_lock(run):  # nested in one process
        assert '"pid": ' in (run / ".kpod.lock").read_text()
