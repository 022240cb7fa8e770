"""The answer cache of a paid teacher: a damaged file or a malformed row is an error naming the file
(and the row's key), never a bare JSONDecodeError, and the intact rows still answer."""

import sqlite3

import pytest

from kpod.endpoint import ResponseCache
from kpod.files import DataError


def test_a_malformed_row_names_the_file_and_its_key(tmp_path):
    path = tmp_path / "teacher_cache.sqlite"
    cache = ResponseCache(path)
    cache.put("good", {"text": "kept"})
    cache.db.execute("INSERT INTO responses VALUES (?, ?, ?)", ("bad", '{"text": "cut off', 0.0))
    assert cache.get("good") == {"text": "kept"} and cache.get("missing") is None
    with pytest.raises(DataError, match=rf"{path}: row with key bad is not a JSON object .*DELETE FROM responses"):
        cache.get("bad")
    cache.close()


def test_a_damaged_file_names_the_file(tmp_path):
    path = tmp_path / "teacher_cache.sqlite"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    with pytest.raises(DataError, match=rf"{path}: damaged response cache"):
        ResponseCache(path)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE responses (key TEXT)").connection.close()
    with pytest.raises(DataError, match=rf"{other}: damaged"):
        ResponseCache(other).put("k", {})
