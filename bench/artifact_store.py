"""What a checkpoint costs to store: one ResNet-18-sized last.pt (default 90 MB) through each
artifact store, as a worker pays after every epoch and a predictor or resuming worker on load.

    python bench/artifact_store.py [--megabytes 90] [--repeats 3]

Reported (seconds, median of the repeats): sha256 of the file; LocalStore.put of a file already
in place (digest only: the default store's cost per registered model); S3Store.put (upload and
the cache's hard link) and get (cold: download + verify; warm: the cache's copy re-verified),
against moto's S3 server on 127.0.0.1 (an in-memory stand-in: a real bucket adds the network).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.store.artifacts import LocalStore, digest
from app.store.artifacts.s3 import S3Store


def _median(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--megabytes", type=int, default=90)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    boto3.client("s3").create_bucket(Bucket="bench")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = root / "artifacts" / "jobs/1/trials/1/attempt-1/last.pt"
        source.parent.mkdir(parents=True)
        source.write_bytes(os.urandom(args.megabytes * 1024 * 1024))
        local = LocalStore(root / "artifacts")
        s3 = S3Store("bench", "artifacts", root / "cache", 8 * 1024**3)
        key = "jobs/1/trials/1/attempt-1/epoch-1/last.pt"
        in_place = "jobs/1/trials/1/attempt-1/last.pt"
        blob = s3.put(source, key)
        reader = S3Store("bench", "artifacts", root / "reader-cache", 8 * 1024**3)

        def cold_get() -> None:
            reader.cache.discard([key])
            reader.get(blob)

        result = {
            "megabytes": args.megabytes,
            "sha256_s": _median(lambda: digest(source), args.repeats),
            "local_put_in_place_s": _median(lambda: local.put(source, in_place), args.repeats),
            "s3_put_s": _median(lambda: s3.put(source, key), args.repeats),
            "s3_get_cold_s": _median(cold_get, args.repeats),
            "s3_get_warm_s": _median(lambda: reader.get(blob), args.repeats),
        }
    server.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
