"""An attempt's checkpoint files: where the trainer writes them, and how they reach the store.

With a local artifacts directory (the default) the trainer writes straight into the attempt's
folder there (app.store.artifacts.layout): nothing to upload, and a new attempt starts from links
to the newest earlier attempt's files.

With object storage the trainer writes into the same layout under a local work folder; after
every epoch, before the epoch's database write, last.pt (and best.pt when it improved) is
uploaded under a key of its own,

    jobs/<job>/trials/<trial>/attempt-<n>/epoch-<e>/{last.pt,best.pt}

and the epoch's guarded transaction names those keys, with size and sha256, in `checkpoints`.
Objects are never overwritten, so the recorded sha256 always describes the named object,
even when a worker dies between an upload and its database write; and a zombie attempt only
uploads under its own attempt's keys, which no row names. A new attempt (on any machine)
downloads the named keys, verified, into its work folder and resumes from them. Keys that no
row names any more are deleted once the database has moved on.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.store.artifacts import (
    ArtifactStore,
    Blob,
    attempt_dir,
    discard_superseded,
    link_or_copy,
    start_attempt,
    trial_dir,
    trial_key,
)
from app.store.claims import Claim
from ml.trial_state import BEST, LAST, best_epoch

log = logging.getLogger("sweepserve.worker")

FILES = {"best": BEST, "last": LAST}  # checkpoint name -> file name; best first (see start_attempt)
_ATTEMPT = re.compile(r"/attempt-(\d+)/")


class TrialFiles:
    def __init__(self, store: ArtifactStore, claim: Claim) -> None:
        self.store, self.claim = store, claim
        self.trial_path = trial_dir(store.work_root, claim.job_id, claim.trial_id)
        self.out_dir = attempt_dir(self.trial_path, claim.attempt)
        self.current: dict[str, Blob] = {}  # object storage: what the database names now
        self.models: set[str] = set()  # keys of the trial's registered models: never deleted here

    def prepare(self, recorded: dict[str, Blob], models: set[str]) -> Path:
        """The folder the trainer writes in, holding the checkpoints it resumes from.
        `recorded`, `models`: the trial's `checkpoints` rows and model keys (object storage only)."""
        if self.store.local:
            return start_attempt(self.trial_path, self.claim.attempt)
        shutil.rmtree(self.out_dir, ignore_errors=True)
        self.out_dir.mkdir(parents=True)
        self.current, self.models = dict(recorded), set(models)
        for name, file_name in FILES.items():
            if name in recorded:  # verified against the row; from the cache when it holds them
                link_or_copy(self.store.get(recorded[name]), self.out_dir / file_name)
        if recorded:
            log.info("resuming from %s", ", ".join(f"{b.key} ({b.size} bytes)" for b in recorded.values()))
        return self.out_dir

    def publish(self, history: Sequence[Any]) -> dict[str, Blob]:
        """Upload the checkpoints the trainer just wrote for the latest epoch of `history`
        (object storage); returns the rows to record with the epoch."""
        if self.store.local or not history:
            return {}
        latest = history[-1]
        blobs = {"last": self.store.put(self.out_dir / LAST, self._key(latest.epoch, LAST))}
        if best_epoch(list(history)) is latest:
            blobs["best"] = self.store.put(self.out_dir / BEST, self._key(latest.epoch, BEST))
        return blobs

    def recorded(self, blobs: dict[str, Blob]) -> None:
        """The database now names `blobs` (and holds this attempt's lease): drop what is stale."""
        self.current.update(blobs)
        if self.store.local:
            discard_superseded(self.trial_path)  # this attempt holds the trial, and copies of its files
        else:
            self._delete_unnamed(self.current, self.models, up_to=self.claim.attempt)

    def model(self, best_checkpoint: Path | None) -> Blob | None:
        """The checkpoint to register as the trial's model: key, size and sha256."""
        if best_checkpoint is None:
            return None
        if self.store.local:
            key = Path(best_checkpoint).resolve().relative_to(Path(self.store.work_root).resolve())
            return self.store.put(best_checkpoint, key.as_posix())  # already there: digest only
        return self.current.get("best")

    def superseded(self, trial_exists: bool, recorded: dict[str, Blob], models: set[str]) -> list[int] | None:
        """This attempt lost its lease: delete what it wrote that nothing will read. Returns the
        attempts whose files went (local), or None."""
        if not trial_exists:
            self.store.delete_prefix(trial_key(self.claim.job_id, self.claim.trial_id))
            shutil.rmtree(self.trial_path, ignore_errors=True)
            return [self.claim.attempt]
        if self.store.local:
            return discard_superseded(self.trial_path)
        # Only this attempt's own keys: a newer attempt may be uploading keys not named yet.
        self._delete_unnamed(recorded, models, only=self.claim.attempt)
        return None

    def close(self) -> None:
        """The attempt ended: its work folder goes (object storage; the cache keeps copies)."""
        if not self.store.local:
            shutil.rmtree(self.out_dir, ignore_errors=True)

    def _key(self, epoch: int, file_name: str) -> str:
        trial = trial_key(self.claim.job_id, self.claim.trial_id)
        return f"{trial}attempt-{self.claim.attempt}/epoch-{epoch}/{file_name}"

    def _delete_unnamed(
        self, named: dict[str, Blob], models: set[str], *, up_to: int = 0, only: int = 0
    ) -> None:
        """Delete the trial's keys that no row names, of attempts <= up_to (or == only). A key
        once unnamed is never named again, so this never takes what a resume needs."""
        keep = {blob.key for blob in named.values()} | models
        stale = []
        for key in self.store.keys(trial_key(self.claim.job_id, self.claim.trial_id)):
            found = _ATTEMPT.search(key)
            attempt = int(found.group(1)) if found else None
            if key in keep or attempt is None:
                continue
            if attempt == only or (up_to and attempt <= up_to):
                stale.append(key)
        if stale:
            self.store.delete(stale)
