"""Where a trial's checkpoints live: one folder per attempt.

    <artifacts>/jobs/<job id>/trials/<trial id>/attempt-<n>/{last.pt,best.pt}

Attempts never share files, so a paused worker that wakes up after its lease was taken over
(a zombie) can only touch its own attempt's folder, which nothing reads any more: a new
attempt starts from hard links (or copies) of the newest earlier attempt's best.pt and
last.pt, and the database refuses the zombie's write-backs. Retention: once an attempt holds
a last.pt of its own, the folders of older attempts are deleted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from app.store.artifacts.local import link_or_copy
from ml.checkpoint_files import BEST, LAST

ATTEMPT_PREFIX = "attempt-"


def job_key(job_id: int) -> str:
    """The key prefix (a folder) of everything a job stores."""
    return f"jobs/{job_id}/"


def trial_key(job_id: int, trial_id: int) -> str:
    return f"{job_key(job_id)}trials/{trial_id}/"


def job_dir(artifacts_dir: Path, job_id: int) -> Path:
    return Path(artifacts_dir) / "jobs" / str(job_id)


def trial_dir(artifacts_dir: Path, job_id: int, trial_id: int) -> Path:
    return job_dir(artifacts_dir, job_id) / "trials" / str(trial_id)


def attempt_dir(trial_path: Path, attempt: int) -> Path:
    return trial_path / f"{ATTEMPT_PREFIX}{attempt}"


def attempts_on_disk(trial_path: Path) -> dict[int, Path]:
    """Attempt number -> folder, for every attempt folder under `trial_path`."""
    if not trial_path.is_dir():
        return {}
    found = {}
    for entry in trial_path.iterdir():
        number = entry.name.removeprefix(ATTEMPT_PREFIX)
        if entry.name.startswith(ATTEMPT_PREFIX) and number.isdigit() and entry.is_dir():
            found[int(number)] = entry
    return found


def start_attempt(trial_path: Path, attempt: int) -> Path:
    """The folder attempt `attempt` trains in, holding the newest earlier attempt's checkpoints
    (when there is one) so that the trainer resumes from them. Without any last.pt (the job's
    retention deleted it), the newest best.pt, which the trainer continues from."""
    out_dir = attempt_dir(trial_path, attempt)
    earlier = [n for n in _complete_attempts(trial_path) if n < attempt]
    if not earlier and not (out_dir / BEST).is_file():
        earlier = [
            n for n, path in attempts_on_disk(trial_path).items() if n < attempt and (path / BEST).is_file()
        ]
    if earlier and not (out_dir / LAST).is_file():
        source = attempt_dir(trial_path, max(earlier))
        out_dir.mkdir(parents=True, exist_ok=True)
        # best.pt first, last.pt second: the trainer writes them in the opposite order, so a zombie
        # still writing the source can leave best.pt older than last.pt (which resume repairs),
        # never newer; and a last.pt present says the folder is complete.
        for name in (BEST, LAST):
            if (source / name).is_file():
                link_or_copy(source / name, out_dir / name)
    return out_dir


def discard_superseded(trial_path: Path) -> list[int]:
    """Delete the folders of attempts older than the newest one holding a last.pt; nothing will
    resume from them. Returns the attempt numbers deleted."""
    complete = _complete_attempts(trial_path)
    if not complete:
        return []
    newest = max(complete)
    old = {n: path for n, path in attempts_on_disk(trial_path).items() if n < newest}
    for path in old.values():
        shutil.rmtree(path, ignore_errors=True)
    return sorted(old)


def _complete_attempts(trial_path: Path) -> list[int]:
    """Attempts whose folder holds a last.pt, i.e. that a later attempt can resume from."""
    return [n for n, path in attempts_on_disk(trial_path).items() if (path / LAST).is_file()]


def resume_point(trial_path: Path) -> Path | None:
    """The checkpoint a continued trial would start from: the newest last.pt, else (the job's
    retention deleted it) the newest best.pt; None when there is nothing to continue from."""
    for name in (LAST, BEST):
        held = [n for n, path in attempts_on_disk(trial_path).items() if (path / name).is_file()]
        if held:
            return attempt_dir(trial_path, max(held)) / name
    return None


def keep_model_file(artifacts_dir: Path, model_path: str) -> str:
    """Give a registered model's best.pt a name of its own outside the attempt folders, which a
    continued trial supersedes and deletes: `<trial>/model-<attempt>.pt`, a hard link (or copy).
    Returns the new path relative to `artifacts_dir`; a path outside an attempt folder is kept."""
    source = Path(artifacts_dir) / model_path
    attempt = source.parent.name
    if not attempt.startswith(ATTEMPT_PREFIX):
        return model_path
    target = source.parent.parent / f"model-{attempt.removeprefix(ATTEMPT_PREFIX)}.pt"
    if not target.is_file():
        link_or_copy(source, target)
    return target.relative_to(artifacts_dir).as_posix()
