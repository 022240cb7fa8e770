"""Run-folder files: written whole or not at all, readable as the user's umask says, and a folder that
cannot take them is an error naming the file, with no temporary file left behind."""

import errno
import os
import stat
import tempfile

import pytest

from kpod.artifacts import write_json
from kpod.files import DataError


def test_files_follow_the_umask(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    write_json(tmp_path / "stages.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "stages.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "stages.json").stat().st_mode) & stat.S_IRGRP  # (umask 022 here)


@pytest.mark.parametrize(
    "error, remedy",
    [
        (OSError(errno.EROFS, "Read-only file system"), "the folder is not writable"),
        (OSError(errno.ENOSPC, "No space left on device"), "the disk is full"),
    ],
)
def test_an_unwritable_folder_names_the_file_not_a_temporary_one(tmp_path, monkeypatch, error, remedy):
    write_json(tmp_path / "stages.json", {"old": True})

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(DataError) as raised:
        write_json(tmp_path / "stages.json", {"new": True})
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 'stages.json'}: cannot write it ({error.strerror}); {remedy}")
    assert ".stages.json." not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stages.json"]  # the temporary file is gone
    assert (tmp_path / "stages.json").read_text().strip() == '{\n "old": true\n}'
    monkeypatch.setattr(tempfile, "mkstemp", fail)
    with pytest.raises(DataError, match=remedy):
        write_json(tmp_path / "other.json", {})


def test_schedule_file_round_trips_and_refuses_malformed_ones(tmp_path):
    import json

    import pytest

    from kpod.artifacts import ScheduleFile, read_schedule, write_schedule
    from kpod.files import DataError

    path = tmp_path / "schedule.json"
    written = ScheduleFile(epochs=6, phases=8, input_steps={"q1#0": [3, 2, 1, 1, 0, 0, 0, 0]}, kind="linear")
    write_schedule(path, written)
    assert read_schedule(path) == written
    path.write_text(json.dumps({"epochs": 2, "input_steps": {"q1#0": [1, 0]}, "c0": 3.0}))  # no stages: refused
    with pytest.raises(DataError, match="phases"):
        read_schedule(path)
    path.write_text(json.dumps({"epochs": 2, "phases": 3, "input_steps": {"q1#0": [1, 0]}}))
    with pytest.raises(DataError, match="3 step counts"):
        read_schedule(path)
    with pytest.raises(DataError, match="schedule not found"):
        read_schedule(tmp_path / "missing.json")
