"""Worker processes as rows: registered at start, heartbeaten by the database clock, removed at exit."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session

from app.store.db import db_time
from app.store.tables import Worker

LIVE_HEARTBEATS = 3  # a worker is alive while its heartbeat is younger than this many intervals


def register_worker(
    session: Session, worker_id: str, hostname: str, pid: int, gpus: list[int] | None
) -> None:
    gpu_list = None if gpus is None else ",".join(map(str, gpus))
    session.execute(
        insert(Worker).values(
            id=worker_id,
            hostname=hostname,
            pid=pid,
            gpus=gpu_list,
            heartbeat_at=db_time(session.get_bind()),  # type: ignore[arg-type]
        )
    )


def touch_worker(engine: Engine, worker_id: str) -> None:
    with engine.begin() as connection:
        connection.execute(update(Worker).where(Worker.id == worker_id).values(heartbeat_at=db_time(engine)))


def unregister_worker(session: Session, worker_id: str) -> None:
    worker = session.get(Worker, worker_id)
    if worker is not None:
        session.delete(worker)


@dataclass(frozen=True)
class WorkerHeartbeat:
    worker_id: str
    hostname: str
    age_seconds: float  # by the database clock, like the leases


def worker_heartbeats(
    session: Session, max_age_seconds: float, hostname: str | None = None
) -> list[WorkerHeartbeat]:
    """Workers (of one host, if given) whose last heartbeat is younger than `max_age_seconds`."""
    age = db_time(session.get_bind()) - Worker.heartbeat_at  # type: ignore[arg-type]
    query = select(Worker.id, Worker.hostname, age).where(
        Worker.heartbeat_at.is_not(None), age < max_age_seconds
    )
    if hostname is not None:
        query = query.where(Worker.hostname == hostname)
    return [WorkerHeartbeat(w, h, max(float(a), 0.0)) for w, h, a in session.execute(query)]
