"""Per-attempt checkpoint folders: a new attempt starts from the newest complete earlier attempt,
and retention deletes the folders no attempt will resume from."""

from __future__ import annotations

from pathlib import Path

from app.store.artifacts import attempt_dir, attempts_on_disk, discard_superseded, start_attempt


def _write(folder: Path, **files: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / f"{name}.pt").write_bytes(data)


def test_a_new_attempt_starts_from_the_newest_complete_earlier_one(tmp_path: Path) -> None:
    _write(attempt_dir(tmp_path, 1), best=b"best-1", last=b"last-1")
    _write(attempt_dir(tmp_path, 2), best=b"best-2")  # died before its first last.pt
    out = start_attempt(tmp_path, 3)
    assert out == tmp_path / "attempt-3"
    assert (out / "best.pt").read_bytes() == b"best-1" and (out / "last.pt").read_bytes() == b"last-1"
    # The copies are independent: the old attempt replacing its file (as a zombie would) changes nothing.
    (attempt_dir(tmp_path, 1) / "last.pt.new").write_bytes(b"zombie")
    (attempt_dir(tmp_path, 1) / "last.pt.new").replace(attempt_dir(tmp_path, 1) / "last.pt")
    assert (out / "last.pt").read_bytes() == b"last-1"
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


def test_the_first_attempt_starts_empty_and_a_retry_keeps_its_own_files(tmp_path: Path) -> None:
    first = start_attempt(tmp_path, 1)
    assert not first.exists() or list(first.iterdir()) == []
    _write(attempt_dir(tmp_path, 1), last=b"old")
    _write(attempt_dir(tmp_path, 2), last=b"mine")
    assert (start_attempt(tmp_path, 2) / "last.pt").read_bytes() == b"mine"


def test_retention_deletes_attempts_older_than_the_newest_complete_one(tmp_path: Path) -> None:
    _write(attempt_dir(tmp_path, 1), best=b"1", last=b"1")
    _write(attempt_dir(tmp_path, 2), best=b"2", last=b"2")
    _write(attempt_dir(tmp_path, 3), best=b"3")  # incomplete: attempt 2 is still needed
    assert discard_superseded(tmp_path) == [1]
    assert sorted(attempts_on_disk(tmp_path)) == [2, 3]
    _write(attempt_dir(tmp_path, 3), last=b"3")
    assert discard_superseded(tmp_path) == [2]
    assert sorted(attempts_on_disk(tmp_path)) == [3]
    assert discard_superseded(tmp_path / "missing") == []
