"""A real browser, Debian's Chromium headless, logs in to the local stack's Airflow UI.

Uses the session's ``local_stack`` (the e2e tests' stack, after its pipeline run). Driven by
Playwright with ``executable_path`` set to the system Chromium: no browser download. A missing
Chromium is installed as ``make test`` does (apt-get when root on Debian); only where that is
impossible do the tests skip, saying what to install, and in CI (``CI=true``) they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from local.stack import StackError
from local.stack.prerequisites import ensure_chromium
from tests.stack_harness import RunningStack

pytestmark = [pytest.mark.browser, pytest.mark.e2e]  # it needs the whole stack up

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DAGS = ("produce_data_asset", "trigger_databricks_workflow_dag")
TIMEOUT_MS = 30_000


@pytest.fixture(scope="session")
def chromium() -> str:
    try:
        return ensure_chromium(print)
    except StackError as error:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(str(error))
        pytest.skip(str(error))


@pytest.fixture
def page(chromium: str, tmp_path: Path) -> Iterator[Page]:
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "profile",  # a fresh --user-data-dir
            executable_path=chromium,
            headless=True,
            args=FLAGS,
            viewport={"width": 1400, "height": 900},
        )
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def _sign_in(page: Page, stack: RunningStack, password: str, path: str = "/dags") -> None:
    page.goto(f"{stack.info.ui_url}{path}")
    expect(page).to_have_url(f"{stack.info.ui_url}/auth/login?next={stack.info.ui_url}{path}")
    page.get_by_label("Username").fill(stack.info.username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def test_a_wrong_password_is_refused(page: Page, local_stack: RunningStack) -> None:
    _sign_in(page, local_stack, "not-the-password")
    expect(page.get_by_text("Invalid credentials")).to_be_visible()
    expect(page).to_have_url(
        f"{local_stack.info.ui_url}/auth/login?next={local_stack.info.ui_url}/dags"
    )


def test_both_dags_show_their_successful_last_runs(page: Page, local_stack: RunningStack) -> None:
    ui = local_stack.info.ui_url
    _sign_in(page, local_stack, local_stack.password)
    expect(page).to_have_url(f"{ui}/dags")
    for dag_id in DAGS:
        expect(page.get_by_role("link", name=dag_id, exact=True)).to_be_visible()

    # The list's "Success" filter keeps the DAGs whose latest run succeeded.
    page.get_by_role("button", name="Success").click()
    expect(page).to_have_url(f"{ui}/dags?last_dag_run_state=success")
    expect(page.get_by_text("2 Dags")).to_be_visible()
    for dag_id in DAGS:
        expect(page.get_by_role("link", name=dag_id, exact=True)).to_be_visible()

    api = local_stack.api()
    for dag_id, run_type in zip(DAGS, ("manual", "asset_triggered"), strict=True):
        runs = api.dag_runs(dag_id)  # other tests may have added runs to the shared stack
        assert runs and all(run["state"] == "success" for run in runs)
        page.goto(f"{ui}/dags/{dag_id}/runs")
        rows = page.get_by_role("row").filter(has_text=run_type)
        expect(rows).to_have_count(len(runs))
        for index in range(len(runs)):
            expect(rows.nth(index)).to_contain_text("success")
