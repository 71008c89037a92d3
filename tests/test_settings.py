"""The [jira_mail_sync] settings: one parser; a bad value is the DAG files' import error (README agrees)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jira_mail_sync.settings import OPTIONS, SettingError, Settings, env_variable, parse_option, read_settings

REPO = Path(__file__).resolve().parents[1]
OPTION = {option.name: option for option in OPTIONS}


def _settings_from(values: dict[str, str]) -> Settings:
    return read_settings(lambda _section, name, fallback=None: values.get(name, fallback))


def test_every_option_has_one_field_of_the_same_name():
    assert [field.name for field in fields(Settings)] == list(OPTION)


def test_unset_options_take_their_documented_defaults():
    assert _settings_from({}) == Settings(
        inbox_mode="idle",
        extra_fields=(),
        store_max_age_seconds=300,
        rest_max_concurrent_lookups=4,
        rest_store_connect_timeout_seconds=5,
        rest_not_found_cache_seconds=60,
        rest_projects=None,
        census_projects=None,
        ledger_retention_days=30,
        status_mailbox_cache_seconds=30.0,
        history_fields=(
            "status",
            "assignee",
            "priority",
            "resolution",
            "sprint",
            "fixVersions",
            "labels",
            "issuetype",
            "project",
            "summary",
        ),
        sites_file=None,
    )


def test_values_are_parsed_with_blanks_and_case_forgiven():
    parsed = _settings_from(
        {
            "inbox_mode": " POLL ",
            "extra_fields": "customfield_10016, duedate",
            "store_max_age_seconds": " 0 ",
            "rest_projects": "abc, OPS ,",
            "status_mailbox_cache_seconds": "2.5",
        }
    )
    assert parsed.inbox_mode == "poll"
    assert parsed.extra_fields == ("customfield_10016", "duedate")
    assert parsed.store_max_age_seconds == 0
    assert parsed.rest_projects == frozenset({"ABC", "OPS"})
    assert parsed.status_mailbox_cache_seconds == 2.5


@pytest.mark.parametrize(
    ("name", "raw", "allowed"),
    [
        ("inbox_mode", "push", "one of idle, poll"),
        ("store_max_age_seconds", "-1", "a whole number >= 0"),
        ("store_max_age_seconds", "5m", "a whole number >= 0"),
        ("rest_max_concurrent_lookups", "0", "a whole number >= 1"),
        ("rest_store_connect_timeout_seconds", "1.5", "a whole number >= 1"),
        ("rest_not_found_cache_seconds", "", "a whole number >= 0"),
        ("rest_projects", "ABC, not a key", "Jira project keys, comma-separated (empty: every project)"),
        (
            "census_projects",
            "ABC, x",
            "Jira project keys, comma-separated (empty: the projects of the stored tickets)",
        ),
        ("status_mailbox_cache_seconds", "nan", "a number of seconds >= 0"),
        ("status_mailbox_cache_seconds", "-0.5", "a number of seconds >= 0"),
    ],
)
def test_a_bad_value_is_refused_naming_the_option_its_variable_and_what_it_allows(name, raw, allowed):
    with pytest.raises(SettingError) as raised:
        _settings_from({name: raw})
    expected = f"[jira_mail_sync] {name} ({env_variable(name)}) must be {allowed}, got {raw!r}"
    assert str(raised.value) == expected


def test_a_bad_extra_field_says_which_field_id_is_wrong():
    with pytest.raises(SettingError) as raised:
        _settings_from({"extra_fields": "Story Points"})
    message = str(raised.value)
    assert message.startswith("[jira_mail_sync] extra_fields (AIRFLOW__JIRA_MAIL_SYNC__EXTRA_FIELDS) must be")
    assert "'Story' is not a Jira field id" in message


@settings(derandomize=True, max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(list(OPTION)), raw=st.text(max_size=60))
def test_any_text_is_either_a_value_or_a_setting_error(name, raw):
    try:
        parse_option(OPTION[name], raw)
    except SettingError as exc:
        assert str(exc).startswith(f"[jira_mail_sync] {name} ({env_variable(name)}) must be ")


def _readme_settings_table() -> list[list[str]]:
    """The rows of the README's settings table: the table right after the "### Settings" heading."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n### Settings\n", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    table = section[section.index(rows[0]) :].split("\n\n", 1)[0].splitlines()
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]


def test_the_readme_settings_table_is_the_settings_module():
    def readme_default(option):
        return f"`{option.default}`" if option.default else "(empty)"

    expected = [[f"`{o.name}`", readme_default(o), o.allowed, o.meaning] for o in OPTIONS]
    assert _readme_settings_table() == expected


@pytest.mark.airflow
@pytest.mark.parametrize(
    ("name", "raw"), [("store_max_age_seconds", "soon"), ("extra_fields", "Story Points")]
)
def test_a_bad_setting_is_an_import_error_of_every_syncing_dag_file(monkeypatch, name, raw):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv(env_variable(name), raw)
    bag = DagBag(dag_folder=str(REPO / "dags"))

    errors = {Path(path).name: error for path, error in bag.import_errors.items()}
    assert set(errors) == {"jira_census.py", "jira_inbox.py", "jira_sweep.py", "jira_sites.py"}
    for error in errors.values():
        assert f"SettingError: [jira_mail_sync] {name} ({env_variable(name)}) must be" in error
    assert not {"jira_census", "jira_inbox", "jira_sweep"} & set(bag.dags)


@pytest.mark.airflow
def test_good_settings_import_both_dag_files(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv(env_variable("inbox_mode"), "poll")
    monkeypatch.setenv(env_variable("rest_projects"), "ABC")
    bag = DagBag(dag_folder=str(REPO / "dags"))

    assert bag.import_errors == {}
    assert bag.dags["jira_inbox"].timetable.expression == "* * * * *"


def _import_plugin_with(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Import the plugin module in a fresh interpreter, as the api-server's plugin manager does."""
    probe = (
        "import jira_mail_sync_plugin as p; "
        "print(len(p.JiraMailSyncPlugin.fastapi_apps), len(p.JiraMailSyncPlugin.external_views))"
    )
    return subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'plugins'}", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@pytest.mark.service
def test_the_api_server_mounts_neither_app_nor_page_over_a_bad_setting_and_logs_why():
    bad = _import_plugin_with({env_variable("rest_max_concurrent_lookups"): "many"})
    # Airflow's logging writes to stdout too: the probe's answer is the last line.
    assert bad.stdout.splitlines()[-1].split() == ["0", "0"]
    assert (
        "not serving the ticket lookup or the Jira sync page: [jira_mail_sync] rest_max_concurrent_lookups "
        "(AIRFLOW__JIRA_MAIL_SYNC__REST_MAX_CONCURRENT_LOOKUPS) must be a whole number >= 1, got 'many'"
    ) in bad.stdout + bad.stderr

    good = _import_plugin_with({env_variable("rest_max_concurrent_lookups"): "2"})
    assert good.stdout.splitlines()[-1].split() == ["1", "1"]
