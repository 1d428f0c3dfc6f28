"""app.errors.redact_paths: no filesystem path in an HTTP answer, routes and URLs untouched."""

from __future__ import annotations

import pytest

from app.errors import redact_paths


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "OverflowError: too big (at /work/wt/i13/ml/data.py:86 in make_splits)",
            "OverflowError: too big (at data.py:86 in make_splits)",
        ),
        (
            "model 3: [Errno 2] No such file: '/srv/sweep/artifacts/jobs/1/best.pt'",
            "model 3: [Errno 2] No such file: 'best.pt'",
        ),
        ("cannot read /tmp/x/ and /var/lib/db", "cannot read x and db"),
        (
            "see GET /jobs/1/trials/2 or POST /models/4/promote",
            "see GET /jobs/1/trials/2 or POST /models/4/promote",
        ),
        ("docs at http://host:8000/docs/a/b", "docs at http://host:8000/docs/a/b"),
        ("a ratio 1/2/3 and a single /segment", "a ratio 1/2/3 and a single /segment"),
    ],
)
def test_paths_are_cut_to_their_last_component(text: str, expected: str) -> None:
    assert redact_paths(text) == expected
