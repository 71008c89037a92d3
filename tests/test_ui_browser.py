"""Headless Chromium drives the running demo's Airflow UI as a user would, and saves docs/screenshots/.

Needs the whole demo (`scripts/demo.sh start`, started here and stopped after unless it was already
running), Debian's `chromium` and `chromium-driver` (installed by scripts/install_browser.sh when
missing) and the `selenium` package. Marked `ui`: run it on its own, not with the plain test suite.
"""

from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import email.utils
import imaplib
import json
import os
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from devkit.unavailable import service_unavailable
from include.jira_rules import BULK_FETCH_LIMIT_PLAIN_FIELDS, ISSUE_KEY_PATTERN
from include.mail_ledger import DEFAULT_MAX_ATTEMPTS, record_failures

pytestmark = [pytest.mark.ui, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]
DEMO_SH = REPO / "scripts" / "demo.sh"
INSTALL_BROWSER = REPO / "scripts" / "install_browser.sh"
STATE = REPO / ".demo" / "state.json"
SCREENSHOTS = REPO / "docs" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
WINDOW = (1440, 1000)
DEMO_START_TIMEOUT_S = 420
# The first jira_inbox run that fetches anything ends about two minutes after the demo starts.
MAPPED_FETCH_TIMEOUT_S = 300
PAGE_TIMEOUT_S = 45
JIRA_KEY = re.compile(rf"\b{ISSUE_KEY_PATTERN}\b")
SUBJECT_KEY = re.compile(rf"\(({ISSUE_KEY_PATTERN})\)")


# ---------------------------------------------------------------------------------------- fixtures


def _selenium() -> Any:
    try:
        import selenium  # noqa: F401
    except ImportError:
        service_unavailable("The UI test needs the `selenium` package (selenium==4.51.0) in this environment")
    from selenium import webdriver

    return webdriver


def _ensure_chromium() -> None:
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    proc = subprocess.run(
        ["bash", str(INSTALL_BROWSER)], capture_output=True, text=True, timeout=600, check=False
    )
    if proc.returncode != 0 or not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        service_unavailable(
            f"Chromium and ChromeDriver are missing and {INSTALL_BROWSER.name} could not install them "
            f"(exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium with an empty profile, quit after the module."""
    webdriver = _selenium()
    _ensure_chromium()
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="jms-chromium-")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    except WebDriverException as exc:
        service_unavailable(f"Chromium did not start under ChromeDriver: {exc.msg}")
    try:
        yield driver
    finally:
        driver.quit()
        subprocess.run(["rm", "-rf", profile], check=False)


@pytest.fixture(scope="module")
def demo() -> Iterator[dict[str, Any]]:
    """The running demo's state (.demo/state.json); started here, and stopped after if it was not running."""
    was_running = STATE.exists() and _demo_status_ok()
    # The test session's Airflow settings (tests/conftest.py) must not reach the demo's Airflow.
    env = {name: value for name, value in os.environ.items() if not name.startswith("AIRFLOW")}
    proc = subprocess.run(
        ["bash", str(DEMO_SH), "start"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_START_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"`scripts/demo.sh start` failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}", pytrace=False
        )
    try:
        yield json.loads(STATE.read_text())
    finally:
        if not was_running:
            subprocess.run(["bash", str(DEMO_SH), "stop"], cwd=REPO, env=env, timeout=180, check=False)


# --- the two-site demo (scripts/demo.py DEMO_SITES): which site's DAGs, mailbox and store a test uses


def _sites(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every demo site's entry of the state file: jira, imap, store, sweep_dag_id, inbox_dag_ids."""
    return state["sites"]


def _first(state: dict[str, Any]) -> dict[str, Any]:
    """The first site: it has the plain connection ids (jira_store, imap_default) the page reads."""
    return next(iter(_sites(state).values()))


def _inbox_dag(site: dict[str, Any]) -> str:
    return site["inbox_dag_ids"][0]


def _demo_status_ok() -> bool:
    try:
        state = json.loads(STATE.read_text())
        return _Api(state).health_ok()
    except (OSError, ValueError, KeyError):
        return False


@pytest.fixture(scope="module")
def api(demo: dict[str, Any]) -> _Api:
    return _Api(demo)


@pytest.fixture(scope="module")
def signed_in(browser: Any, demo: dict[str, Any]) -> Any:
    """The browser, signed in to the demo's UI as the admin user the demo printed."""
    _sign_in(browser, demo)
    return browser


# ------------------------------------------------------------------------------------------ helpers


class _Api:
    """Airflow's REST API of the demo, read with an admin token: the source of what the UI must show."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.url = state["airflow"]["url"]
        self._credentials = {"username": state["airflow"]["user"], "password": state["airflow"]["password"]}
        self._token: str | None = None

    def _request(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=15) as response:
            return json.loads(response.read() or b"null")

    def health_ok(self) -> bool:
        try:
            health = self._request("GET", "/api/v2/monitor/health")
        except OSError:
            return False
        return all((part or {}).get("status") == "healthy" for part in health.values())

    def get(self, path: str) -> Any:
        if self._token is None:
            self._token = self._request("POST", "/auth/token", self._credentials)["access_token"]
        return self._request("GET", path, token=self._token)


def _body_text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _wait_for_texts(
    driver: Any, texts: list[str], *, within: Any = None, timeout: float = PAGE_TIMEOUT_S
) -> str:
    """Wait until every text is visible (in `within`, or the page); returns the visible text."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def visible_text() -> str:
        try:
            return within.text if within is not None else _body_text(driver)
        except StaleElementReferenceException:
            return ""

    try:
        WebDriverWait(driver, timeout).until(lambda _: all(text in visible_text() for text in texts))
    except TimeoutException:
        shown = visible_text()
        missing = [text for text in texts if text not in shown]
        failure = Path(tempfile.mkdtemp(prefix="jms-ui-failure-")) / "page.png"
        driver.save_screenshot(str(failure))
        pytest.fail(
            f"{driver.current_url} did not show {missing} within {timeout:.0f} s "
            f"(screenshot {failure}); it shows:\n{shown[:3000]}",
            pytrace=False,
        )
    return visible_text()


def _screenshot(driver: Any, name: str) -> Path:
    # Charts and badges fade in after the data arrives.
    time.sleep(1.5)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    assert driver.save_screenshot(str(path)), f"Chromium could not save {path}"
    assert path.stat().st_size > 10_000, f"{path} is suspiciously small: a blank page?"
    return path


def _sign_in(driver: Any, state: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url = state["airflow"]["url"]
    driver.get(f"{url}/")
    WebDriverWait(driver, PAGE_TIMEOUT_S).until(lambda d: d.find_elements(By.NAME, "username"))
    assert "/auth/login" in driver.current_url, "an anonymous visitor must be sent to the login page"
    driver.find_element(By.NAME, "username").send_keys(state["airflow"]["user"])
    driver.find_element(By.NAME, "password").send_keys(state["airflow"]["password"])
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(driver, PAGE_TIMEOUT_S).until(lambda d: "/auth/login" not in d.current_url)


def _keys_in_label(label: str) -> list[str]:
    return JIRA_KEY.findall(label)


def _mailed_keys(state: dict[str, Any]) -> set[str]:
    """Keys named by mail in a site's mailbox (`state`: the site's entry) from jira@<its Jira host>."""
    imap = state["imap"]
    trusted = f"jira@{urlsplit(state['jira']['url']).hostname}"
    client = imaplib.IMAP4(imap["host"], int(imap["port"]), timeout=15)
    try:
        client.login(imap["login"], imap["password"])
        client.select("INBOX", readonly=True)
        typ, data = client.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)])")
        assert typ == "OK", data
    finally:
        client.logout()
    keys: set[str] = set()
    for item in data:
        if not isinstance(item, tuple):
            continue
        headers = email.message_from_bytes(item[1], policy=email.policy.default)
        _, sender = email.utils.parseaddr(str(headers["From"]))
        if sender.lower() == trusted:
            keys.update(SUBJECT_KEY.findall(str(headers["Subject"])))
    return keys


def _jira_has(state: dict[str, Any], key: str) -> bool:
    jira = state["jira"]
    auth = base64.b64encode(f"{jira['email']}:{jira['api_token']}".encode()).decode()
    request = urllib.request.Request(
        f"{jira['url']}/rest/api/3/issue/{key}?fields=summary", headers={"Authorization": f"Basic {auth}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status == 200
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise


def _mapped_labels(api: _Api, dag_id: str, run_id: str) -> list[str]:
    mapped = api.get(
        f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/fetch_tickets/listMapped"
    )
    return [ti["rendered_map_index"] for ti in mapped["task_instances"]]


def _latest_inbox_run_with_fetches(api: _Api, dag_id: str) -> str:
    deadline = time.monotonic() + MAPPED_FETCH_TIMEOUT_S
    while True:
        found = api.get(
            f"/api/v2/dags/{dag_id}/dagRuns/~/taskInstances"
            "?task_id=fetch_tickets&state=success&order_by=-start_date&limit=1"
        )["task_instances"]
        if found:
            return found[0]["dag_run_id"]
        if time.monotonic() > deadline:
            pytest.fail(
                f"No {dag_id} run fetched any ticket within {MAPPED_FETCH_TIMEOUT_S} s of the demo's start",
                pytrace=False,
            )
        time.sleep(5)


# -------------------------------------------------------------------------------------------- tests


def test_admin_signs_in_with_the_printed_password_and_sees_both_dags(
    signed_in: Any, demo: dict[str, Any]
) -> None:
    signed_in.get(f"{demo['airflow']['url']}/dags")
    dag_ids = [
        dag for site in _sites(demo).values() for dag in (site["sweep_dag_id"], *site["inbox_dag_ids"])
    ]
    assert len(dag_ids) == 4, dag_ids  # two sites, each a sweep and one inbox
    _wait_for_texts(signed_in, dag_ids)
    assert "/auth/login" not in signed_in.current_url
    _screenshot(signed_in, "dags.png")


def test_inbox_fetches_are_labelled_with_the_jira_keys_from_the_mail(
    signed_in: Any, demo: dict[str, Any], api: _Api
) -> None:
    # Each site's inbox fetches only keys mailed to that site's mailbox: mail lands under its own site.
    for name, site in _sites(demo).items():
        inbox = _inbox_dag(site)
        run_id = _latest_inbox_run_with_fetches(api, inbox)
        labels = _mapped_labels(api, inbox, run_id)
        assert labels and all(labels), f"fetch_tickets of {inbox} {run_id} has unlabelled instances: {labels}"
        mailed = _mailed_keys(site)
        for label in labels:
            keys = _keys_in_label(label)
            assert keys, f"the label {label!r} names no Jira key"
            assert set(keys) <= mailed, (
                f"{inbox}: {label!r} names keys that no trusted Jira mail to {name}'s mailbox named"
                f" (mailed: {sorted(mailed)})"
            )
        if site is _first(demo):
            first_inbox, first_run, first_labels = inbox, run_id, labels

    tasks = [task["task_id"] for task in api.get(f"/api/v2/dags/{first_inbox}/tasks")["tasks"]]
    signed_in.get(f"{demo['airflow']['url']}/dags/{first_inbox}")
    _wait_for_texts(signed_in, [first_inbox, *tasks])
    _screenshot(signed_in, "jira_inbox.png")

    signed_in.get(
        f"{demo['airflow']['url']}/dags/{first_inbox}/runs/{quote(first_run, safe='')}"
        "/tasks/fetch_tickets/mapped"
    )
    _wait_for_texts(signed_in, ["Map Index", *first_labels])
    _screenshot(signed_in, "jira_inbox_fetch_tickets.png")


def test_sweep_batches_are_labelled_with_their_first_and_last_key(
    signed_in: Any, demo: dict[str, Any], api: _Api
) -> None:
    # Each site's initial load takes that site's tickets, checked against that site's own Jira.
    for name, site in _sites(demo).items():
        sweep = site["sweep_dag_id"]
        runs = api.get(f"/api/v2/dags/{sweep}/dagRuns?run_type=manual&order_by=start_date&limit=1")[
            "dag_runs"
        ]
        assert runs, f"scripts/demo.sh start must have triggered the initial-load {sweep} run"
        run_id = runs[0]["dag_run_id"]
        deadline = time.monotonic() + MAPPED_FETCH_TIMEOUT_S
        while api.get(f"/api/v2/dags/{sweep}/dagRuns/{quote(run_id, safe='')}")["state"] != "success":
            assert time.monotonic() < deadline, f"{sweep} run {run_id} did not succeed in time"
            time.sleep(5)
        batches = api.get(
            f"/api/v2/dags/{sweep}/dagRuns/{quote(run_id, safe='')}/taskInstances/list_changed_keys"
            "/xcomEntries/return_value?deserialize=true"
        )["value"]
        # One mapped fetch per bulk request of up to 1000 issues (the demo fetches no multi-valued field).
        total = sum(len(batch) for batch in batches)
        expected = site["jira"]["demo_issues"]
        assert total >= expected, f"the initial load should take {name}'s {expected} tickets, got {total}"
        assert len(batches) == -(-total // BULK_FETCH_LIMIT_PLAIN_FIELDS), [len(batch) for batch in batches]
        labels = _mapped_labels(api, sweep, run_id)
        for batch, label in zip(batches, labels, strict=True):
            assert label.startswith(batch[0]) and batch[-1] in label and f"({len(batch)} keys)" in label, (
                f"{label!r} does not describe a batch of {len(batch)} keys from {batch[0]} to {batch[-1]}"
            )
            assert _jira_has(site, batch[0]) and _jira_has(site, batch[-1])
        if site is _first(demo):
            first_sweep, first_run, first_labels = sweep, run_id, labels

    signed_in.get(
        f"{demo['airflow']['url']}/dags/{first_sweep}/runs/{quote(first_run, safe='')}"
        "/tasks/fetch_tickets/mapped"
    )
    _wait_for_texts(signed_in, ["Map Index", *first_labels])
    _screenshot(signed_in, "jira_sweep_fetch_tickets.png")


def test_sweep_trigger_form_shows_every_param_with_its_title_and_description(
    signed_in: Any, demo: dict[str, Any], api: _Api
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    sweep = _first(demo)["sweep_dag_id"]
    params = api.get(f"/api/v2/dags/{sweep}/details")["params"]
    sections: dict[str, list[tuple[str, str]]] = {}
    for name, param in params.items():
        title = param["schema"].get("title") or name
        sections.setdefault(param["schema"].get("section", ""), []).append((title, param["description"]))
    assert all(description for fields in sections.values() for _, description in fields)

    signed_in.set_window_size(WINDOW[0], 1300)
    try:
        signed_in.get(f"{demo['airflow']['url']}/dags/{sweep}")
        _wait_for_texts(signed_in, [sweep, "Trigger"])
        WebDriverWait(signed_in, PAGE_TIMEOUT_S).until(
            lambda d: [b for b in d.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Trigger"]
        )
        [b for b in signed_in.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Trigger"][0].click()
        dialog = WebDriverWait(signed_in, PAGE_TIMEOUT_S).until(
            lambda d: d.find_element(By.CSS_SELECTOR, "[data-scope=dialog][data-part=content]")
        )
        _wait_for_texts(signed_in, [sweep, *[s for s in sections if s]], within=dialog)
        for section, fields in sections.items():
            if section:
                # The form shows one section at a time: open this one.
                header = [b for b in dialog.find_elements(By.TAG_NAME, "button") if b.text.strip() == section]
                assert header, f"the trigger form has no section {section!r}"
                if header[0].get_attribute("aria-expanded") != "true":
                    header[0].click()
            expected = [text for field in fields for text in field]
            _wait_for_texts(signed_in, expected, within=dialog)
            _screenshot(signed_in, f"jira_sweep_trigger_{(section or 'params').lower()}.png")
        ActionChains(signed_in).send_keys(Keys.ESCAPE).perform()
    finally:
        signed_in.set_window_size(*WINDOW)


# ------------------------------------------------------------------------------- the Jira sync page

JIRA_SYNC_ROUTE = "/plugin/jira-sync"


def _store() -> Path:
    """The first demo site's store: the page shows the first site when no `?site=` is given."""
    return Path(_first(json.loads(STATE.read_text()))["store"])


RUN_TIMEOUT_S = 300


def _store_figures(store: Path | None = None) -> dict[str, Any]:
    """Tickets by source and Jira requests of the last hour, read from a demo store (the first site's)."""
    import sqlite3
    from datetime import UTC, datetime, timedelta

    from include.store_db import sqlite_timestamp

    since = sqlite_timestamp(datetime.now(UTC) - timedelta(hours=1))
    store = store or _store()
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)) as conn:
        by_source = dict(conn.execute("SELECT source, count(*) FROM jira_ticket GROUP BY source").fetchall())
        (requests,) = conn.execute(
            "SELECT coalesce(sum(requests), 0) FROM jira_api_usage WHERE recorded_at >= ?", (since,)
        ).fetchone()
    return {"by_source": by_source, "total": sum(by_source.values()), "requests": requests}


def _figure(driver: Any, name: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'[data-figure="{name}"]').text.strip()


def _optional_figure(driver: Any, name: str) -> int:
    """A count the page shows only when it is not zero (a source without rows has no line)."""
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, f'[data-figure="{name}"]')
    return int(found[0].text.strip()) if found else 0


def _open_jira_sync_from_the_navigation(driver: Any, demo: dict[str, Any]) -> None:
    """Click the "Jira sync" entry of the UI's navigation and switch into the page's frame."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.switch_to.default_content()
    driver.get(f"{demo['airflow']['url']}/")
    link = WebDriverWait(driver, PAGE_TIMEOUT_S).until(
        lambda d: [
            a
            for a in d.find_elements(By.TAG_NAME, "a")
            if (a.get_attribute("href") or "").endswith(JIRA_SYNC_ROUTE)
        ]
    )[0]
    assert link.text.strip() == "Jira sync"
    link.click()
    frame = WebDriverWait(driver, PAGE_TIMEOUT_S).until(lambda d: d.find_element(By.TAG_NAME, "iframe"))
    assert frame.get_attribute("src").endswith("/jira-mail-sync/status/page")
    driver.switch_to.frame(frame)
    WebDriverWait(driver, PAGE_TIMEOUT_S).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, '[data-figure="tickets.total"]')
    )


def _wait_for_sweep_rows(store: Path | None = None, timeout: float = MAPPED_FETCH_TIMEOUT_S) -> None:
    """Until the initial sweep has stored tickets (the store and its tables appear with its first run)."""
    import sqlite3

    store = store or _store()
    deadline = time.monotonic() + timeout
    while True:
        try:
            if store.exists() and _store_figures(store)["by_source"].get("sweep"):
                return
        except sqlite3.OperationalError:
            pass  # no such table yet
        assert time.monotonic() < deadline, "the demo's initial sweep stored nothing in time"
        time.sleep(5)


def test_jira_sync_page_opens_from_the_navigation_and_its_numbers_are_the_stores(
    signed_in: Any, demo: dict[str, Any]
) -> None:
    _wait_for_sweep_rows()
    before = _store_figures()
    _open_jira_sync_from_the_navigation(signed_in, demo)
    sources = sorted(set(before["by_source"]) | {"inbox", "sweep"})
    shown = {
        "total": int(_figure(signed_in, "tickets.total")),
        "by_source": {
            source: _optional_figure(signed_in, f"tickets.by_source.{source}") for source in sources
        },
        "requests": int(_figure(signed_in, "jira.requests_last_hour")),
    }
    after = _store_figures()

    # The demo keeps writing: the page, rendered between the two reads, must lie between them. Rows
    # are only added, so the total only grows; a row changes source when the other DAG rewrites it.
    assert before["total"] <= shown["total"] <= after["total"], (before, shown, after)
    for source, count in shown["by_source"].items():
        low, high = sorted((before["by_source"].get(source, 0), after["by_source"].get(source, 0)))
        assert low <= count <= high, (source, before, shown, after)
    assert shown["requests"] > 0
    # A sum over the last hour: new tasks add to it, old ones leave it.
    low, high = sorted((before["requests"], after["requests"]))
    assert low <= shown["requests"] <= high, (before, shown, after)
    assert _figure(signed_in, "inbox.mode") in ("poll", "idle")
    assert _figure(signed_in, "inbox.unseen").isdigit()
    signed_in.switch_to.default_content()
    _screenshot(signed_in, "jira_sync_page.png")


def test_the_site_selector_switches_the_page_to_the_other_sites_store(
    signed_in: Any, demo: dict[str, Any]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    names = list(_sites(demo))
    other = _sites(demo)[names[1]]
    store = Path(other["store"])
    _wait_for_sweep_rows(store)
    _open_jira_sync_from_the_navigation(signed_in, demo)
    selector = Select(signed_in.find_element(By.ID, "site-select"))
    # No site chosen: the first is shown, and the page says so.
    assert [option.get_attribute("value") for option in selector.options] == names
    assert selector.first_selected_option.get_attribute("value") == names[0]
    assert signed_in.find_elements(By.ID, "site-first")

    before = _store_figures(store)
    selector.select_by_value(names[1])
    _click_button(signed_in, signed_in.find_element(By.ID, "site-selector"), "Show")
    WebDriverWait(signed_in, PAGE_TIMEOUT_S).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f'tr.selected[data-site="{names[1]}"]')
    )
    shown = int(_figure(signed_in, "tickets.total"))
    after = _store_figures(store)

    assert before["total"] <= shown <= after["total"], (before, shown, after)
    assert not signed_in.find_elements(By.ID, "site-first")
    assert f"{other['inbox_dag_ids'][0]} (shown)" in _body_text(signed_in)
    signed_in.switch_to.default_content()


def test_jira_sync_page_refuses_a_browser_without_a_session(demo: dict[str, Any]) -> None:
    request = urllib.request.Request(f"{demo['airflow']['url']}/jira-mail-sync/status/page")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=15)
    assert refused.value.code == 401
    assert "not logged in" in refused.value.read().decode()


def _click_button(driver: Any, within: Any, text: str) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def found(_: Any) -> Any:
        try:
            matches = [b for b in within.find_elements(By.TAG_NAME, "button") if b.text.strip() == text]
        except StaleElementReferenceException:
            return False
        return matches[0] if matches and matches[0].is_enabled() else False

    WebDriverWait(driver, PAGE_TIMEOUT_S).until(found).click()


def _set_datetime(driver: Any, trigger: Any, moment: Any) -> None:
    """Fill one of the UI's date-time pickers (a popover with a Date and a Time field, in UTC here)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    trigger.click()
    popover = WebDriverWait(driver, PAGE_TIMEOUT_S).until(
        lambda d: [
            p
            for p in d.find_elements(
                By.CSS_SELECTOR, "[data-scope=popover][data-part=content][data-state=open]"
            )
            if p.is_displayed()
        ]
    )[-1]
    assert "UTC" in popover.text, f"the picker is not in UTC: {popover.text[:200]}"
    for placeholder, value in (("YYYY/MM/DD", f"{moment:%Y/%m/%d}"), ("HH:mm", f"{moment:%H:%M}")):
        field = popover.find_element(By.CSS_SELECTOR, f"input[placeholder='{placeholder}']")
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(value)
    field.send_keys(Keys.ESCAPE)


def test_backfill_of_jira_sweep_created_from_the_ui_runs_to_success(
    signed_in: Any, demo: dict[str, Any], api: _Api
) -> None:
    """The Backfill button works the first time (metadata on PostgreSQL), and its runs succeed."""
    from datetime import UTC, datetime, timedelta

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    now = datetime.now(UTC)
    start = (now - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    end = start + timedelta(minutes=45)
    sweep = _first(demo)["sweep_dag_id"]
    known = {b["id"] for b in api.get(f"/api/v2/backfills?dag_id={sweep}")["backfills"]}

    signed_in.switch_to.default_content()
    signed_in.set_window_size(WINDOW[0], 1300)
    try:
        signed_in.get(f"{demo['airflow']['url']}/dags/{sweep}")
        _wait_for_texts(signed_in, [sweep, "Trigger"])
        _click_button(signed_in, signed_in, "Trigger")
        dialog = WebDriverWait(signed_in, PAGE_TIMEOUT_S).until(
            lambda d: d.find_element(By.CSS_SELECTOR, "[data-scope=dialog][data-part=content]")
        )
        _wait_for_texts(signed_in, ["Single Run", "Backfill"], within=dialog)
        WebDriverWait(signed_in, PAGE_TIMEOUT_S).until(
            lambda _: [
                label
                for label in dialog.find_elements(By.TAG_NAME, "label")
                if label.text.startswith("Backfill")
            ]
        )[0].click()
        _wait_for_texts(signed_in, ["Date Range", "Run Backfill"], within=dialog)
        pickers = dialog.find_elements(By.CSS_SELECTOR, "[data-testid=datetime-input]")
        _set_datetime(signed_in, pickers[0], start)
        _set_datetime(signed_in, pickers[1], end)
        # Four 15-minute intervals, both ends included: the UI's dry run counts them before it creates any.
        _wait_for_texts(signed_in, ["4 runs will be triggered"], within=dialog)
        _screenshot(signed_in, "jira_sweep_backfill.png")
        _click_button(signed_in, dialog, "Run Backfill")
        deadline = time.monotonic() + PAGE_TIMEOUT_S
        while not (
            created := [
                b for b in api.get(f"/api/v2/backfills?dag_id={sweep}")["backfills"] if b["id"] not in known
            ]
        ):
            assert time.monotonic() < deadline, (
                f"no backfill was created; the page shows:\n{_body_text(signed_in)[:2000]}"
            )
            time.sleep(1)
    finally:
        signed_in.set_window_size(*WINDOW)
    backfill = created[0]
    assert datetime.fromisoformat(backfill["from_date"].replace("Z", "+00:00")) == start
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        runs = api.get(f"/api/v2/dags/{sweep}/dagRuns?run_type=backfill&limit=100")["dag_runs"]
        ours = [
            r
            for r in runs
            if start <= datetime.fromisoformat(r["logical_date"].replace("Z", "+00:00")) <= end
        ]
        if len(ours) == 4 and all(r["state"] == "success" for r in ours):
            break
        assert not [r for r in ours if r["state"] == "failed"], f"backfill runs failed: {ours}"
        assert time.monotonic() < deadline, f"the backfill's runs did not all succeed in time: {ours}"
        time.sleep(5)


def _uidnext_and_validity(state: dict[str, Any]) -> tuple[int, int]:
    imap = state["imap"]
    client = imaplib.IMAP4(imap["host"], int(imap["port"]), timeout=15)
    try:
        client.login(imap["login"], imap["password"])
        typ, data = client.status("INBOX", "(UIDNEXT UIDVALIDITY)")
        assert typ == "OK", data
    finally:
        client.logout()
    found = dict(re.findall(rb"(UIDNEXT|UIDVALIDITY) (\d+)", data[0]))
    return int(found[b"UIDNEXT"]), int(found[b"UIDVALIDITY"])


def _append(state: dict[str, Any], raw: bytes) -> int:
    imap = state["imap"]
    client = imaplib.IMAP4(imap["host"], int(imap["port"]), timeout=15)
    try:
        client.login(imap["login"], imap["password"])
        typ, data = client.append("INBOX", None, None, raw)
        assert typ == "OK", data
    finally:
        client.logout()
    return int(re.search(rb"APPENDUID \d+ (\d+)", data[-1]).group(1))


def _flags(state: dict[str, Any], uid: int) -> str:
    imap = state["imap"]
    client = imaplib.IMAP4(imap["host"], int(imap["port"]), timeout=15)
    try:
        client.login(imap["login"], imap["password"])
        client.select("INBOX", readonly=True)
        typ, data = client.uid("FETCH", str(uid), "(FLAGS)")
        assert typ == "OK", data
    finally:
        client.logout()
    return data[0].decode() if data and data[0] else ""


def _ledger_state(uidvalidity: int, uid: int) -> str | None:
    import sqlite3

    with contextlib.closing(sqlite3.connect(_store(), timeout=10)) as conn:
        row = conn.execute(
            "SELECT state FROM jira_mail_ledger WHERE mailbox = 'INBOX' AND uidvalidity = ? AND uid = ?",
            (uidvalidity, uid),
        ).fetchone()
    return row[0] if row else None


def _quarantine_next_mail(state: dict[str, Any], key: str) -> tuple[int, int]:
    """Deliver a good Jira mail for `key` that the ledger already holds as quarantined; (uidvalidity, uid).

    The ledger row is written first, for the UID the mail will get, so no jira_inbox run can take the
    mail in between; the activity generator may take that UID first, and then it is tried again.
    """
    import sqlite3
    from datetime import UTC, datetime

    from devkit.mail_factory import jira_notification

    site = urlsplit(state["jira"]["url"]).hostname
    held_back = {
        "sender": f"jira@{site}",
        "subject": f"[JIRA] ({key}) held back by the UI test",
        "keys": [key],
        "reason": "Jira answered HTTP 500 five times (the UI test's quarantine)",
    }
    for _ in range(5):
        uidnext, uidvalidity = _uidnext_and_validity(state)
        with contextlib.closing(sqlite3.connect(_store(), timeout=10)) as conn:
            # As the DAG quarantines: one failed attempt after another until max_attempts.
            for _attempt in range(DEFAULT_MAX_ATTEMPTS):
                (outcome,) = record_failures(
                    conn,
                    "sqlite",
                    mailbox="INBOX",
                    uidvalidity=uidvalidity,
                    entries=[{"uid": uidnext, **held_back}],
                    now=datetime.now(UTC),
                    max_attempts=DEFAULT_MAX_ATTEMPTS,
                    site=state["name"],
                )
            assert (outcome["state"], outcome["attempts"]) == ("quarantined", DEFAULT_MAX_ATTEMPTS), outcome
        uid = _append(state, jira_notification(key, site=site, summary="held back by the UI test"))
        if uid == uidnext:
            return uidvalidity, uid
        with contextlib.closing(sqlite3.connect(_store(), timeout=10)) as conn, conn:
            conn.execute(
                "DELETE FROM jira_mail_ledger WHERE uidvalidity = ? AND uid = ?", (uidvalidity, uidnext)
            )
    pytest.fail("another writer took the mailbox's next UID five times running", pytrace=False)


def test_a_quarantined_mail_released_from_the_page_is_processed(
    signed_in: Any, demo: dict[str, Any], api: _Api
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _wait_for_sweep_rows()
    import sqlite3

    with contextlib.closing(sqlite3.connect(_store(), timeout=10)) as conn:
        (key,) = conn.execute(
            "SELECT key FROM jira_ticket WHERE source = 'sweep' ORDER BY key LIMIT 1"
        ).fetchone()
    site = _first(demo)
    uidvalidity, uid = _quarantine_next_mail(site, key)
    # Held back: a scheduled run leaves it alone.
    time.sleep(70)
    assert "\\Seen" not in _flags(site, uid) and _ledger_state(uidvalidity, uid) == "quarantined"

    _open_jira_sync_from_the_navigation(signed_in, demo)
    row = WebDriverWait(signed_in, PAGE_TIMEOUT_S).until(
        lambda d: d.find_element(By.CSS_SELECTOR, f'tr[data-uid="{uid}"]')
    )
    assert "quarantined" in row.text and "held back by the UI test" in row.text and "5" in row.text
    row.find_element(By.CSS_SELECTOR, "input[type=checkbox]").click()
    signed_in.switch_to.default_content()
    _screenshot(signed_in, "jira_sync_release.png")
    signed_in.switch_to.frame(signed_in.find_element(By.TAG_NAME, "iframe"))
    signed_in.find_element(By.ID, "release").click()
    notice = WebDriverWait(signed_in, PAGE_TIMEOUT_S).until(lambda d: d.find_element(By.ID, "released"))
    run_id = notice.find_element(By.TAG_NAME, "strong").text
    signed_in.switch_to.default_content()

    inbox = _inbox_dag(site)
    run = api.get(f"/api/v2/dags/{inbox}/dagRuns/{quote(run_id, safe='')}")
    assert run["conf"] == {"mailbox": "INBOX", "release_uids": [uid], "release_all": False}
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not ("\\Seen" in _flags(site, uid) and _ledger_state(uidvalidity, uid) in ("settled", None)):
        state = api.get(f"/api/v2/dags/{inbox}/dagRuns/{quote(run_id, safe='')}")["state"]
        assert state != "failed", f"the release run {run_id} failed"
        assert time.monotonic() < deadline, (
            f"UID {uid} was not processed in time: flags {_flags(site, uid)!r}, "
            f"ledger {_ledger_state(uidvalidity, uid)!r}, run {state}"
        )
        time.sleep(5)
