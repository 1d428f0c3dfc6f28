"""How long a trial still needs, from its measured epoch times (GET /jobs/{id} `progress.eta_seconds`).

Free of torch on purpose: the queue (app.store.jobs) computes it without loading the trainer.
"""

from __future__ import annotations

from ml.config import DataConfig, TrainConfig

DATASET_SIZES = {"cifar10": (50_000, 10_000)}  # (train incl. validation, test) images
_EVAL_COST = 1 / 3  # an evaluated image costs about a third of a trained one (forward only)


def remaining_seconds(
    cfg: TrainConfig, data: DataConfig, epochs_left: int, epoch_seconds: float, tested: bool
) -> float:
    """Seconds a trial still needs: `epochs_left` epochs like its measured ones (training and
    validation), plus the final test when `tested`, priced from the same epoch time by the
    images each pass handles (an evaluated image at 1/3 of a trained one, x2 with flip TTA)."""
    total_train, n_test = DATASET_SIZES[data.dataset]
    n_train = total_train - data.val_size
    if data.train_limit is not None:
        n_train = min(n_train, data.train_limit)
    if cfg.epoch_images is not None:
        n_train = min(n_train, cfg.epoch_images)
    eval_cost = _EVAL_COST * (2 if cfg.tta else 1)
    per_image = epoch_seconds / (n_train + eval_cost * data.val_size)
    test = per_image * eval_cost * n_test if tested else 0.0
    return max(epochs_left, 0) * epoch_seconds + test
