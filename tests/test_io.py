"""Atomic writes: readers never see a half-written file; a failed write leaves the old one."""

from __future__ import annotations

import os

import pytest

from drpo.io import atomic_path, read_jsonl, write_json, write_jsonl


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"v": ')  # half-written...
            raise RuntimeError("crash")  # ...then the job dies
    assert target.read_text().strip().endswith("}") and '"v": 1' in target.read_text()
    assert os.listdir(tmp_path) == ["a.json"]
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_jsonl_round_trip_and_bad_line_names_file_and_line(tmp_path):
    rows = [{"prompt": "a photo of a red circle", "prompt_id": 0}, {"prompt": 'say "hi"', "prompt_id": 1}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    assert read_jsonl(path) == rows
    path.write_text(path.read_text() + "{oops\n")
    with pytest.raises(ValueError, match=r"p\.jsonl:3"):
        read_jsonl(path)


def test_fresh_dir_replaces_the_folder_whole_or_not_at_all(tmp_path):
    from drpo.io import fresh_dir

    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with fresh_dir(out) as work:
            (work / "half.txt").write_text("half")
            raise RuntimeError("crash mid-write")
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (out / "old.txt").read_text() == "old"
    with fresh_dir(out) as work:
        assert work.name == ".model.tmp" and not list(work.iterdir())
        (work / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["model"]
