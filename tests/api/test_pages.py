"""The dashboard: its pages and history endpoint (SQLite and PostgreSQL), and a real headless Chromium
drawing a finished sweep's curves (SQLite). Screenshots go to the test's tmp_path; with
SWEEPSERVE_REFRESH_SCREENSHOTS=1 they refresh docs/dashboard.png and docs/intervals.png instead
(a test run never changes tracked files unasked)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.api.main import create_app
from app.settings import Settings
from tests.live_server import serve
from tests.served_models import png_files, register_model
from tests.sweep_rows import EPOCHS, Sweep, advance, start_trial, write_sweep

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parents[2] / "docs"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def make_settings(db_url: str, tmp_path: Path, **overrides: object) -> Settings:
    values = {"database_url": db_url, "artifacts_dir": tmp_path / "artifacts", "allow_download": False}
    return Settings(_env_file=None, **(values | overrides))  # type: ignore[arg-type]


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(db_url, tmp_path))) as test_client:
        yield test_client


def sessions(client: TestClient) -> sessionmaker[Session]:
    return client.app.state.session_factory  # type: ignore[attr-defined]


# --- pages and the history endpoint (no browser) ---------------------------------------------


def test_history_has_every_trial_with_its_epochs_in_order(client: TestClient) -> None:
    sweep = write_sweep(sessions(client))
    history = client.get(f"/jobs/{sweep.job_id}/history").json()
    assert list(history) == [str(t) for t in sweep.trial_ids]
    assert [row["epoch"] for row in history[str(sweep.pruned_trial_id)]] == [1, 2]
    assert [row["epoch"] for row in history[str(sweep.best_trial_id)]] == list(range(1, EPOCHS + 1))
    first = client.get(f"/jobs/{sweep.job_id}/trials/{sweep.best_trial_id}").json()["history"]
    assert history[str(sweep.best_trial_id)] == first  # the same rows GET /jobs/{id}/trials/{id} gives


def test_history_lists_queued_trials_empty_and_grows_with_epochs(client: TestClient) -> None:
    job_id, (first, second) = start_trial(sessions(client))
    assert client.get(f"/jobs/{job_id}/history").json() == {str(first): [], str(second): []}
    advance(sessions(client), first, 1)
    history = client.get(f"/jobs/{job_id}/history").json()
    assert [len(history[str(first)]), len(history[str(second)])] == [1, 0]


def test_history_of_an_unknown_job_is_a_404_problem(client: TestClient) -> None:
    response = client.get("/jobs/999/history")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "999" in response.json()["detail"]


@pytest.mark.parametrize("path", ["/", "/ui/jobs/1", "/ui/predict"])
def test_pages_are_html_with_a_same_origin_content_security_policy(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert '<script type="module"' in response.text


def test_static_files_come_from_the_package_and_nothing_from_elsewhere(client: TestClient) -> None:
    static = Path(__file__).resolve().parents[2] / "app" / "api" / "static"
    for path in static.iterdir():
        text = path.read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, (
            path
        )
        assert client.get(f"/static/{path.name}").status_code == 200


# --- the browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists() or importlib_missing("playwright"):
        reason = f"needs {CHROMIUM} (apt-get install chromium) and playwright (pip install '.[browser]')"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def line_counts(page: object, chart: str) -> dict[str, int]:
    return page.evaluate(  # type: ignore[attr-defined]
        """(chart) => {
            const lines = [...document.querySelectorAll(`#${chart} path.trial-line`)];
            return {
                total: lines.length,
                distinct: new Set(lines.map((l) => l.dataset.trialId)).size,
                pruned: lines.filter((l) => l.classList.contains("pruned")).length,
                best: lines.filter((l) => l.classList.contains("best")).length,
                drawn: lines.filter((l) => l.getTotalLength() > 0).length,
            };
        }""",
        chart,
    )


@pytest.mark.slow
@sqlite_only
def test_job_page_draws_one_curve_per_trial_in_each_chart(
    browser: object, db_url: str, tmp_path: Path
) -> None:
    app = create_app(make_settings(db_url, tmp_path))
    with serve(app) as url:
        sweep = write_sweep(app.state.session_factory, n_trials=6)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})  # type: ignore[attr-defined]
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto(url)  # the jobs list, with each job's best accuracy; its link opens the job page
        row = page.wait_for_selector(f'#jobs tr[data-job-id="{sweep.job_id}"]:has-text("83.00 %")')
        assert "succeeded" in row.inner_text() and page.locator("#jobs tbody tr").count() == 1
        page.click(f'#jobs a[href="/ui/jobs/{sweep.job_id}"]')
        page.wait_for_selector("#chart-loss path.trial-line")

        for chart in ("chart-val", "chart-loss"):
            counts = line_counts(page, chart)
            assert counts == {"total": 6, "distinct": 6, "pruned": 1, "best": 1, "drawn": 6}, chart
        pruned_style = page.eval_on_selector(
            f'#chart-val path[data-trial-id="{sweep.pruned_trial_id}"]',
            "(el) => getComputedStyle(el).strokeDasharray",
        )
        assert pruned_style not in ("", "none")  # dashed: pruned trials look different
        assert page.get_attribute(f'#chart-val path[data-trial-id="{sweep.best_trial_id}"]', "class") == (
            "trial-line best"
        )
        assert page.is_hidden("#cancel")  # a finished job cannot be cancelled
        shot = screenshot_path("dashboard.png", tmp_path)
        page.screenshot(path=str(shot), full_page=True)
        assert_trial_table(page, sweep)
        assert errors == []
        page.close()
    assert shot.stat().st_size > 10_000


def screenshot_path(name: str, tmp_path: Path) -> Path:
    """Where a page's screenshot goes: docs/ when asked to refresh the docs' pictures."""
    return (DOCS if os.environ.get("SWEEPSERVE_REFRESH_SCREENSHOTS") == "1" else tmp_path) / name


def assert_trial_table(page: object, sweep: Sweep) -> None:
    def accuracies() -> list[float]:
        cells = page.locator("#trials tbody tr td:nth-child(6)").all_inner_texts()  # type: ignore[attr-defined]
        return [float(c.rstrip(" %")) for c in cells]

    assert accuracies() == sorted(accuracies(), reverse=True)  # by accuracy, best first
    assert page.get_attribute("#trials tbody tr.best", "data-trial-id") == str(sweep.best_trial_id)  # type: ignore[attr-defined]
    page.click('#trials th[data-key="val_accuracy"]')  # type: ignore[attr-defined]
    assert accuracies() == sorted(accuracies())


@pytest.mark.slow
@sqlite_only
def test_live_job_updates_and_cancels_from_the_browser(browser: object, db_url: str, tmp_path: Path) -> None:
    app = create_app(make_settings(db_url, tmp_path, api_key="s3cret"))
    with serve(app) as url:
        factory = app.state.session_factory
        job_id, (first, _second) = start_trial(factory, epochs=3)
        page = browser.new_page()  # type: ignore[attr-defined]
        page.goto(f"{url}/ui/jobs/{job_id}")
        page.fill("#key-dialog input", "s3cret")  # asked once, on the first 401
        page.click("#key-dialog button[type=submit]")
        page.wait_for_selector("#job-status.status-queued")
        advance(factory, first, 1)
        # Picked up by polling. "attached": a one-epoch line is a flat dash, which Playwright calls hidden.
        page.wait_for_selector("#chart-val path.trial-line", state="attached", timeout=10_000)
        assert line_counts(page, "chart-val")["drawn"] == 1
        assert page.inner_text("#job-status") == "running"
        page.on("dialog", lambda dialog: dialog.accept())  # the "cancel this job?" confirmation
        page.click("#cancel")
        page.wait_for_selector("#job-status.status-cancelled")
        assert page.evaluate("sessionStorage.getItem('sweepserve.apiKey')") == "s3cret"
        page.close()


@pytest.mark.slow
@sqlite_only
def test_predict_page_shows_class_probabilities_of_a_chosen_image(
    browser: object, db_url: str, tmp_path: Path
) -> None:
    app = create_app(make_settings(db_url, tmp_path, model_poll_seconds=0.1))
    with serve(app) as url:
        model_id = register_model(app.state.session_factory, tmp_path / "artifacts", val_accuracy=0.9)
        wait_until(lambda: app.state.predictor.status()["model_id"] == model_id)
        image = tmp_path / "cat.png"
        image.write_bytes(png_files(1)[0])
        page = browser.new_page()  # type: ignore[attr-defined]
        page.goto(f"{url}/ui/predict")
        page.set_input_files("#files", str(image))
        page.wait_for_selector(".prediction .bar-row", timeout=30_000)
        assert page.locator(".prediction .bar-row").count() == 10  # one bar per class
        assert f"model {model_id}" in page.inner_text("#model")
        total = sum(
            float(t.rstrip(" %")) for t in page.locator(".prediction .bar-row .num").all_inner_texts()
        )
        assert total == pytest.approx(100, abs=0.1)
        page.close()


@pytest.mark.slow
@sqlite_only
def test_docs_and_redoc_render_with_the_network_off(browser: object, db_url: str, tmp_path: Path) -> None:
    """Swagger UI and ReDoc come from the app itself: with every other origin blocked, both draw
    the API (the page and its assets hold no data, so no key is needed even when one is set)."""
    app = create_app(make_settings(db_url, tmp_path, api_key="s3cret"))
    with serve(app) as url:
        page = browser.new_page()  # type: ignore[attr-defined]
        elsewhere: list[str] = []

        def only_this_origin(route: object) -> None:
            request_url = route.request.url  # type: ignore[attr-defined]
            if request_url.startswith(url):
                route.continue_()  # type: ignore[attr-defined]
            else:
                elsewhere.append(request_url)
                route.abort()  # type: ignore[attr-defined]

        page.route("**/*", only_this_origin)
        refused: list[str] = []  # what the pages' Content-Security-Policy blocked before any request
        page.on(
            "console", lambda msg: refused.append(msg.text) if "Content Security Policy" in msg.text else None
        )
        page.goto(f"{url}/docs")
        page.wait_for_selector(".swagger-ui .info .title:has-text('sweepserve')", timeout=30_000)
        assert page.locator(".opblock-summary-path[data-path='/predict']").count() >= 1
        page.goto(f"{url}/redoc")
        page.wait_for_selector("h1:has-text('sweepserve')", timeout=30_000)
        assert page.locator("text=/predict").count() >= 1
        assert elsewhere == [] and all("cdn." in text for text in refused), refused
        page.close()


@pytest.mark.slow
@sqlite_only
def test_job_page_draws_each_points_interval_and_the_tie_group(
    browser: object, db_url: str, tmp_path: Path
) -> None:
    import httpx

    from tests.api.test_jobs import finished_with, set_trials

    app = create_app(make_settings(db_url, tmp_path))
    with serve(app) as url:
        body = {"name": "lr x 3 seeds", "search": {"space": {"lr": [0.05, 0.1, 0.2, 0.4]}, "repeats": 3}}
        job = httpx.post(f"{url}/jobs", json=body, timeout=30).json()
        vals = [0.90, 0.91, 0.89, 0.905, 0.90, 0.91, 0.86, 0.87, 0.85, 0.70, 0.72, 0.68]
        set_trials(app.state.session_factory, job["id"], {i: finished_with(v) for i, v in enumerate(vals)})
        page = browser.new_page(viewport={"width": 1280, "height": 1100})  # type: ignore[attr-defined]
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{url}/ui/jobs/{job['id']}")
        page.wait_for_selector("#chart-intervals g.interval")
        rows = page.eval_on_selector_all(
            "#chart-intervals g.interval",
            "(gs) => gs.map((g) => [Number(g.dataset.point), g.getAttribute('class')])",
        )
        assert rows == [[1, "interval best tied"], [0, "interval tied"], [2, "interval"], [3, "interval"]]
        assert page.locator("#chart-intervals rect.tie-band").count() == 1
        assert page.locator("#trials .tie-mark").count() == 6  # the repeats of the two tied points
        shot = screenshot_path("intervals.png", tmp_path)
        page.locator("#intervals-figure").screenshot(path=str(shot))
        assert errors == []
        page.close()
    assert shot.stat().st_size > 5_000
