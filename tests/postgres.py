"""A throwaway PostgreSQL database per use, shared by every test folder.

Each gets a database of its own on the test server (created from `postgres`, dropped with its
connections at the end), so engineers and CI runs sharing the server never see each other's rows.
PostgreSQL tests are skipped only when the server is unreachable and CI is not set; under CI
they fail instead.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
# For a slow scenario whose database statements are tested on both databases elsewhere (the
# queue's own tests): run it on SQLite only, to keep the suite's time for what differs.
ONE_DATABASE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

POSTGRES_URL = os.environ.get(
    "SWEEPSERVE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@contextmanager
def throwaway_database(server_url: str, prefix: str) -> Iterator[str]:
    """The URL of a new, empty database on the server of `server_url`, dropped (connections and
    all) on exit. Raises OperationalError when the server cannot be reached. No pytest here:
    bench/claim_throughput.py uses it too."""
    admin = create_engine(make_url(server_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    created = False
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        created = True
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        if created:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def fresh_postgres_database(prefix: str = "sweepserve_test") -> Iterator[str]:
    """A new, empty database on the test server; skipped (failed under CI) when it is unreachable."""
    with ExitStack() as stack:
        try:
            url = stack.enter_context(throwaway_database(POSTGRES_URL, prefix))
        except OperationalError as exc:
            if os.environ.get("CI"):
                pytest.fail(f"PostgreSQL at {POSTGRES_URL} is not reachable and CI is set: {exc.orig}")
            pytest.skip(
                f"PostgreSQL at {POSTGRES_URL} is not reachable (set CI=1 to make this a failure): {exc.orig}"
            )
        yield url
