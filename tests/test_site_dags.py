"""DAG integrity with a sites file of 0, 1 and 3 entries: ids, docs, tags, pools, connections and assets."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PLAIN = {"jira_census", "jira_inbox", "jira_sweep", "jira_ticket_changes_example"}
HISTORY_TASKS = {"plan_ticket_history", "fetch_history"}
JIRA_TASKS = {
    "inbox": {"extract_ticket_keys", "fetch_tickets", *HISTORY_TASKS},
    "sweep": {"plan_sweep", "list_changed_keys", "fetch_tickets", *HISTORY_TASKS},
    "census": {"take_census", *HISTORY_TASKS},
}


def _site(name: str, *mailboxes: dict, **extra) -> dict:
    return {
        "name": name,
        "jira_conn_id": f"jira_{name}",
        "store_conn_id": extra.pop("store_conn_id", "jira_store"),
        "mailboxes": list(mailboxes) or [{"imap_conn_id": f"imap_{name}"}],
        **extra,
    }


THREE = [
    _site(
        "acme",
        {"imap_conn_id": "imap_acme", "trusted_senders": ["jira@acme.atlassian.net"]},
        {"imap_conn_id": "imap_acme", "mailbox": "Service Desk", "inbox_mode": "poll"},
        pool_slots=2,
        schedule="*/5 * * * *",
        lookback_minutes=10,
        projects=["ABC"],
    ),
    _site("globex", store_conn_id="globex_store", pool="globex_budget"),
    _site(
        "initech",
        {"imap_conn_id": "imap_initech", "rejected_mailbox": "Junk/Jira"},
        store_conn_id="initech_store",
    ),
]


def _bag(monkeypatch, tmp_path, sites: list[dict] | None, *, parsing_dag_id: str | None = None):
    from airflow.dag_processing.dagbag import DagBag

    if sites is None:  # no setting, and the DAGs folder holds no jira_sites.yaml
        monkeypatch.delenv("AIRFLOW__JIRA_MAIL_SYNC__SITES_FILE", raising=False)
        assert not (REPO / "dags" / "jira_sites.yaml").exists()
    else:
        path = tmp_path / "jira_sites.yaml"
        path.write_text(yaml.safe_dump({"sites": sites}))
        monkeypatch.setenv("AIRFLOW__JIRA_MAIL_SYNC__SITES_FILE", str(path))
    if parsing_dag_id:
        monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", parsing_dag_id)
    else:
        monkeypatch.delenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", raising=False)
    return DagBag(dag_folder=str(REPO / "dags"))


def _edges(dag) -> set[tuple[str, str]]:
    return {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}


@pytest.mark.airflow
def test_zero_entries_no_file_keeps_todays_dags_connections_and_pool(monkeypatch, tmp_path):
    bag = _bag(monkeypatch, tmp_path, None)
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == PLAIN
    sweep = bag.dags["jira_sweep"]
    assert sweep.get_task("plan_sweep").op_kwargs == {
        "jira_conn_id": "jira_default",
        "store_conn_id": "jira_store",
        "site": "default",
    }
    assert {t.pool for t in sweep.tasks if t.task_id in JIRA_TASKS["sweep"]} == {"jira_api"}
    sensor = bag.dags["jira_inbox"].get_task("wait_for_unseen_mail")
    assert (sensor.imap_conn_id, sensor.store_conn_id) == ("imap_default", "jira_store")
    assert not any(tag.startswith("site:") for dag in bag.dags.values() for tag in dag.tags)


@pytest.mark.airflow
def test_one_entry_replaces_the_plain_pair_with_its_own(monkeypatch, tmp_path):
    bag = _bag(monkeypatch, tmp_path, [_site("acme")])
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {
        "jira_sweep__acme",
        "jira_inbox__acme__inbox",
        "jira_census__acme",
        "jira_ticket_changes_example",
    }
    for dag in (bag.dags["jira_sweep__acme"], bag.dags["jira_inbox__acme__inbox"]):
        assert Path(dag.fileloc).name == "jira_sites.py"  # the task runner parses this file
        assert "site:acme" in dag.tags and "jira" in dag.tags
        assert dag.doc_md.strip().startswith("### Jira")
        assert "**Site `acme`**" in dag.doc_md


@pytest.mark.airflow
def test_three_entries_give_every_site_and_mailbox_its_dag_wired_to_its_own_names(monkeypatch, tmp_path):
    from airflow.sdk import AssetOrTimeSchedule, CronDataIntervalTimetable
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    from tests.test_dag_integrity import EXPECTED_EDGES, EXPECTED_PARAMS

    bag = _bag(monkeypatch, tmp_path, THREE)
    assert bag.import_errors == {}
    inboxes = {
        "jira_inbox__acme__inbox": ("acme", "imap_acme", "INBOX"),
        "jira_inbox__acme__service-desk": ("acme", "imap_acme", "Service Desk"),
        "jira_inbox__globex__inbox": ("globex", "imap_globex", "INBOX"),
        "jira_inbox__initech__inbox": ("initech", "imap_initech", "INBOX"),
    }
    sweeps = {"jira_sweep__acme": "acme", "jira_sweep__globex": "globex", "jira_sweep__initech": "initech"}
    censuses = {f"jira_census__{site}": site for site in sweeps.values()}
    assert set(bag.dag_ids) == {*inboxes, *sweeps, *censuses, "jira_ticket_changes_example"}
    pools = {"acme": "jira_api_acme", "globex": "globex_budget", "initech": "jira_api_initech"}
    stores = {"acme": "jira_store", "globex": "globex_store", "initech": "initech_store"}

    for dag_id, (site, imap_conn_id, folder) in inboxes.items():
        dag = bag.dags[dag_id]
        assert _edges(dag) == EXPECTED_EDGES["jira_inbox"]
        assert set(dag.params.keys()) == EXPECTED_PARAMS["jira_inbox"]
        assert dag.params["mailbox"] == folder
        assert f"site:{site}" in dag.tags
        assert f"mailbox `{folder}` on `{imap_conn_id}`" in dag.doc_md
        sensor = dag.get_task("wait_for_unseen_mail")
        assert (sensor.imap_conn_id, sensor.store_conn_id) == (imap_conn_id, stores[site])
        # The mail ledger rows of this mailbox are its site's (#23: keyed by site and mailbox).
        assert sensor.site == site
        assert dag.get_task("extract_ticket_keys").op_kwargs["jira_conn_id"] == f"jira_{site}"
        assert dag.get_task("extract_ticket_keys").op_kwargs["site"] == site
        fetch = dag.get_task("fetch_tickets")
        assert isinstance(fetch, MappedOperator)
        assert fetch.partial_kwargs["op_kwargs"] == {
            "jira_conn_id": f"jira_{site}",
            "store_conn_id": stores[site],
        }
        assert dag.get_task("store_tickets").op_kwargs == {
            "source": "inbox",
            "fail_on_failed_keys": False,
            "store_conn_id": stores[site],
            "site": site,
        }
        assert dag.get_task("mark_mail_seen").op_kwargs == {"store_conn_id": stores[site], "site": site}
        assert {t.task_id: t.pool for t in dag.tasks} == {
            t.task_id: pools[site] if t.task_id in JIRA_TASKS["inbox"] else "default_pool" for t in dag.tasks
        }
        for task in dag.tasks:
            assert task.retries >= 2

    acme, service_desk = bag.dags["jira_inbox__acme__inbox"], bag.dags["jira_inbox__acme__service-desk"]
    assert acme.params["trusted_senders"] == ["jira@acme.atlassian.net"]
    assert service_desk.timetable.expression == "* * * * *"  # its own inbox_mode: poll
    assert isinstance(acme.timetable, AssetOrTimeSchedule)
    asset = acme.timetable.asset_condition
    assert (asset.name, asset.uri) == ("jira_unseen_mail__acme__inbox", "imap://imap_acme/INBOX")
    globex = bag.dags["jira_inbox__globex__inbox"].timetable.asset_condition
    [watcher] = globex.watchers
    assert watcher.name == "imap_idle_imap_globex__globex__inbox"
    assert watcher.trigger.serialize()[1]["store_conn_id"] == "globex_store"
    assert watcher.trigger.serialize()[1]["site"] == "globex"  # the watch state names its site
    initech = bag.dags["jira_inbox__initech__inbox"]
    assert initech.get_task("extract_ticket_keys").op_kwargs["rejected_mailbox"] == "Junk/Jira"
    assert "`Junk/Jira`" in initech.doc_md

    for dag_id, site in sweeps.items():
        dag = bag.dags[dag_id]
        assert _edges(dag) == EXPECTED_EDGES["jira_sweep"]
        assert isinstance(dag.timetable, CronDataIntervalTimetable)
        assert dag.get_task("plan_sweep").op_kwargs == {
            "jira_conn_id": f"jira_{site}",
            "store_conn_id": stores[site],
            "site": site,
        }
        assert dag.get_task("list_changed_keys").op_kwargs == {
            "jira_conn_id": f"jira_{site}",
            "store_conn_id": stores[site],
        }
        assert dag.get_task("record_sweep_progress").op_kwargs == {
            "store_conn_id": stores[site],
            "site": site,
        }
        assert {t.task_id: t.pool for t in dag.tasks} == {
            t.task_id: pools[site] if t.task_id in JIRA_TASKS["sweep"] else "default_pool" for t in dag.tasks
        }
        [outlet] = dag.get_task("store_tickets").outlets
        assert outlet.uri == f"jira-mail-sync://{stores[site]}/jira_ticket"
    assert bag.dags["jira_sweep__acme"].timetable.expression == "*/5 * * * *"
    assert bag.dags["jira_sweep__acme"].params["lookback_minutes"] == 10
    assert bag.dags["jira_sweep__acme"].params["projects"] == ["ABC"]
    assert (
        bag.dags["jira_sweep__globex"].get_task("store_tickets").outlets[0].name
        == "jira_ticket__globex_store"
    )
    assert bag.dags["jira_sweep__acme"].get_task("store_tickets").outlets[0].name == "jira_ticket"

    # Ticket history in every inbox and sweep, and the census, on the site's own connections and pool.
    for dag_id in (*inboxes, *sweeps, *censuses):
        site = dag_id.split("__")[1]
        plan = bag.dags[dag_id].get_task("plan_ticket_history")
        assert plan.op_kwargs == {"jira_conn_id": f"jira_{site}", "store_conn_id": stores[site], "site": site}
        assert bag.dags[dag_id].get_task("announce_history").op_kwargs == {"site": site}
        [outlet] = bag.dags[dag_id].get_task("announce_history").outlets
        assert outlet.uri == f"jira-mail-sync://{stores[site]}/jira_ticket_change"
    for dag_id, site in censuses.items():
        dag = bag.dags[dag_id]
        assert _edges(dag) == EXPECTED_EDGES["jira_census"]
        assert f"site:{site}" in dag.tags and f"**Site `{site}`**" in dag.doc_md
        assert dag.get_task("take_census").op_kwargs == {
            "jira_conn_id": f"jira_{site}",
            "store_conn_id": stores[site],
            "site": site,
        }
        assert dag.get_task("plan_census").op_kwargs["store_conn_id"] == stores[site]
        assert dag.get_task("plan_census").op_kwargs["site"] == site
        assert {t.task_id: t.pool for t in dag.tasks} == {
            t.task_id: pools[site] if t.task_id in JIRA_TASKS["census"] else "default_pool" for t in dag.tasks
        }
        [outlet] = dag.get_task("take_census").outlets
        assert outlet.uri == f"jira-mail-sync://{stores[site]}/jira_ticket"
    assert bag.dags["jira_census__acme"].get_task("plan_census").op_kwargs["site_projects"] == ["ABC"]


@pytest.mark.airflow
def test_a_task_run_builds_only_its_own_dag(monkeypatch, tmp_path):
    bag = _bag(monkeypatch, tmp_path, THREE, parsing_dag_id="jira_inbox__globex__inbox")
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {"jira_inbox__globex__inbox", "jira_ticket_changes_example"}


@pytest.mark.airflow
def test_a_bad_file_is_one_import_error_naming_the_entry_and_the_field_and_builds_no_dag(
    monkeypatch, tmp_path
):
    sites = copy.deepcopy(THREE)
    sites[2]["mailboxes"][0]["imap_conn_id"] = "has space"
    bag = _bag(monkeypatch, tmp_path, sites)
    assert {Path(path).name for path in bag.import_errors} == {"jira_sites.py"}
    [error] = bag.import_errors.values()
    assert "SitesFileError" in error
    assert "sites[2] (initech), field mailboxes[0].imap_conn_id: 'has space' does not match" in error
    assert set(bag.dag_ids) == {"jira_ticket_changes_example"}


@pytest.mark.airflow
def test_check_connections_creates_each_sites_pool_sized_by_the_file(airflow_db, tmp_path, capsys):
    from airflow.models.pool import Pool
    from jira_mail_sync.check_connections import main

    path = tmp_path / "jira_sites.yaml"
    path.write_text(yaml.safe_dump({"sites": THREE}))
    assert main(["--sites", "--sites-file", str(path), "--create-pools"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "ok   pools pool jira_api_acme: created (2 slots) for site acme" in out
    assert {
        name: Pool.get_pool(name).slots for name in ("jira_api_acme", "globex_budget", "jira_api_initech")
    } == {
        "jira_api_acme": 2,
        "globex_budget": 4,
        "jira_api_initech": 4,
    }
    # The file is where a site's pool size lives: a rerun sets it back.
    Pool.create_or_update_pool(name="jira_api_acme", slots=9, description="", include_deferred=False)
    assert main(["--sites", "--sites-file", str(path), "--create-pools"]) == 0
    assert "ok   pools pool jira_api_acme: set from 9 (2 slots) for site acme" in capsys.readouterr().out
    assert Pool.get_pool("jira_api_acme").slots == 2


@pytest.mark.airflow
def test_a_sites_file_setting_naming_a_missing_file_is_an_import_error_not_the_plain_site(
    monkeypatch, tmp_path
):
    from airflow.dag_processing.dagbag import DagBag

    missing = tmp_path / "jira_sitse.yaml"
    monkeypatch.setenv("AIRFLOW__JIRA_MAIL_SYNC__SITES_FILE", str(missing))
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert {Path(path).name for path in bag.import_errors} == {
        "jira_census.py",
        "jira_inbox.py",
        "jira_sweep.py",
        "jira_sites.py",
    }
    for error in bag.import_errors.values():
        assert f"[jira_mail_sync] sites_file names {str(missing)!r}, which does not exist" in error
    assert set(bag.dag_ids) == {"jira_ticket_changes_example"}
