"""The HTTP client behind `sweepserve submit | status | predict | models`.

Plain functions over an `httpx.Client` (any: tests pass FastAPI's TestClient), plus the
`add_<name>` / `cmd_<name>` pairs that app.cli registers. The server is `--url` (default
$SWEEPSERVE_URL or http://127.0.0.1:8000); the key is $SWEEPSERVE_API_KEY, as on the server.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from app.settings import Settings
from ml.status import ACTIVE, FINISHED, JobStatus, TrialStatus

DEFAULT_URL = "http://127.0.0.1:8000"
WATCH_SECONDS = 2.0
MAX_TRIAL_BARS = 30  # above this many trials, only the running ones get a bar
TIMEOUT = httpx.Timeout(60.0, connect=5.0)


class ApiError(Exception):
    """The server answered 4xx/5xx; the message is its problem title and detail."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status, self.problem = status, problem
        title = problem.get("title") or "error"
        super().__init__(f"HTTP {status} {title}: {problem.get('detail', '')}".rstrip(": "))


# --- calls -----------------------------------------------------------------------------------


def connect(url: str, api_key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=TIMEOUT)


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    response = client.request(method, path, **kwargs)
    if response.is_error:
        raise ApiError(response.status_code, _problem(response))
    return None if response.status_code == 204 else response.json()


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    return (
        body if isinstance(body, dict) else {"title": response.reason_phrase, "detail": response.text[:500]}
    )


def load_spec(path: str) -> dict[str, Any]:
    """A JobSpec from a .json or .yaml/.yml file, or from stdin for `-` (YAML, so JSON too)."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    spec = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    if spec is None:
        spec = {}  # an empty file: every default
    if not isinstance(spec, dict):
        raise ValueError(
            f"{path}: a job spec is a mapping (name, search, train, ...), not {type(spec).__name__}"
        )
    return spec


def submit_job(
    client: httpx.Client, spec: dict[str, Any], idempotency_key: str | None = None
) -> dict[str, Any]:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return call(client, "POST", "/jobs", json=spec, headers=headers)


def get_job(client: httpx.Client, job_id: int) -> dict[str, Any]:
    return call(client, "GET", f"/jobs/{job_id}")


def save_csvs(client: httpx.Client, job_id: int, folder: Path) -> list[Path]:
    """GET /jobs/{id}/trials.csv and history.csv into `folder`; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ("trials", "history"):
        response = client.get(f"/jobs/{job_id}/{name}.csv")
        if response.is_error:
            raise ApiError(response.status_code, _problem(response))
        path = folder / f"job-{job_id}-{name}.csv"
        path.write_bytes(response.content)
        written.append(path)
    return written


def get_trial(client: httpx.Client, job_id: int, trial_id: int) -> dict[str, Any]:
    return call(client, "GET", f"/jobs/{job_id}/trials/{trial_id}")


def list_models(client: httpx.Client) -> list[dict[str, Any]]:
    return call(client, "GET", "/models")["items"]


def predict_files(
    client: httpx.Client,
    paths: Sequence[Path],
    model_id: int | None = None,
    resize: bool = False,
    tta: bool = False,
) -> dict[str, Any]:
    files = [
        ("file", (p.name, p.read_bytes(), mimetypes.guess_type(p.name)[0] or "image/png")) for p in paths
    ]
    params: dict[str, Any] = {"resize": str(resize).lower(), "tta": "flip" if tta else "none"}
    if model_id is not None:
        params["model_id"] = model_id
    return call(client, "POST", "/predict", files=files, params=params)


# --- ETA -------------------------------------------------------------------------------------


def eta_seconds(trial: dict[str, Any], epoch_seconds: Sequence[float]) -> float | None:
    """Time left for a running trial: its mean epoch time times the epochs it has left."""
    if trial["status"] != TrialStatus.RUNNING or not epoch_seconds:
        return None
    return statistics.fmean(epoch_seconds) * max(trial["epochs"] - trial["epoch"], 0)


def job_eta_seconds(job: dict[str, Any], epoch_seconds: Sequence[float]) -> float | None:
    """Time left for the job: epochs left in all unfinished trials, shared by the running trials."""
    if not epoch_seconds:
        return None
    left = sum(t["epochs"] - t["epoch"] for t in job["trials"] if t["status"] in ACTIVE)
    return statistics.fmean(epoch_seconds) * left / max(job["progress"][TrialStatus.RUNNING], 1)


def server_eta(job: dict[str, Any], times: EpochTimes) -> float | None:
    """The server's progress.eta_seconds (evaluations included); the epoch-only estimate of
    `job_eta_seconds` from a server without it."""
    if "eta_seconds" in job["progress"]:
        return job["progress"]["eta_seconds"]
    return job_eta_seconds(job, times.all())


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.2f}%"


def format_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "-"


# --- watching --------------------------------------------------------------------------------


class EpochTimes:
    """Per-trial epoch seconds, re-read (GET /jobs/{id}/trials/{id}) only when a trial gains an epoch."""

    def __init__(self, client: httpx.Client, job_id: int) -> None:
        self._client, self._job_id = client, job_id
        self._seconds: dict[int, list[float]] = {}
        self._epoch_seen: dict[int, int] = {}

    def refresh(self, job: dict[str, Any]) -> None:
        for trial in job["trials"]:
            if trial["status"] == TrialStatus.RUNNING and trial["epoch"] != self._epoch_seen.get(trial["id"]):
                history = get_trial(self._client, self._job_id, trial["id"])["history"]
                self._seconds[trial["id"]] = [row["seconds"] for row in history]
                self._epoch_seen[trial["id"]] = trial["epoch"]

    def of(self, trial_id: int) -> list[float]:
        return self._seconds.get(trial_id, [])

    def all(self) -> list[float]:
        return [s for seconds in self._seconds.values() for s in seconds]


def new_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        TextColumn("{task.fields[done]}"),
        TextColumn("{task.fields[status]:<9}"),
        TextColumn("val {task.fields[val]:>7}"),
        TextColumn("ETA {task.fields[eta]}"),
        console=console,
    )


class TrialBars:
    """One bar for the job (trials finished) and one per trial (epochs done)."""

    def __init__(self, progress: Progress, job: dict[str, Any]) -> None:
        self.progress = progress
        self.all_trials = len(job["trials"]) <= MAX_TRIAL_BARS
        self.job_task = progress.add_task(
            f"job {job['id']} {job['name'][:30]}", total=len(job["trials"]), **_blank()
        )
        self.tasks: dict[int, TaskID] = {}

    def update(self, job: dict[str, Any], times: EpochTimes) -> None:
        finished = sum(job["progress"].get(status, 0) for status in FINISHED)  # progress has eta_seconds too
        best = job["best"]["val_accuracy"] if job["best"] else None
        done = f"{finished}/{len(job['trials'])} trials"
        eta = format_duration(server_eta(job, times)) if JobStatus(job["status"]).active else "-"
        self.progress.update(
            self.job_task, completed=finished, done=done, status=job["status"], val=percent(best), eta=eta
        )
        for trial in job["trials"]:
            self._update_trial(trial, times)

    def _update_trial(self, trial: dict[str, Any], times: EpochTimes) -> None:
        shown = self.all_trials or trial["status"] == TrialStatus.RUNNING
        task = self.tasks.get(trial["id"])
        if not shown:
            if task is not None:
                self.progress.remove_task(self.tasks.pop(trial["id"]))
            return
        if task is None:
            label = f"  #{trial['index']} {format_params(trial['params'])[:32]}"
            task = self.tasks[trial["id"]] = self.progress.add_task(label, total=trial["epochs"], **_blank())
        self.progress.update(
            task,
            completed=trial["epoch"],
            done=f"{trial['epoch']}/{trial['epochs']} ep",
            status=trial["status"],
            val=percent(trial["val_accuracy"]),
            eta=format_duration(eta_seconds(trial, times.of(trial["id"]))),
        )


def _blank() -> dict[str, str]:
    return {"done": "", "status": "", "val": "-", "eta": "-"}


def watch_job(
    client: httpx.Client,
    job_id: int,
    console: Console,
    interval: float = WATCH_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Live progress bars until the job is finished; returns the finished job."""
    job = get_job(client, job_id)
    times = EpochTimes(client, job_id)
    with new_progress(console) as progress:
        bars = TrialBars(progress, job)
        while True:
            times.refresh(job)
            bars.update(job, times)
            if not JobStatus(job["status"]).active:
                return job
            sleep(interval)
            job = get_job(client, job_id)


# --- tables ----------------------------------------------------------------------------------


def job_table(job: dict[str, Any]) -> Table:
    best_id = job["best"]["trial_id"] if job["best"] else None
    eta = job["progress"].get("eta_seconds") if JobStatus(job["status"]).active else None
    title = f"job {job['id']} {job['name']!r}: {job['status']}"
    table = Table(title=title + (f", ETA {format_duration(eta)}" if eta is not None else ""))
    for column in ("#", "params", "status", "epoch", "val acc", "test acc", "train loss", "error"):
        table.add_column(
            column, justify="right" if column in ("#", "epoch", "val acc", "test acc") else "left"
        )
    for t in job["trials"]:
        loss = "-" if t["train_loss"] is None else f"{t['train_loss']:.4f}"
        cells = (format_params(t["params"]), t["status"], f"{t['epoch']}/{t['epochs']}")
        row = (str(t["index"]), *cells, percent(t["val_accuracy"]), percent(t["test_accuracy"]), loss)
        table.add_row(*row, (t["error"] or "")[:60], style="bold green" if t["id"] == best_id else None)
    return table


def best_line(job: dict[str, Any]) -> str:
    best = job["best"]
    if best is None:
        return "best: no trial has a validation accuracy yet"
    model = f", model {best['model_id']}" if best["model_id"] else ""
    scores = f"val {percent(best['val_accuracy'])}, test {percent(best['test_accuracy'])}"
    trial = f"trial {best['trial_id']} ({format_params(best['params'])})"
    return f"best: {trial} {scores} at epoch {best['epoch']}{model}"


def models_table(models: list[dict[str, Any]]) -> Table:
    table = Table(title="models")
    for column in ("id", "job", "trial", "arch", "epoch", "val acc", "test acc", "created", "active"):
        table.add_column(column)
    for m in models:
        cells = (m["id"], m["job_id"], m["trial_id"], m["arch"], m["epoch"])
        extra = (
            percent(m["val_accuracy"]),
            percent(m["test_accuracy"]),
            m["created_at"][:19],
            "*" * m["active"],
        )
        table.add_row(*map(str, cells), *extra)
    return table


def predictions_table(paths: Sequence[Path], answer: dict[str, Any]) -> Table:
    model = answer["model"]
    table = Table(title=f"model {model['id']} (job {model['job_id']}, val {percent(model['val_accuracy'])})")
    for column in ("image", "label", "confidence", "runner-up"):
        table.add_column(column)
    for path, p in zip(paths, answer["predictions"], strict=True):
        ranked = sorted(p["probabilities"].items(), key=lambda kv: kv[1], reverse=True)
        runner_up = f"{ranked[1][0]} {percent(ranked[1][1])}" if len(ranked) > 1 else "-"
        table.add_row(str(path), p["label"], percent(p["confidence"]), runner_up)
    return table


# --- the CLI commands --------------------------------------------------------------------------


def _add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=os.environ.get("SWEEPSERVE_URL", DEFAULT_URL), help=f"server (default {DEFAULT_URL})"
    )
    parser.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")


def add_submit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="job spec, .yaml/.yml or .json; '-' reads stdin")
    parser.add_argument("--idempotency-key", help="resubmitting with the same key returns the same job")
    parser.add_argument("--watch", action="store_true", help="then follow it like `status --watch`")
    _add_connection(parser)


def add_status(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", type=int, help="job id")
    parser.add_argument("--watch", action="store_true", help="live progress bars until the job finishes")
    parser.add_argument("--interval", type=float, default=WATCH_SECONDS, help="seconds between polls")
    parser.add_argument(
        "--csv",
        metavar="DIR",
        help="write the job's trials and history as DIR/job-<id>-trials.csv and DIR/job-<id>-history.csv",
    )
    _add_connection(parser)


def add_predict(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=Path, help="32x32 PNG or JPEG files")
    parser.add_argument("--model", type=int, dest="model_id", help="a model id (default: the active model)")
    parser.add_argument("--resize", action="store_true", help="let the server scale other sizes to 32x32")
    parser.add_argument("--tta", action="store_true", help="average with the mirror image")
    _add_connection(parser)


def add_models(parser: argparse.ArgumentParser) -> None:
    _add_connection(parser)


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    """Submit a sweep (POST /jobs)."""

    def action(client: httpx.Client, console: Console) -> int:
        job = submit_job(client, load_spec(args.spec), args.idempotency_key)
        if args.json:
            console.print_json(data=job)
        else:
            trials = len(job["trials"])
            console.print(
                f"job {job['id']} {job['status']}: {trials} trial(s); see {args.url}/ui/jobs/{job['id']}"
            )
        return _follow(client, console, job["id"], WATCH_SECONDS) if args.watch else 0

    return _run(args, settings, action)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """A job's trials; with --watch, live until it finishes (exit 0 if it succeeded, 1 if not)."""

    def action(client: httpx.Client, console: Console) -> int:
        if args.csv:
            for path in save_csvs(client, args.job, Path(args.csv)):
                console.print(f"wrote {path}")
            return 0
        if args.watch:
            return _follow(client, console, args.job, args.interval)
        job = get_job(client, args.job)
        _print_job(console, job, args.json)
        return 0

    return _run(args, settings, action)


def cmd_predict(args: argparse.Namespace, settings: Settings) -> int:
    """Classify images with the served model (POST /predict)."""

    def action(client: httpx.Client, console: Console) -> int:
        answer = predict_files(client, args.images, args.model_id, args.resize, args.tta)
        if args.json:
            console.print_json(data=answer)
        else:
            console.print(predictions_table(args.images, answer))
        return 0

    return _run(args, settings, action)


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    """Registered models; * marks the one /predict uses."""

    def action(client: httpx.Client, console: Console) -> int:
        models = list_models(client)
        if args.json:
            console.print_json(data=models)
        else:
            console.print(models_table(models))
        return 0

    return _run(args, settings, action)


def _follow(client: httpx.Client, console: Console, job_id: int, interval: float) -> int:
    job = watch_job(client, job_id, console, interval)
    console.print(job_table(job))
    console.print(best_line(job))
    return 0 if job["status"] == JobStatus.SUCCEEDED else 1


def _print_job(console: Console, job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        console.print_json(data=job)
        return
    console.print(job_table(job))
    console.print(best_line(job))


def _run(args: argparse.Namespace, settings: Settings, action: Callable[[httpx.Client, Console], int]) -> int:
    """Connect, act, and turn the expected failures into one line on stderr and exit code 1."""
    console, errors = Console(), Console(stderr=True)
    try:
        with connect(args.url, settings.api_key) as client:
            return action(client, console)
    except httpx.TransportError as exc:
        _error(errors, f"cannot reach {args.url} ({exc}); is `sweepserve serve` running?")
    except (ApiError, OSError, ValueError, yaml.YAMLError) as exc:
        _error(errors, str(exc))
    except KeyboardInterrupt:
        return 130
    return 1


def _error(console: Console, message: str) -> None:
    # No markup: a problem detail may contain [brackets] that rich would eat.
    console.print(f"error: {message}", style="red", markup=False, highlight=False)


CLIENT_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[..., int], str]] = {
    "submit": (add_submit, cmd_submit, "submit a sweep from a YAML or JSON spec"),
    "status": (add_status, cmd_status, "a job's progress (--watch: live)"),
    "predict": (add_predict, cmd_predict, "classify images with the served model"),
    "models": (add_models, cmd_models, "list registered models"),
}
