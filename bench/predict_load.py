"""Load test of POST /predict: dynamic batching against none, and a hot reload under load.

    python bench/predict_load.py [--seconds 10] [--concurrency 1 8 32 64] [--archive PATH]
    python bench/predict_load.py --decode-flood 6 [--flood-concurrency 4] [--seconds 10]

Starts two real uvicorn servers on free 127.0.0.1 ports, each on its own SQLite database with
the same two untrained ResNet-18 models (torchvision ImageNet stem; registered through the
worker's queue calls): one with dynamic batching (`--batch`, default 64) and one with
`max_batch_size=1`. At each concurrency level both are driven in turn, never together, for
`--seconds` each, with real 32x32 PNGs made from the CIFAR-10 test split of the shared JPEG
archive. In the run at `--reload-at` concurrency the second model is promoted halfway through,
so that row includes a hot reload. Every loop is bounded in requests and time; only loopback
addresses are contacted. Prints a Markdown table (and JSON with --json).

`--decode-flood N` measures decode bombs instead: two batched servers, one with the JPEG scan cap
switched off (`SWEEPSERVE_MAX_JPEG_SCANS` huge) and one with the default; on each, a normal client
(`--flood-concurrency` users) runs quiet, then while N senders post 20,000-scan progressive JPEGs
(257 KB each) with `resize=true` in a loop. It reports the normal client's percentiles in both
runs and what the bombs got back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import itertools
import json
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from app.store.db import make_engine, session_factory, upgrade_to_head  # noqa: E402
from tests.served_models import SERVING_CONFIG, jpeg_scan_bomb, register_model  # noqa: E402

DEFAULT_ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
BOUNDARY = "sweepservebench"
MAX_REQUESTS_PER_RUN = 200_000
REQUEST_TIMEOUT_S = 30.0


@dataclass
class RunResult:
    server: str
    concurrency: int
    seconds: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_batch: float  # images per forward pass on the server during the run
    models: dict[str, int] = field(default_factory=dict)  # model id -> answers
    reload: str = ""
    load_average: float = 0.0  # 1-minute load average of the machine at the end of the run
    server_cpu_ms: float | None = None  # the server process's CPU time per answered request
    client_cpu_ms: float | None = None  # this load generator's CPU time per answered request


def cifar_pngs(archive: Path, count: int) -> list[bytes]:
    """`count` CIFAR-10 test images, classes interleaved, re-encoded as 32x32 PNG."""
    by_class: dict[str, list[tarfile.TarInfo]] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) >= 3 and parts[-3] == "test":
                by_class.setdefault(parts[-2], []).append(member)
        per_class = -(-count // len(by_class))
        firsts = [sorted(v, key=lambda m: m.name)[:per_class] for v in by_class.values()]
        members = [m for row in zip(*firsts, strict=True) for m in row]  # airplane, automobile, ...
        return [_png(tar.extractfile(m).read()) for m in members[:count]]  # type: ignore[union-attr]


def _png(jpeg: bytes) -> bytes:
    with Image.open(io.BytesIO(jpeg)) as image:
        out = io.BytesIO()
        image.convert("RGB").save(out, "PNG")
        return out.getvalue()


def multipart(png: bytes) -> bytes:
    """A ready-made body with one `file` part, so the load generator spends no time encoding."""
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
    return (head + "Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One uvicorn process on its own database and artifacts folder."""

    def __init__(
        self, name: str, workdir: Path, batch: int, delay_ms: float, env: dict[str, str] | None = None
    ) -> None:
        self.name, self.port = name, free_port()
        self.url = f"sqlite:///{workdir / name / 'bench.db'}"
        self.artifacts = workdir / name / "artifacts"
        (workdir / name).mkdir(parents=True)
        upgrade_to_head(self.url)
        engine = make_engine(self.url)
        factory = session_factory(engine)
        self.first = register_model(factory, self.artifacts, val_accuracy=0.5, seed=1)
        self.second = register_model(factory, self.artifacts, val_accuracy=0.4, seed=2)
        engine.dispose()
        env = {
            **os.environ,
            "SWEEPSERVE_DATABASE_URL": self.url,
            "SWEEPSERVE_ARTIFACTS_DIR": str(self.artifacts),
            "SWEEPSERVE_MAX_BATCH_SIZE": str(batch),
            "SWEEPSERVE_MAX_DELAY_MS": str(delay_ms),
            "SWEEPSERVE_LOG_LEVEL": "WARNING",
            **(env or {}),
        }
        env.pop("SWEEPSERVE_API_KEY", None)
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "app.api.main:create_app",
            "--host",
            "127.0.0.1",
        ]
        command += ["--port", str(self.port), "--log-level", "warning", "--no-access-log"]
        self.process = subprocess.Popen(command, cwd=REPO, env=env)
        self.base = f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server process so far (Linux /proc; None elsewhere)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def ready(self, client: httpx.AsyncClient, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server {self.name} exited with {self.process.returncode}")
            try:
                status = await self.model_status(client)
                if status.get("model_id") == self.first:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
        raise TimeoutError(f"server {self.name} did not load model {self.first} in {timeout} s")

    async def model_status(self, client: httpx.AsyncClient) -> dict:
        response = await client.get(f"{self.base}/readyz")
        return response.json()["checks"]["model"]

    def stop(self) -> None:
        self.process.terminate()  # only the process this script started, by its handle
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def flood(server: Server, bomb: bytes, senders: int, stop: asyncio.Event) -> dict[str, Any]:
    """`senders` clients posting `bomb` with resize=true until `stop`; what they got back."""
    statuses: Counter[str] = Counter()
    seconds: list[float] = []
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="b.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + bomb
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}

    async def sender() -> None:
        async with httpx.AsyncClient(timeout=120.0) as client:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    response = await client.post(
                        f"{server.base}/predict", params={"resize": "true"}, content=body, headers=headers
                    )
                    statuses[str(response.status_code)] += 1
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1
                seconds.append(time.perf_counter() - t0)

    await asyncio.gather(*(sender() for _ in range(senders)))
    return {"bombs": dict(statuses), "bomb_p50_s": round(float(np.median(seconds)), 3) if seconds else None}


async def flood_bench(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    bodies = [multipart(png) for png in cifar_pngs(args.archive, args.images)]
    bomb = jpeg_scan_bomb(scans=20_000)
    servers = [
        Server(
            "no-scan-cap", workdir, args.batch, args.delay_ms, {"SWEEPSERVE_MAX_JPEG_SCANS": "1000000000"}
        ),
        Server("scan-cap", workdir, args.batch, args.delay_ms),
    ]
    rows = []
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            for server in servers:
                await server.ready(client)
        for server in servers:
            quiet = await drive(server, bodies, args.flood_concurrency, args.seconds, False)
            stop = asyncio.Event()
            bombs = asyncio.create_task(flood(server, bomb, args.decode_flood, stop))
            await asyncio.sleep(1.0)  # the bombs are in flight before the measurement starts
            loud = await drive(server, bodies, args.flood_concurrency, args.seconds, False)
            stop.set()
            row = {"server": server.name, "quiet": asdict(quiet), "flood": asdict(loud), **(await bombs)}
            print(json.dumps(row), flush=True)
            rows.append(row)
        return rows
    finally:
        for server in servers:
            server.stop()


def flood_markdown(rows: list[dict[str, Any]], senders: int) -> str:
    lines = [
        f"| server | quiet p50 / p95 / p99 ms | with {senders} bomb senders p50 / p95 / p99 ms "
        "| p99 ratio | normal errors | bomb answers | bomb p50 s | load avg |",
        "|---|---|---|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        q, f = row["quiet"], row["flood"]
        lines.append(
            f"| {row['server']} | {q['p50_ms']} / {q['p95_ms']} / {q['p99_ms']} "
            f"| {f['p50_ms']} / {f['p95_ms']} / {f['p99_ms']} | {f['p99_ms'] / q['p99_ms']:.1f}x "
            f"| {f['errors']} | {row['bombs']} | {row['bomb_p50_s']} | {f['load_average']:.1f} |"
        )
    return "\n".join(lines)


async def drive(
    server: Server, bodies: list[bytes], concurrency: int, seconds: float, reload: bool
) -> RunResult:
    # The generator's own garbage collections would stall every simulated user at once and be
    # counted as server latency: none during the run (a 10 s run's garbage is a few MB).
    gc.collect()
    gc.disable()
    try:
        return await _drive(server, bodies, concurrency, seconds, reload)
    finally:
        gc.enable()


async def _drive(
    server: Server, bodies: list[bytes], concurrency: int, seconds: float, reload: bool
) -> RunResult:
    latencies: list[float] = []
    started_at: list[float] = []  # when each answered request was sent, from the run's start
    errors: Counter[str] = Counter()
    models: Counter[str] = Counter()
    url = httpx.URL(f"{server.base}/predict")
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}

    def more() -> bool:
        return time.perf_counter() < deadline and len(latencies) + sum(errors.values()) < MAX_REQUESTS_PER_RUN

    async def user(client: httpx.AsyncClient, offset: int) -> None:
        for i in itertools.count(offset, concurrency):
            if not more():
                return
            t0 = time.perf_counter()
            try:
                response = await client.post(url, content=bodies[i % len(bodies)], headers=headers)
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
                continue
            if response.status_code == 200:
                latencies.append(time.perf_counter() - t0)
                started_at.append(t0 - started)
                models[str(response.json()["model"]["id"])] += 1
            else:
                errors[str(response.status_code)] += 1

    # A client (one connection) per simulated user: a shared pool of 64 connections costs the load
    # generator more CPU per request than the server spends on it. The clients are made and
    # connected before the clock starts: building 32 of them (an SSL context each, even for http)
    # and opening 32 connections at once stalled the first requests of a run by 1.5-1.8 s, on the
    # load generator's side, and those requests were the whole of the p99 (BENCH_TAIL=1 shows it).
    clients = [
        httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=httpx.Limits(max_connections=1))
        for _ in range(concurrency)
    ]
    async with contextlib.AsyncExitStack() as stack, httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as control:
        for client in clients:
            await stack.enter_async_context(client)
        await asyncio.gather(*(client.get(f"{server.base}/healthz") for client in clients))  # connect
        before = await server.model_status(control)
        cpu_before = server.cpu_seconds(), time.process_time()
        started = time.perf_counter()
        deadline = started + seconds
        reloading = asyncio.create_task(promote_midway(control, server, seconds / 2)) if reload else None
        await asyncio.gather(*(user(client, k) for k, client in enumerate(clients)))
        elapsed = time.perf_counter() - started
        cpu = _minus((server.cpu_seconds(), time.process_time()), cpu_before)
        reload_note = await reloading if reloading else ""
        after = await server.model_status(control)
    if os.environ.get("BENCH_TAIL"):  # diagnosis: when were the slowest requests sent?
        order = np.argsort(latencies)[-max(1, len(latencies) // 100) :]
        print(
            "slowest 1%:", [(round(started_at[i], 2), round(latencies[i] * 1000)) for i in order], flush=True
        )
    result = summarize(
        server.name, concurrency, elapsed, latencies, errors, models, before, after, reload_note
    )
    if latencies:
        result.server_cpu_ms = None if cpu[0] is None else round(1000 * cpu[0] / len(latencies), 2)
        result.client_cpu_ms = round(1000 * cpu[1] / len(latencies), 2)
    return result


CpuSeconds = tuple[float | None, float]  # (server process, this process)


def _minus(after: CpuSeconds, before: CpuSeconds) -> CpuSeconds:
    server = None if after[0] is None or before[0] is None else after[0] - before[0]
    return server, after[1] - before[1]


async def promote_midway(client: httpx.AsyncClient, server: Server, delay: float) -> str:
    await asyncio.sleep(delay)
    target = (
        server.second if (await server.model_status(client))["model_id"] == server.first else server.first
    )
    response = await client.post(f"{server.base}/models/{target}/promote")
    return f"promoted model {target} at {delay:.0f} s: HTTP {response.status_code}"


def summarize(
    name: str,
    concurrency: int,
    elapsed: float,
    latencies: list[float],
    errors: Counter[str],
    models: Counter[str],
    before: dict,
    after: dict,
    reload: str,
) -> RunResult:
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    passes = after["forward_passes"] - before["forward_passes"]
    images = after["images_predicted"] - before["images_predicted"]
    if errors:
        reload = f"{reload} errors: {dict(errors)}".strip()
    return RunResult(
        server=name,
        concurrency=concurrency,
        seconds=round(elapsed, 2),
        requests=len(latencies),
        errors=sum(errors.values()),
        rps=round(len(latencies) / elapsed, 1),
        p50_ms=round(float(np.percentile(ms, 50)), 1),
        p95_ms=round(float(np.percentile(ms, 95)), 1),
        p99_ms=round(float(np.percentile(ms, 99)), 1),
        mean_batch=round(images / passes, 1) if passes else 0.0,
        models=dict(models),
        reload=reload,
        load_average=os.getloadavg()[0],
    )


def markdown(results: list[RunResult]) -> str:
    rows = {(r.server, r.concurrency): r for r in results}
    lines = [
        "| concurrency | batched req/s | p50 / p95 / p99 ms | errors | mean batch | unbatched req/s "
        "| p50 / p95 / p99 ms | errors | speed-up | CPU ms/request server + client | load avg |",
        "|---:|---:|---|---:|---:|---:|---|---:|---:|---|---:|",
    ]
    for c in sorted({r.concurrency for r in results}):
        b, u = rows[("batched", c)], rows[("unbatched", c)]
        speedup = b.rps / u.rps if u.rps else float("nan")
        lines.append(
            f"| {c} | {b.rps} | {b.p50_ms} / {b.p95_ms} / {b.p99_ms} | {b.errors} | {b.mean_batch} | {u.rps} "
            f"| {u.p50_ms} / {u.p95_ms} / {u.p99_ms} | {u.errors} | {speedup:.2f}x "
            f"| {b.server_cpu_ms} + {b.client_cpu_ms} / {u.server_cpu_ms} + {u.client_cpu_ms} "
            f"| {b.load_average:.1f} / {u.load_average:.1f} |"
        )
    notes = [
        f"- {r.server} @ {r.concurrency}: {r.reload}; answers per model id {r.models}"
        for r in results
        if r.reload
    ]
    return "\n".join([*lines, "", *notes])


async def bench(args: argparse.Namespace, workdir: Path) -> list[RunResult]:
    bodies = [multipart(png) for png in cifar_pngs(args.archive, args.images)]
    servers = [Server("batched", workdir, args.batch, args.delay_ms), Server("unbatched", workdir, 1, 0.0)]
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            for server in servers:
                await server.ready(client)
        results = []
        for concurrency in args.concurrency:
            for server in servers:
                result = await drive(server, bodies, concurrency, args.seconds, concurrency == args.reload_at)
                print(json.dumps(asdict(result)), flush=True)
                results.append(result)
        return results
    finally:
        for server in servers:
            server.stop()


def event_loop_runner() -> Any:
    """uvloop when installed (uvicorn[standard] brings it): a cheaper load generator per request."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE, help="CIFAR-10 JPEG tar.gz")
    parser.add_argument("--images", type=int, default=1000, help="distinct test images to cycle through")
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level and server")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--batch", type=int, default=64, help="max_batch_size of the batched server")
    parser.add_argument("--delay-ms", type=float, default=5.0, help="max_delay_ms of the batched server")
    parser.add_argument(
        "--reload-at", type=int, default=32, help="concurrency whose runs include a promotion"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--decode-flood", type=int, default=0, help="bomb senders: run the flood test")
    parser.add_argument("--flood-concurrency", type=int, default=4, help="normal users during the flood test")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"model: untrained {SERVING_CONFIG.arch}; {args.seconds:g} s per level; cpus: {os.cpu_count()}",
        flush=True,
    )
    if args.decode_flood:
        with tempfile.TemporaryDirectory(prefix="sweepserve-bench-") as workdir:
            rows = event_loop_runner()(flood_bench(args, Path(workdir)))
        print(flood_markdown(rows, args.decode_flood))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
        return 0
    with tempfile.TemporaryDirectory(prefix="sweepserve-bench-") as workdir:
        results = event_loop_runner()(bench(args, Path(workdir)))
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
