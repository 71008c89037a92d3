"""Which Jira fields the sync fetches: the fixed ones the table has columns for, plus chosen extra fields.

Extra fields (custom fields by id above all: story points, team, due date) are configured in one
place, the `[jira_mail_sync] extra_fields` option, as a comma-separated list of field ids. They are
validated against Jira's own list (GET /rest/api/3/field) when a run plans, stored as JSON in the
`fields` column, and a multi-valued one switches bulk fetches from 1000 issues to 100.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from include.jira_rules import (
    BULK_FETCH_LARGE_MAX_FIELDS,
    MULTI_VALUED_SYSTEM_FIELDS,
    bulk_fetch_limit,
)

# The fields behind the table's own columns (key and id always come with an issue).
TICKET_FIELDS = ("summary", "status", "assignee", "progress", "updated")
# Room left for extra fields so that a request still names at most 100 fields explicitly.
MAX_EXTRA_FIELDS = BULK_FETCH_LARGE_MAX_FIELDS - len(TICKET_FIELDS)
# A field id as Jira writes them: customfield_10016, duedate, timeestimate, ...
_FIELD_ID = re.compile(r"customfield_[1-9][0-9]{0,9}|[a-z][A-Za-z0-9]{1,49}")
# Field schema types that hold several values: arrays (multi-selects, labels, versions, ...) and
# the comment page.
_MULTI_VALUED_TYPES = frozenset({"array", "comments-page"})


def split_field_ids(
    text: str | None, option: str, pattern: re.Pattern[str], example: str, hint: str = ""
) -> list[str]:
    """A comma- or space-separated list of Jira field ids from a setting, in order, de-duplicated.

    `option` names the setting in the ValueError; `pattern` is what a field id may look like there.
    Shared by extra_fields and history_fields, which differ only in the ids they accept.
    """
    if text is None or not str(text).strip():
        return []
    ids: list[str] = []
    for raw in re.split(r"[,\s]+", str(text).strip()):
        if not raw:
            continue
        if not pattern.fullmatch(raw):
            raise ValueError(f"{option}: {raw!r} is not a Jira field id (like {example}){hint}")
        if raw not in ids:
            ids.append(raw)
    return ids


def parse_extra_fields(text: str | None) -> tuple[str, ...]:
    """The configured extra field ids, in order and de-duplicated; ValueError names what is wrong."""
    hint = "; give ids, not names, comma-separated"
    ids = split_field_ids(text, "extra_fields", _FIELD_ID, "customfield_10016 or duedate", hint)
    for field_id in ids:
        if field_id in TICKET_FIELDS:
            raise ValueError(f"extra_fields: {field_id!r} is fetched already (it has its own column)")
    if len(ids) > MAX_EXTRA_FIELDS:
        raise ValueError(f"extra_fields: {len(ids)} fields given, at most {MAX_EXTRA_FIELDS} are allowed")
    return tuple(ids)


def is_multi_valued(field: Mapping[str, Any]) -> bool:
    """True for a field of /rest/api/3/field that holds several values."""
    schema = field.get("schema") or {}
    return field.get("id") in MULTI_VALUED_SYSTEM_FIELDS or schema.get("type") in _MULTI_VALUED_TYPES


@dataclass(frozen=True)
class FieldPlan:
    """The fields one run fetches, and how many issues one bulk request may carry with them."""

    extra: tuple[str, ...] = ()
    multi_valued: tuple[str, ...] = ()

    @property
    def fields(self) -> tuple[str, ...]:
        return (*TICKET_FIELDS, *self.extra)

    @property
    def bulk_size(self) -> int:
        return bulk_fetch_limit(self.fields, multi_valued=self.multi_valued)

    def to_xcom(self) -> dict[str, Any]:
        return {"extra": list(self.extra), "multi_valued": list(self.multi_valued)}

    @classmethod
    def from_xcom(cls, value: Mapping[str, Any] | None) -> FieldPlan:
        value = value or {}
        return cls(tuple(value.get("extra") or ()), tuple(value.get("multi_valued") or ()))


def plan_fields(extra: Sequence[str], catalogue: Iterable[Mapping[str, Any]] | None) -> FieldPlan:
    """Check the extra fields against Jira's field list; unknown ones raise ValueError with a hint.

    `catalogue` is the answer of GET /rest/api/3/field (needed only when there are extra fields).
    """
    if not extra:
        return FieldPlan()
    if catalogue is None:
        raise ValueError("extra fields need Jira's field list to be checked")
    known = {str(field.get("id")): field for field in catalogue if isinstance(field, Mapping)}
    by_name = {str(field.get("name", "")).casefold(): field_id for field_id, field in known.items()}
    unknown = [field_id for field_id in extra if field_id not in known]
    if unknown:
        hints = [
            f"{field_id} (did you mean {by_name[field_id.casefold()]}?)"
            if field_id.casefold() in by_name
            else field_id
            for field_id in unknown
        ]
        raise ValueError(
            f"extra_fields: Jira has no field {', '.join(hints)}, or this account cannot see it "
            "(GET /rest/api/3/field lists the ids)"
        )
    multi = tuple(field_id for field_id in extra if is_multi_valued(known[field_id]))
    return FieldPlan(tuple(extra), multi)


def extra_values(issue: Mapping[str, Any], extra: Sequence[str]) -> dict[str, Any] | None:
    """The raw values of the extra fields in one issue (a missing field is null); None without extras."""
    if not extra:
        return None
    fields = issue.get("fields") or {}
    return {field_id: fields.get(field_id) for field_id in extra}
