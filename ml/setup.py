"""Everything a trial trains with, built from its config: network, EMA, optimiser, schedule,
augmentation generator and the splits moved once to the device; plus the DataParallel /
DistributedDataParallel / torch.compile wrappers used to run them."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR

from ml.augment import steps_per_epoch, train_batches
from ml.config import TrainConfig
from ml.data import MEAN, STD, Splits
from ml.ema import EMA
from ml.environment import Runtime
from ml.evaluate import evaluate
from ml.models import build_model
from ml.optim import SmoothedCrossEntropy, build_optimizer, build_scheduler

log = logging.getLogger(__name__)


@dataclass
class TrialSetup:
    cfg: TrainConfig
    runtime: Runtime
    net: nn.Module  # the trained weights, unwrapped
    ema: EMA | None
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    criterion: nn.Module
    generator: torch.Generator  # shuffling and augmentation, on the device
    classes: list[str]
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    runner: nn.Module = field(init=False)  # net as trained: wrapped by `wrap` for DataParallel/compile
    eval_runner: nn.Module = field(init=False)  # eval_net as evaluated, likewise
    compiled: bool = False
    val_fingerprint: str = ""  # of the validation split (ml.data.fingerprint); checked at resume

    def __post_init__(self) -> None:
        self.runner, self.eval_runner = self.net, self.eval_net

    def epoch_batches(self, epoch: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Epoch `epoch`'s shuffled, augmented, normalised training batches, made on the device."""
        cfg = self.cfg
        return train_batches(
            self.train_x,
            self.train_y,
            cfg.batch_size,
            cfg.augment,
            MEAN,
            STD,
            self.generator,
            cfg.channels_last,
            epoch,
            cfg.epoch_images,
        )

    @property
    def eval_net(self) -> nn.Module:
        """The weights that are evaluated, checkpointed as `model` and served."""
        return self.ema.module if self.ema is not None else self.net

    def wrap(self) -> float | None:
        """Wrap runner/eval_runner; returns the seconds spent compiling (None when not compiled)."""
        if self.runtime.parallel == "dataparallel":
            ids = list(self.runtime.device_ids)
            self.runner = nn.DataParallel(self.net, device_ids=ids)
            self.eval_runner = (
                self.runner if self.ema is None else nn.DataParallel(self.eval_net, device_ids=ids)
            )
            if self.cfg.compile:
                log.warning("compile ignored: torch.compile does not support nn.DataParallel")
            return None
        if self.runtime.parallel == "ddp":
            # Evaluation keeps the bare network: DDP's forward broadcasts buffers, a collective
            # that ranks evaluating shards of unequal size would not all join.
            device = self.runtime.device
            self.runner = DistributedDataParallel(
                self.net, device_ids=[device.index] if device.type == "cuda" else None
            )
        if not self.cfg.compile:
            return None
        trained = self.runner
        mode = self.cfg.compile_mode
        self.runner = torch.compile(trained, mode=mode)
        self.eval_runner = (
            self.runner if self.eval_runner is trained else torch.compile(self.eval_net, mode=mode)
        )
        self.compiled = True
        return self._warm_up()

    def _warm_up(self) -> float:
        """Compile now, on zero images, so compile time is measured apart from training."""
        start = time.perf_counter()
        saved = {k: v.clone() for k, v in self.net.state_dict().items()}  # batch-norm stats move
        n = min(self.cfg.batch_size, len(self.train_y))
        memory_format = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        x = torch.zeros((n, *self.train_x.shape[1:]), device=self.runtime.device).contiguous(
            memory_format=memory_format
        )
        with self.runtime.autocast():
            logits = self.runner(x)
        self.criterion(logits.float(), self.train_y[:n]).backward()
        self.optimizer.zero_grad(set_to_none=True)
        self.net.load_state_dict(saved)
        m = min(self.cfg.batch_size, len(self.val_y))
        cfg = self.cfg
        x_val, y_val = self.val_x[:m], self.val_y[:m]
        evaluate(
            self.eval_runner, x_val, y_val, m, MEAN, STD, cfg.tta, cfg.channels_last, self.runtime.precision
        )
        if self.runtime.device.type == "cuda":
            torch.cuda.synchronize(self.runtime.device)
        return time.perf_counter() - start


def build_setup(cfg: TrainConfig, splits: Splits, runtime: Runtime, allow_download: bool) -> TrialSetup:
    """Call after seeding: building the network draws its initial weights from the global RNG."""
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    net = build_model(cfg, len(splits.classes), allow_download)
    net = net.to(device=runtime.device, memory_format=memory_format)
    optimizer = build_optimizer(net, cfg)
    n_train = len(splits.train_y) if cfg.epoch_images is None else min(cfg.epoch_images, len(splits.train_y))
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch(n_train, cfg.batch_size))
    data = [
        t.to(runtime.device, non_blocking=True)
        for t in (splits.train_x, splits.train_y, splits.val_x, splits.val_y, splits.test_x, splits.test_y)
    ]
    return TrialSetup(
        cfg=cfg,
        runtime=runtime,
        net=net,
        ema=EMA(net, cfg.ema_decay) if cfg.ema_decay > 0 else None,
        optimizer=optimizer,
        scheduler=scheduler,
        criterion=SmoothedCrossEntropy(cfg.label_smoothing),
        generator=torch.Generator(device=runtime.device).manual_seed(cfg.seed),
        classes=list(splits.classes),
        train_x=data[0],
        train_y=data[1],
        val_x=data[2],
        val_y=data[3],
        test_x=data[4],
        test_y=data[5],
        val_fingerprint=splits.val_fingerprint,
    )
