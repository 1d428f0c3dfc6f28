"""TrialFiles with object storage (a loopback S3 server): what an attempt uploads, and which keys
it deletes once the database has moved on: never a key a row or a model names, never a newer
attempt's."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from app.settings import Settings
from app.store.artifacts import Blob, open_store
from app.store.claims import Claim
from app.worker.files import TrialFiles

TRIAL = "jobs/1/trials/2/"


def _claim(attempt: int) -> Claim:
    return Claim(2, 1, 0, attempt, "w", 60.0, {}, {})


def _epoch(epoch: int, val_accuracy: float) -> SimpleNamespace:
    return SimpleNamespace(epoch=epoch, val_accuracy=val_accuracy)


def test_uploads_are_new_keys_and_only_unnamed_older_ones_are_deleted(s3_url: str, tmp_path: Path) -> None:
    store = open_store(Settings(artifacts_dir=s3_url, cache_dir=tmp_path / "cache"))
    newer = tmp_path / "newer.pt"
    newer.write_bytes(b"attempt 3 is uploading")
    store.put(newer, f"{TRIAL}attempt-3/epoch-1/last.pt")  # not named yet: must survive
    model_key = f"{TRIAL}attempt-1/epoch-1/best.pt"
    (tmp_path / "model.pt").write_bytes(b"registered")
    model = store.put(tmp_path / "model.pt", model_key)

    files = TrialFiles(store, _claim(2))
    out = files.prepare({"best": model}, {model_key})
    assert (out / "best.pt").read_bytes() == b"registered"  # resumed from what the row names
    history = []
    for epoch, accuracy in [(1, 0.5), (2, 0.4)]:
        (out / "last.pt").write_bytes(f"last {epoch}".encode())
        (out / "best.pt").write_bytes(f"best {epoch}".encode())
        history.append(_epoch(epoch, accuracy))
        uploaded = files.publish(history)
        files.recorded(uploaded)
    assert set(uploaded) == {"last"}  # epoch 2 did not improve: best.pt is not uploaded again
    assert set(store.keys(TRIAL)) == {
        model_key,  # a registered model's key stays even once a better best.pt is named
        f"{TRIAL}attempt-2/epoch-1/best.pt",
        f"{TRIAL}attempt-2/epoch-2/last.pt",  # epoch 1's last.pt went once epoch 2's was named
        f"{TRIAL}attempt-3/epoch-1/last.pt",
    }
    assert files.model(out / "best.pt") == Blob(
        f"{TRIAL}attempt-2/epoch-1/best.pt", 6, files.current["best"].sha256
    )
    files.close()
    assert not out.exists()


def test_a_superseded_attempt_deletes_only_its_own_unnamed_keys(s3_url: str, tmp_path: Path) -> None:
    store = open_store(Settings(artifacts_dir=s3_url, cache_dir=tmp_path / "cache"))
    source = tmp_path / "x.pt"
    source.write_bytes(b"x")
    for key in ("attempt-1/epoch-1/last.pt", "attempt-2/epoch-2/last.pt", "attempt-3/epoch-2/last.pt"):
        store.put(source, TRIAL + key)
    named = {"last": Blob(TRIAL + "attempt-1/epoch-1/last.pt", 1, "")}
    TrialFiles(store, _claim(2)).superseded(True, named, set())
    kept = [TRIAL + "attempt-1/epoch-1/last.pt", TRIAL + "attempt-3/epoch-2/last.pt"]
    assert sorted(store.keys(TRIAL)) == kept  # named, or a newer attempt's
    TrialFiles(store, _claim(3)).superseded(False, {}, set())  # the trial was deleted meanwhile
    assert store.keys(TRIAL) == {}
