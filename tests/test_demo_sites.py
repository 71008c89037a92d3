"""The two-site demo's configuration (scripts/demo.py): its sites file and its generated Jira sites.

No service: the file is written and read back through include/sites.py, as dags/jira_sites.py reads it.
"""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime
from pathlib import Path

from devkit.jira_standin.demo import demo_issues
from include.sites import load_sites_file

REPO = Path(__file__).resolve().parents[1]


def _demo_module():
    spec = importlib.util.spec_from_file_location("demo_script", REPO / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_demo_sites_file_gives_two_sites_their_own_dags_connections_pools_and_stores(tmp_path):
    demo = _demo_module()
    sites = demo.write_sites_file(tmp_path / "jira_sites.yaml")
    assert [site.name for site in sites] == ["acme", "globex"]
    assert [site.sweep_dag_id() for site in sites] == ["jira_sweep__acme", "jira_sweep__globex"]
    assert [site.inbox_dag_id(site.mailboxes[0]) for site in sites] == [
        "jira_inbox__acme__inbox",
        "jira_inbox__globex__inbox",
    ]
    # The pool sizes come from the file, and each site has its own pool.
    assert [(site.pool, site.pool_slots) for site in sites] == [("jira_api_acme", 3), ("jira_api_globex", 2)]
    for field in ("jira_conn_id", "store_conn_id"):
        assert len({getattr(site, field) for site in sites}) == 2, field
    assert len({site.mailboxes[0].imap_conn_id for site in sites}) == 2
    # The first site keeps the plain connection ids, which the status page and the REST lookup read.
    assert (sites[0].jira_conn_id, sites[0].store_conn_id, sites[0].mailboxes[0].imap_conn_id) == (
        "jira_default",
        "jira_store",
        "imap_default",
    )
    assert len({site.store_path for site in demo.DEMO_SITES}) == len(demo.DEMO_SITES)
    assert load_sites_file(tmp_path / "jira_sites.yaml") == sites


def test_the_two_demo_sites_share_a_key_with_different_tickets():
    demo = _demo_module()
    anchor = datetime(2026, 12, 8, 1, 0, tzinfo=UTC)
    generated = {
        site.name: {issue["key"]: issue for issue in demo_issues(site.issues, seed=site.seed, anchor=anchor)}
        for site in demo.DEMO_SITES
    }
    acme, globex = generated["acme"], generated["globex"]
    assert (len(acme), len(globex)) == (300, 200)
    # ABC-1 on both sites: one key, two tickets (two rows, one per site's store).
    assert acme["ABC-1"] != globex["ABC-1"]
    assert set(acme) & set(globex)
