"""A deterministic demo Jira site for the stand-in: a few projects and a realistic mix of ticket states."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from .server import JiraStandin

DEMO_PROJECTS = (("ABC", "Alphabet Platform"), ("OPS", "Operations"), ("WEB", "Website"))
DEMO_PEOPLE = ("ann@example.com", "bob.stone@example.com", "chen.li@example.com", "dana@example.com")
HIDDEN_PERSON = "private.person@example.com"
DEMO_STATUSES = ("To Do", "In Progress", "In Review", "Done")
_VERBS = ("Fix", "Add", "Remove", "Speed up", "Document", "Refactor", "Review", "Migrate")
_THINGS = (
    "login page",
    "invoice export",
    "nightly backup",
    "search index",
    "TLS certificates",
    "onboarding mail",
    "rate limiter",
    "audit log",
    "billing webhook",
    "status page",
)
_ESTIMATES = (3600, 7200, 14400, 28800, 57600)
# Each issue takes the assignee kind at its index modulo this cycle, so even a handful of demo issues
# shows every case the sync must handle: assigned, unassigned and an assignee whose e-mail is hidden.
_ASSIGNEE_CYCLE = ("person", "person", "unassigned", "person", "hidden", "person")


def demo_issues(count: int, *, seed: int, anchor: datetime) -> list[dict[str, Any]]:
    """`count` add_issue() keyword sets, the same for the same seed and anchor (an aware datetime).

    Issues are updated within the 14 days before `anchor`; every third has no time tracking (total 0).
    """
    if count < 0:
        raise ValueError("count cannot be negative")
    if anchor.tzinfo is None:
        raise ValueError("anchor must be timezone-aware")
    rng = random.Random(seed)
    numbers = {key: 0 for key, _ in DEMO_PROJECTS}
    issues: list[dict[str, Any]] = []
    for index in range(count):
        project_key, project_name = DEMO_PROJECTS[rng.randrange(len(DEMO_PROJECTS))]
        numbers[project_key] += 1
        kind = _ASSIGNEE_CYCLE[index % len(_ASSIGNEE_CYCLE)]
        total = 0 if index % 3 == 2 else rng.choice(_ESTIMATES)
        updated = anchor - timedelta(seconds=rng.randrange(14 * 24 * 3600), milliseconds=rng.randrange(1000))
        issues.append(
            {
                "key": f"{project_key}-{numbers[project_key]}",
                "project_name": project_name,
                "summary": f"{rng.choice(_VERBS)} {rng.choice(_THINGS)}",
                "status": rng.choice(DEMO_STATUSES),
                "assignee_email": None
                if kind == "unassigned"
                else HIDDEN_PERSON
                if kind == "hidden"
                else rng.choice(DEMO_PEOPLE),
                "assignee_hidden_email": kind == "hidden",
                "progress": (rng.randrange(0, total + 1, 900) if total else 0, total),
                "updated": updated,
                "created": updated - timedelta(days=rng.randrange(0, 60)),
            }
        )
    return issues


def load_demo_site(standin: JiraStandin, count: int, *, seed: int, anchor: datetime) -> int:
    """Fill the stand-in with the demo issues; returns how many it added."""
    for project_key, project_name in DEMO_PROJECTS:
        standin.add_project(project_key, project_name)
    issues = demo_issues(count, seed=seed, anchor=anchor)
    for issue in issues:
        key = issue.pop("key")
        standin.add_issue(key, **issue)
    return len(issues)
