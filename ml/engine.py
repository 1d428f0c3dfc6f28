"""The epoch loop every trial runs: train a `TrainConfig` on device-resident splits, checkpoint
every epoch, resume exactly.

`train_one_epoch` and `ml.evaluate.evaluate` are the two building blocks (torchvision-reference
style); `train_process` puts them together for one process, as a member of a `Team`: the
base `Team` is a single process on the CPU, one GPU or several GPUs with DataParallel;
`ml.distributed.DistributedTeam` is one rank of a DDP trial. `ml.train.run_trial` picks.
"""

from __future__ import annotations

import functools
import gc
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ml import trial_state
from ml.config import TrainConfig
from ml.data import MEAN, STD, Splits
from ml.environment import Runtime, describe, determinism, seed_everything
from ml.evaluate import evaluate
from ml.models import unwrap
from ml.plan import Plan, measure, probe_seconds
from ml.plan import plan as plan_budget
from ml.setup import TrialSetup, build_setup
from ml.status import Decision, TrialStatus, status_after

log = logging.getLogger(__name__)

POLL_EVERY = 10  # batches between NaN checks (each costs a device sync); should_stop is polled every batch
EVAL_MARGIN = 1.5  # a time budget reserves evaluation time at 1.5x the measured: measured on a slice


@dataclass
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float  # mean training loss (with label smoothing) over the epoch's batches
    train_accuracy: float  # on the augmented training batches
    val_loss: float  # cross-entropy without label smoothing
    val_accuracy: float
    lr: float  # of the epoch's last step
    seconds: float  # wall time of the epoch, training and validation
    images_per_second: float  # training images per second of training time

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrialHooks:
    """Subclass and override; the defaults do nothing."""

    def restored(self, history: list[EpochMetrics]) -> Decision | None:
        """At resume, before training: the epochs last.pt already holds. The decision is taken
        as at an epoch's end (a trial paused at a rung learns here whether it goes on)."""
        return None

    def epoch_end(self, metrics: EpochMetrics, history: list[EpochMetrics]) -> Decision:
        """After last.pt (and best.pt if improved) is written. None counts as CONTINUE."""
        return Decision.CONTINUE

    def should_stop(self) -> bool:
        """Polled after every training step (keep it cheap); True aborts the trial at once with
        TrialAborted."""
        return False

    def planned(self, plan: Plan, cfg: TrainConfig) -> None:
        """A fresh trial with a time budget has measured its speed and planned (`cfg` is the
        planned config it trains with); not called on resume, which reuses the saved plan."""


class TrialAborted(RuntimeError):
    """`should_stop` returned True; last.pt holds the last finished epoch."""


@dataclass
class TrialResult:
    status: TrialStatus  # SUCCEEDED, PRUNED, CANCELLED, or QUEUED: paused, to resume later
    history: list[EpochMetrics]
    best_epoch: int | None
    best_val_accuracy: float | None
    test_accuracy: float | None  # once, with best.pt's weights; None when cancelled, paused or untested
    best_checkpoint: Path | None
    environment: dict[str, Any] = field(default_factory=dict)  # with "plan" under a time budget
    val_images: int = 0  # what the accuracies were measured on: their intervals need it
    test_images: int = 0


@dataclass
class EpochTrain:
    loss: float
    accuracy: float
    images: int
    lr: float


Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
Measure = Callable[[torch.Tensor, torch.Tensor], tuple[float, float]]


class Team:
    """The processes that train one trial together. This base class is a team of one, the usual
    case; `ml.distributed.DistributedTeam` (parallel="ddp") overrides each step for one process
    per device."""

    leader = True  # writes the checkpoints

    def resume(self, setup: TrialSetup, out_dir: Path) -> list[dict[str, Any]]:
        return trial_state.resume(setup, out_dir)

    def shard(self, batches: Batches) -> Batches:
        """This process's part of each batch of the epoch."""
        return batches

    def gather(self, done: EpochTrain, setup: TrialSetup) -> EpochTrain:
        """The training pass's metrics over the whole team, and its weights ready to evaluate."""
        return done

    def evaluate(self, measure: Measure, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """(loss, accuracy) of `measure` over all of x, y, the work shared across the team."""
        return measure(x, y)


def train_process(
    cfg: TrainConfig,
    splits: Splits,
    out_dir: Path,
    hooks: TrialHooks,
    runtime: Runtime,
    metadata: dict[str, Any],
    allow_download: bool,
    team: Team,
) -> TrialResult:
    """This process's part of a trial on `runtime`, as a member of `team` (see ml.train.run_trial)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        with determinism(cfg.deterministic, runtime.device):
            runtime = _precision_of_resumed(cfg, runtime, out_dir)
            cfg, plan, deadline = _plan_budget(cfg, splits, runtime, allow_download, out_dir, hooks, started)
            seed_everything(cfg.seed)
            setup = build_setup(cfg, splits, runtime, allow_download)
            extra = {"plan": plan.as_dict()} if plan is not None else {}
            return _train(setup, out_dir, hooks, {**metadata, **extra}, team, deadline)
    finally:
        _release_memory(runtime.device, cfg.compile)


def _precision_of_resumed(cfg: TrainConfig, runtime: Runtime, out_dir: Path) -> Runtime:
    """A resumed "auto" trial trains on in the precision it started in: measured again, a machine
    near the margin (or busier now) could choose the other one, and the resume would not be exact."""
    saved = trial_state.saved_precision(out_dir) if cfg.precision == "auto" else None
    if saved is None or saved == runtime.precision:
        return runtime
    log.info("resuming in %s, the precision the trial began in (measured now: %s)", saved, runtime.precision)
    return replace(runtime, precision=saved)


def _plan_budget(
    cfg: TrainConfig,
    splits: Splits,
    runtime: Runtime,
    allow_download: bool,
    out_dir: Path,
    hooks: TrialHooks,
    started: float,
) -> tuple[TrainConfig, Plan | None, Deadline | None]:
    """(config to train, its plan, deadline) of a trial with a time budget; cfg unchanged without.

    A resumed trial keeps the plan saved in its last.pt (its schedule was laid out over it) and
    has no deadline: the interruption already broke the budget."""
    if cfg.time_budget_s is None:
        return cfg, None, None
    n_train = len(splits.train_y)
    saved = trial_state.saved_plan(out_dir)
    if saved is not None:
        return saved.apply(cfg, n_train), saved, None
    speed = measure(cfg, splits, runtime, allow_download, probe_seconds(cfg.time_budget_s), train_one_epoch)
    left = cfg.time_budget_s - (time.monotonic() - started)
    chosen = plan_budget(cfg, speed, left, n_train, len(splits.val_y), len(splits.test_y))
    planned = chosen.apply(cfg, n_train)
    log.info(
        "time budget %.0f s: %d epochs x %d images, batch %d (expected %.0f s after %.0f s of measuring)",
        cfg.time_budget_s,
        chosen.epochs,
        chosen.epoch_images,
        chosen.batch_size,
        chosen.expected_seconds,
        speed.seconds,
    )
    hooks.planned(chosen, planned)
    rate = speed.eval_images_per_second / EVAL_MARGIN
    val_seconds, test_seconds = len(splits.val_y) / rate, len(splits.test_y) / rate
    return planned, chosen, Deadline(started + cfg.time_budget_s, val_seconds, test_seconds)


@dataclass
class Deadline:
    """Where a time-budgeted trial must stop training so that its evaluations still fit
    (time.monotonic() values): no epoch starts that would end after `last_epoch_end`, and an
    epoch's batches stop at `training_end` (the schedule is then cut short, not completed)."""

    end: float  # the budget's end
    val_seconds: float  # one validation pass, with the margin
    test_seconds: float  # the final test, with the margin
    cut_epoch: int | None = None  # the epoch whose batches were stopped, if any

    @property
    def last_epoch_end(self) -> float:
        return self.end - self.test_seconds

    def fits_epoch(self, seconds: float) -> bool:
        """Whether an epoch of `seconds` started now ends before last_epoch_end."""
        return time.monotonic() + seconds <= self.last_epoch_end

    @property
    def training_end(self) -> float:
        return self.end - self.test_seconds - self.val_seconds

    def batches(self, batches: Batches, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """`batches` until training_end has passed (after at least one)."""
        for i, batch in enumerate(batches):
            if i > 0 and time.monotonic() > self.training_end:
                log.warning("time budget: epoch %d stopped after %d batches", epoch, i)
                self.cut_epoch = epoch
                return
            yield batch


def _train(
    setup: TrialSetup,
    out_dir: Path,
    hooks: TrialHooks,
    metadata: dict[str, Any],
    team: Team,
    deadline: Deadline | None = None,
) -> TrialResult:
    cfg = setup.cfg
    history = [EpochMetrics(**m) for m in team.resume(setup, out_dir)]
    decision = Decision.CONTINUE
    if history:
        log.info("resuming %s after epoch %d", out_dir, len(history))
        decision = hooks.restored(list(history)) or Decision.CONTINUE
    compile_seconds = setup.wrap()
    environment = describe(setup.runtime, cfg, compile_seconds, compiled=setup.compiled)
    if "plan" in metadata:
        environment["plan"] = metadata["plan"]
    epoch = len(history) + 1
    while decision is Decision.CONTINUE and epoch <= cfg.epochs:
        if hooks.should_stop():
            raise TrialAborted(f"stopped before epoch {epoch}: should_stop() returned True")
        if deadline is not None and history and not deadline.fits_epoch(history[-1].seconds):
            log.warning("time budget: stopping before epoch %d, which would end past the deadline", epoch)
            environment["plan"] = {**environment["plan"], "stopped_before_epoch": epoch}
            break
        metrics = _run_epoch(setup, epoch, hooks.should_stop, team, deadline)
        if deadline is not None and deadline.cut_epoch == epoch:
            environment["plan"] = {**environment["plan"], "cut_in_epoch": epoch}
        history.append(metrics)
        if team.leader:
            trial_state.save(setup, out_dir, history, {"environment": environment, **metadata})
        decision = hooks.epoch_end(metrics, list(history)) or Decision.CONTINUE
        epoch += 1
    return _result(setup, out_dir, status_after(decision), history, environment, team)


def _run_epoch(
    setup: TrialSetup,
    epoch: int,
    should_stop: Callable[[], bool],
    team: Team,
    deadline: Deadline | None = None,
) -> EpochMetrics:
    cfg = setup.cfg
    start = time.perf_counter()
    batches: Batches = setup.epoch_batches(epoch)
    if deadline is not None:
        batches = deadline.batches(batches, epoch)
    done = train_one_epoch(
        setup.runner,
        setup.optimizer,
        setup.scheduler,
        team.shard(batches),
        criterion=setup.criterion,
        epoch=epoch,
        runtime=setup.runtime,
        ema_update=setup.ema.update if setup.ema else None,
        should_stop=should_stop,
    )
    done = team.gather(done, setup)
    train_seconds = time.perf_counter() - start
    val_loss, val_accuracy = _evaluate(setup, setup.val_x, setup.val_y, team)
    seconds = time.perf_counter() - start
    log.info("epoch %d/%d: val accuracy %.4f, %.1f s", epoch, cfg.epochs, val_accuracy, seconds)
    return EpochMetrics(
        epoch, done.loss, done.accuracy, val_loss, val_accuracy, done.lr, seconds, done.images / train_seconds
    )


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    criterion: nn.Module,
    epoch: int,
    runtime: Runtime,
    ema_update: Callable[[nn.Module], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    poll_every: int = POLL_EVERY,
) -> EpochTrain:
    """One pass over `batches` (normalised float images, labels, on the device); scheduler stepped per batch.

    Losses stay on the device and are checked for NaN every `poll_every` batches, so the GPU is not
    synchronised per batch; the error still names the first bad batch (1-based). `should_stop`
    (a flag read, no device sync) is polled after every step, so a preempted worker stops within a
    step, however few batches an epoch has.
    """
    model.train()
    losses: list[torch.Tensor] = []
    correct: list[torch.Tensor] = []
    images, checked, lr = 0, 0, 0.0
    for batch, (x, y) in enumerate(batches, start=1):
        with runtime.autocast():
            logits = model(x)
        loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr = scheduler.get_last_lr()[0]  # the lr this step used
        scheduler.step()
        if ema_update is not None:
            ema_update(unwrap(model))
        losses.append(loss.detach())
        correct.append((logits.detach().argmax(1) == y).sum())
        images += len(y)
        if batch % poll_every == 0:
            checked = _check_finite(losses, checked, epoch)
        if should_stop is not None and should_stop():
            raise TrialAborted(f"stopped at epoch {epoch} batch {batch}: should_stop() returned True")
    _check_finite(losses, checked, epoch)
    if not losses:
        raise ValueError("an epoch needs at least one batch")
    return EpochTrain(
        torch.stack(losses).mean().item(), torch.stack(correct).sum().item() / images, images, lr
    )


def _check_finite(losses: list[torch.Tensor], start: int, epoch: int) -> int:
    """Raise FloatingPointError naming the first non-finite loss after `start`; returns the count checked."""
    if len(losses) > start:
        recent = torch.stack(losses[start:])
        bad = ~torch.isfinite(recent)
        if bad.any():
            first = int(bad.nonzero()[0, 0])
            what = "NaN" if torch.isnan(recent[first]) else "infinite"
            raise FloatingPointError(f"loss became {what} at epoch {epoch} batch {start + first + 1}")
    return len(losses)


def _evaluate(setup: TrialSetup, x: torch.Tensor, y: torch.Tensor, team: Team) -> tuple[float, float]:
    return team.evaluate(functools.partial(_measure, setup), x, y)


def _measure(setup: TrialSetup, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    cfg = setup.cfg
    return evaluate(
        setup.eval_runner,
        x,
        y,
        cfg.batch_size,
        MEAN,
        STD,
        cfg.tta,
        cfg.channels_last,
        setup.runtime.precision,
        cfg.tta_translate,
    )


def _result(
    setup: TrialSetup,
    out_dir: Path,
    status: TrialStatus,
    history: list[EpochMetrics],
    environment: dict[str, Any],
    team: Team,
) -> TrialResult:
    best = trial_state.best_epoch(history)
    best_path = out_dir / trial_state.BEST if best is not None else None
    test_accuracy = None
    tested = len(setup.test_y) > 0  # none with data.test "best": the job tests its selection later
    if status in (TrialStatus.SUCCEEDED, TrialStatus.PRUNED) and best_path is not None and tested:
        trial_state.load_best_weights(setup, best_path)
        test_accuracy = _evaluate(setup, setup.test_x, setup.test_y, team)[1]
    return TrialResult(
        status,
        history,
        best.epoch if best else None,
        best.val_accuracy if best else None,
        test_accuracy,
        best_path,
        environment,
        val_images=len(setup.val_y),
        test_images=len(setup.test_y) if test_accuracy is not None else 0,
    )


def _release_memory(device: torch.device, compiled: bool) -> None:
    # A worker runs trial after trial in one process: nothing of this one may linger.
    if compiled:
        torch._dynamo.reset()  # compiled graphs hold on to the trial's modules
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
