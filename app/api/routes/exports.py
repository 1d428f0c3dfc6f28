"""A job as CSV files: its trials (one row each, one column per swept parameter) and its curves
(one row per trial and epoch), for spreadsheets and pandas."""

from __future__ import annotations

import csv
import io

from fastapi import APIRouter, Response

from app.api.deps import JobId, SessionDep
from app.api.schemas import problem_responses
from app.store.exports import Table, history_table, trials_table

router = APIRouter(prefix="/jobs", tags=["exports"])

CSV = "text/csv; charset=utf-8"


def _csv(table: Table, filename: str) -> Response:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header, rows = table
    writer.writerow(header)
    writer.writerows(rows)
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    return Response(buffer.getvalue(), media_type=CSV, headers=headers)


@router.get(
    "/{job_id}/trials.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}, **problem_responses(404, 422)},
    summary="The job's trials as CSV: one row per trial, one column per swept parameter",
)
def trials_csv(job_id: JobId, session: SessionDep) -> Response:
    return _csv(trials_table(session, job_id), f"job-{job_id}-trials.csv")


@router.get(
    "/{job_id}/history.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}, **problem_responses(404, 422)},
    summary="The job's learning curves as CSV: one row per trial and epoch",
)
def history_csv(job_id: JobId, session: SessionDep) -> Response:
    return _csv(history_table(session, job_id), f"job-{job_id}-history.csv")
