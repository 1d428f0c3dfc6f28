"""The artifact store interface, on both implementations: a directory and a real S3 protocol
server on loopback (moto), through the real boto3 client."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from app.errors import ArtifactCorrupt, ArtifactMissing
from app.settings import Settings
from app.store.artifacts import ArtifactStore, Blob, LocalStore, open_store
from app.store.artifacts.s3 import S3Store
from tests.s3 import s3_client

KEY = "jobs/1/trials/2/attempt-1/best.pt"


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return open_store(Settings(artifacts_dir=tmp_path / "artifacts"))
    url = request.getfixturevalue("s3_url")
    return open_store(Settings(artifacts_dir=url, cache_dir=tmp_path / "cache"))


def _file(folder: Path, data: bytes, name: str = "best.pt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return folder / name


def test_put_then_get_returns_the_bytes_with_their_size_and_sha256(
    store: ArtifactStore, tmp_path: Path
) -> None:
    data = os.urandom(3000)
    blob = store.put(_file(tmp_path / "src", data), KEY)
    assert blob == Blob(KEY, 3000, hashlib.sha256(data).hexdigest())
    assert store.get(blob).read_bytes() == data
    assert store.exists(KEY) and not store.exists("jobs/1/trials/2/attempt-1/last.pt")
    assert store.keys("jobs/1/") == {KEY: 3000}
    assert store.usage("jobs/1/") == 3000 and store.usage("jobs/9/") == 0


def test_a_missing_key_is_a_clear_error(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactMissing, match=r"^checkpoint attempt-1/best\.pt is missing"):
        store.get(Blob(KEY, 10, "0" * 64))


def test_delete_prefix_removes_every_key_under_it_and_nothing_else(
    store: ArtifactStore, tmp_path: Path
) -> None:
    for job in (1, 10):
        store.put(_file(tmp_path / "src", b"x" * job), f"jobs/{job}/trials/3/attempt-1/last.pt")
    store.delete_prefix("jobs/1/")
    assert store.keys("jobs/1/") == {}  # "jobs/1/" is a folder: jobs/10/ is not under it
    assert store.keys("jobs/10/") == {"jobs/10/trials/3/attempt-1/last.pt": 10}
    store.delete(["jobs/10/trials/3/attempt-1/last.pt", "jobs/10/absent.pt"])
    assert store.keys("jobs/10/") == {}


@pytest.mark.parametrize("key", ["", "/abs.pt", "jobs/../../etc/passwd", "jobs//x.pt"])
def test_keys_cannot_leave_the_store(store: ArtifactStore, tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="bad artifact key"):
        store.put(_file(tmp_path / "src", b"x"), key)


def test_a_truncated_local_file_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    blob = store.put(_file(tmp_path / "src", b"weights" * 100), KEY)
    path = tmp_path / KEY
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ArtifactCorrupt, match="truncated"):
        store.get(blob)
    path.write_bytes(b"W" + b"weights"[1:] + b"weights" * 99)  # same size, other bytes
    with pytest.raises(ArtifactCorrupt, match="sha256"):
        store.get(blob)


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
def test_a_damaged_object_is_refused_and_not_cached(s3_url: str, tmp_path: Path, damage: str) -> None:
    store = open_store(Settings(artifacts_dir=s3_url, cache_dir=tmp_path / "cache"))
    assert isinstance(store, S3Store)
    data = os.urandom(5000)
    blob = store.put(_file(tmp_path / "src", data), KEY)
    damaged = data[:-100] if damage == "truncate" else bytes([data[0] ^ 1]) + data[1:]
    s3_client().put_object(Bucket=store.bucket, Key=store.name(KEY), Body=damaged)  # type: ignore[attr-defined]
    reader = open_store(Settings(artifacts_dir=s3_url, cache_dir=tmp_path / "other-cache"))
    with pytest.raises(ArtifactCorrupt, match="truncated" if damage == "truncate" else "modified"):
        reader.get(blob)
    assert not list((tmp_path / "other-cache").rglob("best.pt"))  # nothing unverified is kept


def test_the_cache_serves_a_verified_copy_without_downloading(s3_url: str, tmp_path: Path) -> None:
    store = open_store(Settings(artifacts_dir=s3_url, cache_dir=tmp_path / "cache"))
    assert isinstance(store, S3Store)
    blob = store.put(_file(tmp_path / "src", b"a" * 4000), KEY)
    s3_client().delete_object(Bucket=store.bucket, Key=store.name(KEY))  # type: ignore[attr-defined]
    assert store.get(blob).read_bytes() == b"a" * 4000  # the uploader's own copy: no download
    cached = store.cache.path(KEY)
    cached.write_bytes(b"b" * 4000)  # a damaged copy is dropped, then fetched again (here: gone)
    with pytest.raises(ArtifactMissing):
        store.get(blob)
    assert not cached.exists()


def test_the_cache_is_bounded_least_recently_used_first(s3_url: str, tmp_path: Path) -> None:
    store = open_store(
        Settings(artifacts_dir=s3_url, cache_dir=tmp_path / "cache", artifact_cache_bytes=2500)
    )
    assert isinstance(store, S3Store)
    blobs = [store.put(_file(tmp_path / f"src{i}", bytes([i]) * 1000), f"jobs/1/{i}.pt") for i in range(3)]
    cached = sorted(p.name for p in store.cache.root.rglob("*.pt"))
    assert cached == ["1.pt", "2.pt"]  # 3000 bytes > 2500: the oldest went
    fresh = open_store(
        Settings(artifacts_dir=s3_url, cache_dir=tmp_path / "cache", artifact_cache_bytes=2500)
    )
    assert fresh.get(blobs[0]).read_bytes() == bytes([0]) * 1000  # downloaded again, verified
    assert sorted(p.name for p in store.cache.root.rglob("*.pt")) == ["0.pt", "2.pt"]


def test_settings_choose_the_store(tmp_path: Path) -> None:
    assert isinstance(open_store(Settings(artifacts_dir=tmp_path)), LocalStore)
    with pytest.raises(ValueError, match="s3://bucket"):
        Settings(artifacts_dir="s3:/bucket")
