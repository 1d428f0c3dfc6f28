"""A trial's files: out_dir/last.pt after every epoch, out_dir/best.pt when validation improves.

last.pt = best.pt's fields (model = the evaluated weights, metadata) plus what resuming needs:
    train_model   the trained weights, when they differ from `model` (EMA on)
    ema_updates   EMA update count (its decay warm-up depends on it)
    optimizer, scheduler, rng (every random stream, see ml.environment.rng_state)
    history       list of EpochMetrics as dicts
last.pt is written before best.pt, so after a crash best.pt lags by at most that epoch, and
`resume` rewrites it from last.pt.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol, TypeVar

from ml import extension
from ml.checkpoint import inference_checkpoint, load_checkpoint, save_atomic
from ml.checkpoint_files import BEST, LAST
from ml.config import TrainConfig
from ml.data import MEAN, STD
from ml.environment import restore_rng_state, rng_state
from ml.plan import Plan
from ml.selection import first_best
from ml.setup import TrialSetup

log = logging.getLogger(__name__)

CURVE = "curve"  # best.pt's history up to its epoch: what continuing from best.pt alone needs
_TRAINING_KEYS = ("train_model", "ema_updates", "optimizer", "scheduler", "rng", "history")


class Scored(Protocol):
    epoch: int
    val_accuracy: float


ScoredT = TypeVar("ScoredT", bound=Scored)


def best_epoch(history: list[ScoredT]) -> ScoredT | None:
    """The epoch with the highest validation accuracy; the earliest on ties (see ml.selection)."""
    best = first_best([m.val_accuracy for m in history])
    return None if best is None else history[best]


def save(setup: TrialSetup, out_dir: Path, history: list[Any], metadata: dict[str, Any]) -> None:
    latest = history[-1]
    plain = {
        **metadata,
        "seed": setup.cfg.seed,
        "epoch": latest.epoch,
        "val_accuracy": latest.val_accuracy,
        "val_fingerprint": setup.val_fingerprint,
    }
    best = inference_checkpoint(setup.eval_net.state_dict(), setup.cfg, setup.classes, MEAN, STD, **plain)
    curve = [m.as_dict() for m in history]
    save_atomic({**best, **_training_state(setup), "history": curve}, out_dir / LAST)
    if best_epoch(history) is latest:
        save_atomic({**best, CURVE: curve}, out_dir / BEST)


def _training_state(setup: TrialSetup) -> dict[str, Any]:
    state: dict[str, Any] = {
        "optimizer": setup.optimizer.state_dict(),
        "scheduler": setup.scheduler.state_dict(),
        "rng": rng_state(setup.generator),
    }
    if setup.ema is not None:
        state["train_model"] = setup.net.state_dict()
        state["ema_updates"] = setup.ema.updates
    return state


def resume(setup: TrialSetup, out_dir: Path) -> list[dict[str, Any]]:
    """Restore every piece of training state from out_dir/last.pt; returns its history (empty if none)."""
    path = out_dir / LAST
    if not path.is_file():
        return _continue_from_best(setup, out_dir / BEST)
    ckpt = load_checkpoint(path)
    history = list(ckpt["history"])
    check_same_trial(path, ckpt["metadata"], setup, len(history))
    setup.net.load_state_dict(ckpt.get("train_model", ckpt["model"]))
    if setup.ema is not None:
        setup.ema.load_state_dict({"module": ckpt["model"], "updates": ckpt["ema_updates"]})
    setup.optimizer.load_state_dict(ckpt["optimizer"])
    setup.scheduler.load_state_dict(ckpt["scheduler"])
    if extension.relay(setup.scheduler, len(history), setup.cfg.epochs):
        log.info("%s: extended from %d to %d epochs; schedule re-laid", path, len(history), setup.cfg.epochs)
    if not restore_rng_state(ckpt["rng"], setup.generator):
        log.warning("%s was written on another device type: augmentation continues from a new seed", path)
        setup.generator.manual_seed(setup.cfg.seed + len(history))
    _repair_best(out_dir, ckpt)
    return history


class SplitMismatch(ValueError):
    """last.pt was trained and selected on other validation images than this attempt's."""


def check_same_trial(path: Path, metadata: dict[str, Any], setup: TrialSetup, done_epochs: int) -> None:
    """Refuse to resume from a checkpoint of another config (but for an extension's epochs, see
    ml.extension) or another validation split.

    The stored config goes through validation first: a checkpoint written before TrainConfig
    gained a field compares equal once the field's default is filled in."""
    stored = TrainConfig.model_validate(metadata["config"]).model_dump(mode="json")
    extension.check_resumable(stored, setup.cfg, done_epochs, path)
    written = metadata.get("val_fingerprint")
    if not written:  # written before fingerprints were recorded: nothing to compare
        log.warning("%s has no validation fingerprint; cannot check the split", path)
    elif setup.val_fingerprint and written != setup.val_fingerprint:
        raise SplitMismatch(
            f"{path} was selected on another validation split (fingerprint {written[:12]}, now "
            f"{setup.val_fingerprint[:12]}): data.split_seed, val_size, train_limit or the data set "
            f"changed; resuming would compare epochs on different images"
        )


def _continue_from_best(setup: TrialSetup, path: Path) -> list[dict[str, Any]]:
    """No last.pt, but a best.pt: the job's retention deleted last.pt of a finished trial that is
    now extended. Its best weights go on with a fresh optimiser from the best epoch B (history
    1..B: later epochs are dropped), on a schedule re-laid from B as for any extension."""
    if not path.is_file():
        return []
    ckpt = load_checkpoint(path)
    curve = list(ckpt.get(CURVE) or [])
    if not curve:
        raise ValueError(
            f"{path} holds no curve to continue from; remove its folder to start the trial afresh"
        )
    check_same_trial(path, ckpt["metadata"], setup, len(curve))
    saved = ckpt["metadata"]["config"]
    setup.net.load_state_dict(ckpt["model"])
    extension.continue_from(setup.scheduler, len(curve), saved["epochs"], setup.cfg.epochs)
    if setup.ema is not None:
        setup.ema.load_state_dict({"module": ckpt["model"], "updates": setup.scheduler.last_epoch})
    setup.generator.manual_seed(setup.cfg.seed + len(curve))
    log.info("%s: continuing from best epoch %d's weights (no last.pt)", path, len(curve))
    return curve


def _repair_best(out_dir: Path, last: dict[str, Any]) -> None:
    best = best_epoch([SimpleNamespace(**m) for m in last["history"]])
    if best is None or best.epoch != last["metadata"]["epoch"]:
        return
    path = out_dir / BEST
    if not path.is_file() or load_checkpoint(path)["metadata"].get("epoch") != best.epoch:
        curve = last["history"][: last["history"].index(vars(best)) + 1]
        save_atomic({**{k: v for k, v in last.items() if k not in _TRAINING_KEYS}, CURVE: curve}, path)


def saved_plan(out_dir: Path) -> Plan | None:
    """The time-budget plan out_dir/last.pt was trained with, if any."""
    saved = _saved_metadata(out_dir).get("plan")
    return Plan.from_dict(saved) if saved else None


def saved_precision(out_dir: Path) -> str | None:
    """The precision out_dir/last.pt was trained in, if any."""
    return _saved_metadata(out_dir).get("environment", {}).get("precision")


def _saved_metadata(out_dir: Path) -> dict[str, Any]:
    path = out_dir / LAST
    return load_checkpoint(path)["metadata"] if path.is_file() else {}


def load_best_weights(setup: TrialSetup, path: Path) -> None:
    setup.eval_net.load_state_dict(load_checkpoint(path)["model"])
