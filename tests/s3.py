"""A real S3 protocol server on loopback for the object-storage tests: moto's server mode.

`moto_endpoint` (one per test session) serves S3 over HTTP on 127.0.0.1; `s3_url` gives each test
a bucket of its own and points the standard AWS_* variables (read by boto3 in this process and in
the workers it starts) at the server. Without moto the tests are skipped, except under CI, which
installs it (the `dev` extra) and fails instead.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "NO_PROXY": "127.0.0.1,localhost",
}


def _moto_server() -> type:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"moto[server] is not installed and CI is set: {exc}")
        pytest.skip("moto[server] is not installed (pip install -e '.[dev]')")
    return ThreadedMotoServer


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server = _moto_server()(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The AWS_* variables of the test server, set in this process; pass them to subprocesses."""
    env = {**S3_ENV, "AWS_ENDPOINT_URL": moto_endpoint}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def s3_url(s3_env: dict[str, str]) -> str:
    """s3://<a new bucket>/<prefix> on the test server."""
    import boto3

    bucket = f"sweepserve-{secrets.token_hex(6)}"
    boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/artifacts"


def s3_client() -> object:
    """A boto3 client for the test server (after `s3_env`), to look at or damage objects."""
    import boto3

    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
