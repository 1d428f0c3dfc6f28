"""/predict and export load a model only after checking its bytes against the size and sha256
recorded when it was registered: in a local directory and in object storage (a loopback S3
server, tests/s3.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings
from app.store.artifacts import ArtifactStore, open_store
from app.store.claims import EPOCH_FIELDS, Outcome, claim_trial, finish_trial
from app.store.db import transaction
from app.store.jobs import submit_job
from app.store.registry import list_models
from ml.job import JobSpec
from tests.served_models import SERVING_CONFIG, png_files, problem, write_checkpoint
from tests.worker.test_object_storage import damage

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture(params=["local", "s3"])
def settings(settings: Settings, request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    where = settings.artifacts_dir if request.param == "local" else request.getfixturevalue("s3_url")
    return settings.model_copy(update={"artifacts_dir": where, "cache_dir": tmp_path / "api-cache"})


def _register(
    sessions: sessionmaker[Session], store: ArtifactStore, source: Path, val_accuracy: float
) -> tuple[int, str]:
    """A model as a worker registers it: its checkpoint put in the store, size and sha256 recorded."""
    with transaction(sessions) as session:
        submit_job(session, JobSpec(train=SERVING_CONFIG))
    with transaction(sessions) as session:
        claim = claim_trial(session, "storage-tests", lease_seconds=60)
        assert claim is not None
        blob = store.put(source, f"jobs/{claim.job_id}/trials/{claim.trial_id}/attempt-1/epoch-1/best.pt")
        epoch = dict.fromkeys(EPOCH_FIELDS, 0.0) | {"epoch": 1, "val_accuracy": val_accuracy}
        outcome = Outcome("succeeded", [epoch], 0.5, None, blob.key, blob.size, blob.sha256)
        finish_trial(session, claim, outcome)
    with sessions() as session:
        return list_models(session)[0].id, blob.key


@pytest.mark.parametrize("how", ["truncate", "tamper"])
def test_a_damaged_model_is_refused_saying_why(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings, tmp_path: Path, how: str
) -> None:
    # The worker's store: in object storage, a cache of its own (another machine).
    worker_store = open_store(settings.model_copy(update={"cache_dir": tmp_path / "worker-cache"}))
    model_id, key = _register(sessions, worker_store, write_checkpoint(tmp_path / "best.pt", seed=0), 0.5)
    image = [("file", ("0.png", png_files(1)[0], "image/png"))]
    assert client.post(f"/predict?model_id={model_id}", files=image).status_code == 200

    # Not the active model (lower accuracy), so no reload races the damage below.
    source = write_checkpoint(tmp_path / "other.pt", seed=1)
    model_id, key = _register(sessions, worker_store, source, 0.1)
    if isinstance(settings.artifacts_dir, str):
        damage(settings.artifacts_dir, key, how)
    else:
        path = settings.artifacts_dir / key
        data = path.read_bytes()
        path.unlink()  # a new file: the source of the put is a hard link to it
        path.write_bytes(data[: len(data) // 2] if how == "truncate" else data[:-1] + bytes([data[-1] ^ 1]))
    body = problem(client.post(f"/predict?model_id={model_id}", files=image), 503)
    assert f"model {model_id} could not be loaded" in body["detail"]
    assert ("truncated" if how == "truncate" else "was modified") in body["detail"]
    export = problem(client.get(f"/models/{model_id}/export?format=state_dict"), 409)
    assert export["title"] == "Checkpoint failed verification"
    for detail in (body["detail"], export["detail"]):  # which checkpoint, never where it is stored
        assert "attempt-1/epoch-1/best.pt" in detail and "jobs/" not in detail and "s3://" not in detail
