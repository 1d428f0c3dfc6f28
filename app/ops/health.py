"""`sweepserve worker --check`: the container healthcheck of a worker (no torch, no training)."""

from __future__ import annotations

import socket

from sqlalchemy.exc import SQLAlchemyError

from app.settings import Settings
from app.store.db import make_engine, session_factory
from app.store.workers import LIVE_HEARTBEATS, worker_heartbeats


def check_local_worker(settings: Settings, hostname: str | None = None) -> tuple[bool, str]:
    """Healthy when a worker of this host heartbeat within LIVE_HEARTBEATS intervals (`worker --check`)."""
    hostname = hostname or socket.gethostname()
    limit = LIVE_HEARTBEATS * settings.heartbeat_seconds
    engine = make_engine(settings.database_url)
    try:
        with session_factory(engine)() as session:
            beats = worker_heartbeats(session, limit, hostname)
    except SQLAlchemyError as exc:
        return False, f"the database cannot be read: {exc}"
    finally:
        engine.dispose()
    if not beats:
        return False, f"no worker on {hostname} sent a heartbeat in the last {limit:.0f} s"
    freshest = min(beats, key=lambda b: b.age_seconds)
    return True, f"worker {freshest.worker_id}: last heartbeat {freshest.age_seconds:.1f} s ago"
