"""parallel="ddp": one process per device under torch.distributed (NCCL on CUDA, gloo on the CPU).

The calling process (a worker) supervises and does not train: it spawns one rank per device,
relays rank 0's hook calls to the caller's `TrialHooks`, and returns rank 0's `TrialResult`.
A failure anywhere (a rank's exception, a rank that dies, a hook that raises) kills every rank
and is raised in the caller; ranks also die with the caller. Each rank runs the ordinary loop,
`ml.engine.train_process`, as a member of a `DistributedTeam`:

- Global batch = cfg.batch_size; rank r trains on slice r of each batch (batch / world images).
  Every rank draws the same permutation and the same augmentation of the whole batch from the
  shared seeded generator and keeps its slice, so together the ranks see exactly the batches one
  process would, and the loss curve matches one process's. The price is augmenting world x the
  images: a gather and a few element-wise ops per image, small next to the network.
- DDP averages the gradients. Batch norm normalises over each rank's own slice, as
  nn.DataParallel's replicas do: SyncBatchNorm is CUDA-only in PyTorch and costs an all-reduce per
  layer per step. DDP copies rank 0's running statistics to the other ranks at every forward, and
  `gather` does so before each evaluation, so every rank evaluates the same weights.
- Epoch metrics are all-reduced; validation and test sets are split across the ranks and their
  loss and accuracy all-reduced. Rank 0 alone writes checkpoints.
- Resume: rank 0 restores from last.pt first (repairing best.pt if need be), then the others.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ml import trial_state
from ml.config import TrainConfig
from ml.data import Splits
from ml.engine import (
    Batches,
    EpochMetrics,
    EpochTrain,
    Measure,
    Team,
    TrialHooks,
    TrialResult,
    train_process,
)
from ml.environment import Runtime, cuda_devices, precision_for
from ml.setup import TrialSetup
from ml.status import Decision

log = logging.getLogger(__name__)

CPU_WORLD_SIZE = 2  # gloo ranks when the trial runs on the CPU
BACKENDS = {"cuda": "nccl", "cpu": "gloo"}
HOST = "127.0.0.1"
POLL_SECONDS = 0.2  # how often the supervisor asks hooks.should_stop()
EXIT_SECONDS = 60.0  # a rank that reported its result gets this long to exit before it is killed
COLLECTIVE_TIMEOUT = timedelta(minutes=30)  # a rank waits this long on rank 0's hooks (database writes)
DECISIONS = tuple(Decision)


class RankFailed(RuntimeError):
    """A rank process died or raised an exception that could not be passed back as itself."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a rank, chained to the exception re-raised here."""


# --- devices and batch ---------------------------------------------------------------------------


def rank_devices(device_ids: list[int] | None, cpu_world_size: int = CPU_WORLD_SIZE) -> list[torch.device]:
    """One device per rank: each given (None: each visible) GPU, or `cpu_world_size` CPU ranks."""
    ids = cuda_devices(device_ids)
    if not ids:
        return [torch.device("cpu")] * cpu_world_size
    return [torch.device("cuda", i) for i in ids]


def per_rank_batch(batch_size: int, world_size: int) -> int:
    if batch_size % world_size:
        raise ValueError(
            f"parallel='ddp' splits batch_size {batch_size} across {world_size} processes: "
            f"choose a batch_size divisible by {world_size}"
        )
    return batch_size // world_size


# --- the team --------------------------------------------------------------------------------------


class DistributedTeam(Team):
    """This rank's part of each step of ml.engine's loop (see the module docstring)."""

    def __init__(self, rank: int, world_size: int, device: torch.device) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device
        self.leader = rank == 0

    def resume(self, setup: TrialSetup, out_dir: Path) -> list[dict[str, Any]]:
        # Rank 0 first: it may rewrite best.pt, which the others must find finished.
        history = trial_state.resume(setup, out_dir) if self.leader else []
        self.sum([0.0])  # a barrier that works on every backend
        return history if self.leader else trial_state.resume(setup, out_dir)

    def shard(self, batches: Batches) -> Batches:
        for x, y in batches:
            yield self.part(x), self.part(y)

    def gather(self, done: EpochTrain, setup: TrialSetup) -> EpochTrain:
        loss_sum, correct, images = self.sum([done.loss, done.accuracy * done.images, float(done.images)])
        for buffer in setup.eval_net.buffers():  # batch-norm statistics differ by rank
            dist.broadcast(buffer, src=0)
        return EpochTrain(loss_sum / self.world_size, correct / images, round(images), done.lr)

    def evaluate(self, measure: Measure, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        mine = self.part(y)
        loss, accuracy = measure(self.part(x), mine)
        n = float(len(mine))
        loss_sum, correct, total = self.sum([loss * n, accuracy * n, n])
        return loss_sum / max(total, 1.0), correct / max(total, 1.0)

    def part(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of `tensor` along its first dimension (near-equal slices)."""
        return tensor.tensor_split(self.world_size)[self.rank]

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the ranks (float64: exact for image counts)."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def any(self, flag: bool) -> bool:
        return self.sum([float(flag)])[0] > 0

    def choice_of_leader(self, index: int) -> int:
        tensor = torch.tensor([index], dtype=torch.int64, device=self.device)
        dist.broadcast(tensor, src=0)
        return int(tensor.item())


class RankHooks(TrialHooks):
    """The hooks inside a rank: rank 0 asks the supervisor; every rank acts on the same answer."""

    def __init__(self, team: DistributedTeam, link: Connection, stop: Event, supervisor_pid: int) -> None:
        self.team, self.link, self.stop, self.supervisor_pid = team, link, stop, supervisor_pid

    def restored(self, history: list[EpochMetrics]) -> Decision:
        return self._ask(("restored", history))

    def epoch_end(self, metrics: EpochMetrics, history: list[EpochMetrics]) -> Decision:
        return self._ask(("epoch_end", metrics, history))

    def _ask(self, message: tuple[Any, ...]) -> Decision:
        index = 0
        if self.team.leader:
            self.link.send(message)
            index = DECISIONS.index(self.link.recv())
        return DECISIONS[self.team.choice_of_leader(index)]

    def should_stop(self) -> bool:
        # Agreed by all ranks at the same batch: one rank stopping alone would leave the others
        # waiting in the next all-reduce.
        orphaned = os.getppid() != self.supervisor_pid
        return self.team.any(self.stop.is_set() or orphaned)


# --- the supervising process -----------------------------------------------------------------------


@dataclass
class SplitArrays:
    """Splits as NHWC numpy arrays, sent to each rank by value over its pipe once it runs. Tensors
    would go through shared memory, which containers often cap (64 MB /dev/shm) below CIFAR-10;
    and in the spawn arguments, a child that dies before reading them all hangs the parent."""

    arrays: dict[str, np.ndarray]
    classes: list[str]
    val_fingerprint: str = ""

    @classmethod
    def pack(cls, splits: Splits) -> SplitArrays:
        names = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
        arrays = {name: _to_numpy(getattr(splits, name)) for name in names}
        return cls(arrays, list(splits.classes), splits.val_fingerprint)

    def unpack(self) -> Splits:
        tensors = {name: _from_numpy(array) for name, array in self.arrays.items()}
        return Splits(**tensors, classes=list(self.classes), val_fingerprint=self.val_fingerprint)


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.permute(0, 2, 3, 1).numpy() if tensor.dim() == 4 else tensor.numpy()


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    return tensor.permute(0, 3, 1, 2) if tensor.dim() == 4 else tensor  # back to NCHW, channels-last


@dataclass
class RankJob:
    """Everything one rank needs; pickled to the spawned process."""

    rank: int
    world_size: int
    device: torch.device
    device_ids: tuple[int, ...]  # the caller's CUDA ids of the whole team, for the record
    cfg: TrainConfig
    out_dir: Path
    metadata: dict[str, Any]
    allow_download: bool
    store_port: int
    threads: int
    log_level: int
    supervisor_pid: int


@dataclass
class _Rank:
    process: SpawnProcess
    link: Connection


def run_ddp_trial(
    cfg: TrainConfig,
    splits: Splits,
    out_dir: Path,
    hooks: TrialHooks,
    device_ids: list[int] | None,
    metadata: dict[str, Any],
    *,
    allow_download: bool = True,
    cpu_world_size: int = CPU_WORLD_SIZE,
) -> TrialResult:
    """`ml.train.run_trial` for parallel="ddp": same arguments, same result, same exceptions."""
    devices = rank_devices(device_ids, cpu_world_size)
    per_rank_batch(cfg.batch_size, len(devices))
    # The supervisor hosts the rendezvous store on a free port: no port to choose, none to collide.
    store = dist.TCPStore(HOST, 0, is_master=True, wait_for_workers=False, timeout=COLLECTIVE_TIMEOUT)
    context = mp.get_context("spawn")  # CUDA cannot be used in forked children
    stop = context.Event()
    log.info(
        "ddp: %d ranks on %s, %d images per rank and step",
        len(devices),
        devices[0].type,
        cfg.batch_size // len(devices),
    )
    ranks: list[_Rank] = []
    reported = False
    try:
        for job in _rank_jobs(cfg, devices, out_dir, metadata, allow_download, store.port):
            ours, theirs = context.Pipe()
            process = context.Process(target=rank_main, args=(job, theirs, stop), name=f"ddp-rank-{job.rank}")
            process.start()
            theirs.close()
            ranks.append(_Rank(process, ours))
        packed = SplitArrays.pack(splits)
        for index, rank in enumerate(ranks):
            _send(index, rank, packed)
        result = _supervise(ranks, hooks, stop)
        reported = True
        return result
    finally:
        _end(ranks, grace=EXIT_SECONDS if reported else 0.0)
        del store


def _rank_jobs(
    cfg: TrainConfig,
    devices: list[torch.device],
    out_dir: Path,
    metadata: dict[str, Any],
    allow_download: bool,
    store_port: int,
) -> list[RankJob]:
    world_size = len(devices)
    ids = tuple(d.index for d in devices if d.type == "cuda")
    threads = max(1, torch.get_num_threads() // world_size)  # the caller's CPU threads, shared out
    return [
        RankJob(
            rank=rank,
            world_size=world_size,
            device=device,
            device_ids=ids,
            cfg=cfg,
            out_dir=out_dir,
            metadata={**metadata, "world_size": world_size},
            allow_download=allow_download,
            store_port=store_port,
            threads=threads,
            log_level=logging.getLogger().getEffectiveLevel(),
            supervisor_pid=os.getpid(),
        )
        for rank, device in enumerate(devices)
    ]


def _supervise(ranks: list[_Rank], hooks: TrialHooks, stop: Event) -> TrialResult:
    results: dict[int, TrialResult | None] = {}
    while len(results) < len(ranks):
        if not stop.is_set() and hooks.should_stop():
            stop.set()
        running = [i for i in range(len(ranks)) if i not in results]
        waitables = [ranks[i].link for i in running] + [ranks[i].process.sentinel for i in running]
        wait(waitables, timeout=POLL_SECONDS)
        for i in running:
            if ranks[i].link.poll():
                _handle(i, ranks[i], _receive(i, ranks[i]), hooks, results)
            elif not ranks[i].process.is_alive():
                raise RankFailed(f"rank {i} exited with code {ranks[i].process.exitcode} before reporting")
    result = results[0]
    if result is None:
        raise RankFailed("rank 0 finished without a result")
    return result


def _send(index: int, rank: _Rank, message: Any) -> None:
    try:
        rank.link.send(message)
    except OSError:  # the rank is gone (the pipe is broken)
        rank.process.join(EXIT_SECONDS)
        raise RankFailed(f"rank {index} exited with code {rank.process.exitcode} at start-up") from None


def _receive(index: int, rank: _Rank) -> tuple[Any, ...]:
    try:
        return rank.link.recv()
    except EOFError:
        rank.process.join(EXIT_SECONDS)
        raise RankFailed(f"rank {index} exited with code {rank.process.exitcode} before reporting") from None
    except Exception as exc:  # an exception that pickled in the rank but cannot be rebuilt here
        raise RankFailed(f"rank {index} sent a message that cannot be read: {exc!r}") from exc


def _handle(
    index: int, rank: _Rank, message: tuple[Any, ...], hooks: TrialHooks, results: dict[int, Any]
) -> None:
    kind, *body = message
    if kind == "restored":
        _send(index, rank, hooks.restored(body[0]) or Decision.CONTINUE)
    elif kind == "epoch_end":
        _send(index, rank, hooks.epoch_end(*body) or Decision.CONTINUE)
    elif kind == "done":
        results[index] = body[0]
    else:  # "error": the first failure wins; _end kills the ranks still waiting on the failed one
        exc, remote_traceback = body
        raise exc from RemoteTraceback(f"in rank {index}:\n{remote_traceback}")


def _end(ranks: list[_Rank], grace: float) -> None:
    """Let ranks that reported exit within `grace` seconds; kill the rest (after a failure, all)."""
    for rank in ranks:
        rank.process.join(grace)
    for index, rank in enumerate(ranks):
        if rank.process.is_alive():
            log.warning("killing ddp rank %d (pid %s)", index, rank.process.pid)
            rank.process.kill()  # our own child, by pid
        rank.process.join()
        rank.link.close()


# --- inside a rank ---------------------------------------------------------------------------------


def rank_main(job: RankJob, link: Connection, stop: Event) -> None:
    """Entry point of a spawned rank: train, then send ("done", result) or ("error", exc, traceback)."""
    _die_with_parent()
    # Ctrl-C reaches the whole process group: the supervisor decides (through `stop`), as a
    # single-process trial would, instead of every rank dying with KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log_format = f"%(asctime)s %(levelname)s rank {job.rank} %(name)s: %(message)s"
    logging.basicConfig(level=job.log_level, format=log_format)
    try:
        splits = link.recv().unpack()
        device = _own_device(job.device)
        torch.set_num_threads(job.threads)
        with _process_group(job, device):
            team = DistributedTeam(job.rank, job.world_size, device)
            runtime = Runtime(device, job.device_ids, "ddp", *precision_for(job.cfg, device))
            hooks = RankHooks(team, link, stop, job.supervisor_pid)
            args = (job.cfg, splits, job.out_dir, hooks, runtime, job.metadata, job.allow_download, team)
            result = train_process(*args)
        link.send(("done", result if team.leader else None))
    except BaseException as exc:
        _report(link, exc)
        # Wait to be killed rather than exit: an exit would fail the other ranks' next
        # collective, and their secondary errors could reach the supervisor before this one.
        with contextlib.suppress(EOFError, OSError):
            link.recv()


def _own_device(device: torch.device) -> torch.device:
    """Hide the other GPUs from this rank (so resuming RNG states or caching allocators never
    opens a context on them) and return the rank's device as it now sees it."""
    if device.type != "cuda":
        return device
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = visible.split(",") if visible else [str(i) for i in range(device.index + 1)]
    os.environ["CUDA_VISIBLE_DEVICES"] = names[device.index]
    torch.cuda.set_device(0)
    return torch.device("cuda", 0)


@contextlib.contextmanager
def _process_group(job: RankJob, device: torch.device) -> Iterator[None]:
    store = dist.TCPStore(HOST, job.store_port, is_master=False, timeout=COLLECTIVE_TIMEOUT)
    dist.init_process_group(
        BACKENDS[device.type],
        store=store,
        rank=job.rank,
        world_size=job.world_size,
        timeout=COLLECTIVE_TIMEOUT,
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def _report(link: Connection, exc: BaseException) -> None:
    text = traceback.format_exc()
    try:
        link.send(("error", exc, text))
    except Exception:  # the exception does not pickle: send what it said
        link.send(("error", RankFailed(f"{type(exc).__name__}: {exc}"), text))


def _die_with_parent() -> None:
    # Linux: SIGKILL this rank when its supervisor dies, so that no orphan goes on writing
    # checkpoints of a trial that another worker has taken over. Elsewhere RankHooks polls getppid.
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
