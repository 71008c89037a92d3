"""jira_sweep end to end: the Jira stand-in, a real store and real dag.test() runs over data intervals."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from include.ticket_store import ensure_table
from tests.harness.airflow_env import airflow_cli, load_dag, run_dag

REPO = Path(__file__).resolve().parents[1]
HOUR_START = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)

pytestmark = pytest.mark.airflow


@pytest.fixture
def sweep_env(airflow_db, jira_standin, jira_conn_env, store_backend, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_JIRA_STORE", json.dumps(store_backend.airflow_conn()))
    return jira_standin, store_backend


@pytest.fixture
def sweep_dag():
    # A fresh DAG object per test: dag.test() leaves the run's conf in the DAG's params.
    return load_dag("jira_sweep")


def rows(store_backend) -> dict[str, tuple]:
    conn = store_backend.connect()
    try:
        ensure_table(conn, store_backend.dialect)
        cur = conn.cursor()
        cur.execute("SELECT key, summary, status, assignee_email, progress, updated_at FROM jira_ticket")
        return {r[0]: tuple(str(v) for v in r[1:]) for r in cur.fetchall()}
    finally:
        conn.close()


# Where the sweep lists keys: Cloud's /search/jql, Data Center's /search (#24).
SEARCH_PATHS = {"cloud": "/rest/api/3/search/jql", "datacenter": "/rest/api/2/search"}


def manual(since: datetime, until: datetime, **extra) -> dict:
    return {"since": since.isoformat(), "until": until.isoformat(), **extra}


def test_sweep_stores_exactly_the_tickets_updated_in_its_window(sweep_env, sweep_dag, jira_flavor):
    jira, store = sweep_env
    jira.set_time_zone("Australia/Sydney")
    jira.add_issue(
        "ABC-1",
        summary="inside",
        assignee_email="a@example.com",
        progress=(5, 10),
        updated=HOUR_START + timedelta(minutes=14, seconds=59),
    )
    jira.add_issue("ABC-2", summary="at start", updated=HOUR_START)
    jira.add_issue("ABC-3", summary="at end: next window", updated=HOUR_START + timedelta(minutes=15))
    jira.add_issue("ABC-4", summary="long before", updated=HOUR_START - timedelta(hours=3))

    result = run_dag(
        sweep_dag, conf=manual(HOUR_START, HOUR_START + timedelta(minutes=15), lookback_minutes=0)
    )

    assert result.state == "success", result.states
    assert set(rows(store)) == {"ABC-1", "ABC-2"}
    plan = result.xcom("plan_sweep")
    assert plan["account_time_zone"] == "Australia/Sydney"
    assert '"2026-11-27 21:00"' in plan["jql"]  # 10:00Z is 21:00 in Sydney (AEDT, +11)


def test_backfill_of_several_intervals_equals_one_long_manual_sweep(
    sweep_env, sweep_dag, store_backend, jira_flavor
):
    jira, store = sweep_env
    jira.set_time_zone("America/New_York")
    for n in range(60):
        jira.add_issue(
            f"OPS-{n + 1}",
            summary=f"ticket {n}",
            assignee_email=None if n % 3 else f"u{n}@example.com",
            progress=(n, 60),
            updated=HOUR_START + timedelta(minutes=n, seconds=n % 60),
        )

    for quarter in range(1, 5):  # the four scheduled intervals of the hour, as a backfill creates them
        run = run_dag(sweep_dag, logical_date=HOUR_START + timedelta(minutes=15 * quarter))
        assert run.state == "success", run.states
    backfilled = rows(store)

    conn = store.connect()
    conn.cursor().execute("DELETE FROM jira_ticket")
    conn.commit()
    conn.close()
    one_sweep = run_dag(sweep_dag, conf=manual(HOUR_START, HOUR_START + timedelta(hours=1)))
    assert one_sweep.state == "success", one_sweep.states

    assert len(backfilled) == 60
    assert rows(store) == backfilled


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_backfill_dry_run_lists_one_run_per_15_minute_interval(sweep_env, sweep_dag):
    run_dag(sweep_dag, conf=manual(HOUR_START, HOUR_START + timedelta(minutes=1)))  # serializes the DAG
    proc = airflow_cli(
        "backfill",
        "create",
        "--dag-id",
        "jira_sweep",
        "--from-date",
        "2026-10-01T10:00:00+00:00",
        "--to-date",
        "2026-10-01T11:00:00+00:00",
        "--dry-run",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    listed = [line.split("|")[1].strip() for line in proc.stdout.splitlines() if line.startswith("| 2026-")]
    # Both ends are included, one run per 15-minute data interval.
    assert listed == [f"2026-10-01 {t}:00+00:00" for t in ("10:00", "10:15", "10:30", "10:45", "11:00")], (
        proc.stdout
    )


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "jql_filter",
    [
        'status = "Done") OR (project = "SECRET"',
        'status = "Done" ORDER BY key',
        'summary ~ "unterminated',
        "status = Done; DELETE",
        "status = Done\nOR project = SECRET",
    ],
)
def test_jql_injection_through_params_fails_clearly_before_any_search(sweep_env, sweep_dag, jql_filter):
    jira, store = sweep_env
    result = run_dag(
        sweep_dag, conf=manual(HOUR_START, HOUR_START + timedelta(minutes=15), jql_filter=jql_filter)
    )
    assert result.state == "failed"
    assert result.states["plan_sweep"] == ["failed"]  # no retries: bad input is final
    assert jira.request_count("/rest/api/3/search") == 0


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_a_since_out_of_datetime_range_fails_at_once_without_retries(sweep_env, sweep_dag):
    jira, store = sweep_env
    conf = {"since": "0001-01-01T00:00:00+01:00", "until": "2026-11-27T10:00:00+00:00"}
    result = run_dag(sweep_dag, conf=conf)
    assert result.state == "failed"
    assert result.states["plan_sweep"] == ["failed"]
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(run_id=result.run_id, task_id="plan_sweep").one()
        # One try: an OverflowError used to be retried (twice, minutes apart) as if it were transient.
        assert ti.try_number == 1
    assert jira.request_count() == 0


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_invalid_project_key_is_refused_by_the_trigger_form(sweep_env, sweep_dag):
    from airflow.sdk.definitions.param import ParamValidationError

    with pytest.raises(ParamValidationError):
        run_dag(
            sweep_dag,
            conf=manual(HOUR_START, HOUR_START + timedelta(minutes=15), projects=['ABC") OR (project = "X']),
        )


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_valid_filter_and_projects_narrow_the_sweep(sweep_env, sweep_dag):
    jira, store = sweep_env
    t = HOUR_START + timedelta(minutes=5)
    jira.add_issue("ABC-1", summary="done in ABC", status="Done", updated=t)
    jira.add_issue("ABC-2", summary="open in ABC", status="To Do", updated=t)
    jira.add_issue("WEB-1", summary="done in WEB", status="Done", updated=t)
    result = run_dag(
        sweep_dag,
        conf=manual(
            HOUR_START, HOUR_START + timedelta(minutes=15), projects=["ABC"], jql_filter='status = "Done"'
        ),
    )
    assert result.state == "success", result.states
    assert set(rows(store)) == {"ABC-1"}


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_a_scheduled_run_after_missed_intervals_sweeps_the_gap_too(sweep_env, sweep_dag):
    """With catchup off, intervals missed while the scheduler was down are never run on their own."""
    jira, store = sweep_env
    day = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    jira.add_issue("GAP-1", summary="during the outage", updated=day + timedelta(minutes=31))
    jira.add_issue("GAP-2", summary="in the next run's own window", updated=day + timedelta(minutes=50))

    before = run_dag(sweep_dag, logical_date=day + timedelta(minutes=15))  # 10:00-10:15 succeeds
    assert before.state == "success", before.states
    # 10:15-10:30 and 10:30-10:45 never ran; the next scheduled run is 10:45-11:00.
    after = run_dag(load_dag("jira_sweep"), logical_date=day + timedelta(minutes=60))

    assert after.state == "success", after.states
    assert set(rows(store)) == {"GAP-1", "GAP-2"}
    assert after.xcom("plan_sweep")["window_start"] == (day + timedelta(minutes=15)).isoformat()


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_a_window_with_too_many_changes_fails_clearly_without_fetching(sweep_env, sweep_dag, monkeypatch):
    import jira_mail_sync.sweep_tasks as sweep_tasks

    monkeypatch.setattr(sweep_tasks, "MAX_KEYS_PER_SWEEP", 3)
    jira, store = sweep_env
    for n in range(5):
        jira.add_issue(f"ABC-{n + 1}", summary="s", updated=HOUR_START + timedelta(minutes=n))
    result = run_dag(sweep_dag, conf=manual(HOUR_START, HOUR_START + timedelta(minutes=15)))
    assert result.state == "failed"
    assert result.states["list_changed_keys"] == ["failed"]
    assert jira.request_count("/rest/api/3/issue/bulkfetch") == 0
    assert rows(store) == {}


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_paging_follows_next_page_token_to_is_last(sweep_env, sweep_dag):
    jira, store = sweep_env
    for n in range(5050):
        jira.add_issue(f"BIG-{n + 1}", summary="s", updated=HOUR_START + timedelta(seconds=n % 900))
    result = run_dag(sweep_dag, conf=manual(HOUR_START, HOUR_START + timedelta(minutes=15)))
    assert result.state == "success", result.states
    assert jira.request_count("/rest/api/3/search/jql") == 2  # 5000 + 50, the second page isLast
    assert jira.request_count("/rest/api/3/issue/bulkfetch") == 6  # 5 of 1000 and 1 of 50
    assert len(rows(store)) == 5050


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_rate_limit_retry_after_is_honoured(sweep_env, sweep_dag, jira_flavor):
    jira, store = sweep_env
    search = SEARCH_PATHS[jira_flavor]
    jira.add_issue("ABC-1", summary="s", updated=HOUR_START + timedelta(minutes=1))
    jira.inject_fault(429, count=1, retry_after=2, path_prefix=search)
    started = time.monotonic()
    result = run_dag(sweep_dag, conf=manual(HOUR_START, HOUR_START + timedelta(minutes=15)))
    assert result.state == "success", result.states
    assert time.monotonic() - started >= 2
    statuses = [r[3] for r in jira.requests if r[1] == search]
    assert statuses[:2] == [429, 200]  # on Data Center the fetch searches too: a third 200
    assert set(rows(store)) == {"ABC-1"}


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_airflow_dags_test_cli_sweeps_the_given_window(sweep_env):
    jira, store = sweep_env
    jira.add_issue("CLI-1", summary="s", updated=datetime(2026, 11, 27, 0, 30, tzinfo=UTC))
    conf = {"since": "2026-11-27T00:00:00+00:00", "until": "2026-11-27T01:00:00+00:00"}
    proc = airflow_cli("dags", "test", "jira_sweep", "-c", json.dumps(conf))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert set(rows(store)) == {"CLI-1"}
    assert jira.api_token not in proc.stdout + proc.stderr


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_a_gap_too_large_for_one_run_is_swept_oldest_first_over_the_next_runs(
    sweep_env, sweep_dag, monkeypatch
):
    import jira_mail_sync.sweep_tasks as sweep_tasks

    monkeypatch.setattr(sweep_tasks, "MAX_KEYS_PER_SWEEP", 3)
    jira, store = sweep_env
    day = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    first = run_dag(sweep_dag, logical_date=day + timedelta(minutes=15))  # 10:00-10:15, empty
    assert first.state == "success", first.states
    assert first.xcom("record_sweep_progress") == (day + timedelta(minutes=15)).isoformat()
    # An outage: 8 tickets change between 10:15 and 12:00, more than one run may take.
    gap_updates = [day + timedelta(minutes=m) for m in (20, 25, 31, 47, 58, 75, 90, 110)]
    for n, updated in enumerate(gap_updates, start=1):
        jira.add_issue(f"GAP-{n}", summary="during the outage", updated=updated)

    reached = []
    for run in range(1, 6):
        result = run_dag(load_dag("jira_sweep"), logical_date=day + timedelta(minutes=120 + 15 * run))
        assert result.state == "success", result.states
        reached.append(result.xcom("record_sweep_progress"))
        if len(rows(store)) == len(gap_updates):
            break

    assert set(rows(store)) == {f"GAP-{n}" for n in range(1, len(gap_updates) + 1)}
    # Each run takes the oldest part of its window holding at most 3 changed tickets (searched from
    # 5 minutes before, the lookback), to the minute: 10:20, 10:25, 10:31 (up to 10:47); 10:47,
    # 10:58, 11:15 (up to 11:30); then 11:30 and 11:50 fit with the rest of the third run's window.
    assert reached == [
        (day + timedelta(minutes=47)).isoformat(),
        (day + timedelta(minutes=90)).isoformat(),
        (day + timedelta(minutes=165)).isoformat(),
    ]


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_a_manual_window_never_moves_the_watermark(sweep_env, sweep_dag):
    jira, store = sweep_env
    day = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    first = run_dag(sweep_dag, logical_date=day + timedelta(minutes=15))
    assert first.xcom("record_sweep_progress") == (day + timedelta(minutes=15)).isoformat()
    later = manual(day + timedelta(hours=5), day + timedelta(hours=6))
    result = run_dag(load_dag("jira_sweep"), conf=later)
    assert result.state == "success", result.states
    assert result.xcom("record_sweep_progress") == (day + timedelta(minutes=15)).isoformat()


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_a_key_jira_keeps_failing_on_stores_the_rest_but_fails_the_sweep_and_holds_the_watermark(
    sweep_env, sweep_dag, jira_flavor
):
    jira, store = sweep_env
    day = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    first = run_dag(sweep_dag, logical_date=day + timedelta(minutes=15))
    assert first.state == "success", first.states
    for n in range(1, 11):
        jira.add_issue(f"OPS-{n}", summary=f"ticket {n}", updated=day + timedelta(minutes=20))
    jira.inject_key_fault("OPS-4", "server_error")

    poisoned = run_dag(load_dag("jira_sweep"), logical_date=day + timedelta(minutes=30))

    # The batch is split: the nine others are stored; the run fails and the watermark stays behind OPS-4.
    assert poisoned.state == "failed", poisoned.states
    assert poisoned.states["store_tickets"] == ["failed"]
    assert poisoned.states["record_sweep_progress"] == ["upstream_failed"]
    assert set(rows(store)) == {f"OPS-{n}" for n in range(1, 11)} - {"OPS-4"}
    jira.clear_faults()
    recovered = run_dag(load_dag("jira_sweep"), logical_date=day + timedelta(minutes=45))
    assert recovered.state == "success", recovered.states
    assert "OPS-4" in rows(store)
    assert recovered.xcom("record_sweep_progress") == (day + timedelta(minutes=45)).isoformat()


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("zone", "start"),
    [
        # Sydney leaves DST at 03:00 local on 5 April 2026 (16:00Z on the 4th): 02:00-03:00 twice.
        ("Australia/Sydney", datetime(2026, 4, 4, 15, 30, tzinfo=UTC)),
        # New York enters DST at 02:00 local on 8 March 2026 (07:00Z): 02:00-03:00 never happens.
        ("America/New_York", datetime(2026, 3, 8, 6, 30, tzinfo=UTC)),
    ],
)
def test_a_window_across_a_dst_change_stores_exactly_its_tickets(
    sweep_env, sweep_dag, jira_flavor, zone, start
):
    jira, store = sweep_env
    jira.set_time_zone(zone)
    end = start + timedelta(hours=1)
    for minute in range(-20, 80, 5):
        jira.add_issue(
            f"DST-{minute + 21}", summary="t", updated=start + timedelta(minutes=minute, seconds=30)
        )
    inside = {f"DST-{m + 21}" for m in range(-20, 80, 5) if 0 <= m < 60}

    result = run_dag(sweep_dag, conf=manual(start, end, lookback_minutes=0))

    assert result.state == "success", result.states
    stored = set(rows(store))
    assert inside <= stored
    # Sydney's fold widens the upper bound by up to the hour of the fold (a zone-less literal cannot
    # name its second pass); New York's gap widens nothing.
    limit = end + (timedelta(hours=1) if zone == "Australia/Sydney" else timedelta(0))
    assert all(start <= start + timedelta(minutes=int(k.split("-")[1]) - 21) < limit for k in stored)


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_data_center_sweep_misses_nothing_while_tickets_change_between_pages(
    jira_dc_standin, sweep_env, sweep_dag
):
    """Data Center pages by a moving bound on `updated` (include/jira_datacenter.py): tickets edited
    between pages move to the end of the order and are listed once, and none is skipped."""
    jira, store = sweep_env
    jira.dc.search_max = 10  # jira.search.views.default.max set low by the admin: several pages
    keys = [f"ABC-{n}" for n in range(1, 36)]
    for index, key in enumerate(keys):
        jira.add_issue(key, summary="before", updated=HOUR_START + timedelta(seconds=10 * index))
    listing: list[int] = []

    def edit(page: int, jql: str) -> None:
        if "key in" in jql or page > 3:
            return  # the fetch's searches, and later pages, are left alone
        listing.append(page)
        for key in (keys[page - 1], keys[page * 10 + 1]):  # one seen, one not yet seen
            jira.update_issue(key, summary="edited", updated=HOUR_START + timedelta(minutes=14, seconds=page))

    jira.between_pages = edit
    result = run_dag(sweep_dag, conf=manual(HOUR_START, HOUR_START + timedelta(minutes=15)))

    assert result.state == "success", result.states
    stored = rows(store)
    assert set(stored) == set(keys) and listing == [1, 2, 3]
    assert sum(1 for row in stored.values() if row[0] == "edited") == 6
