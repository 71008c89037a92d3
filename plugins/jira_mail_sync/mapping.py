"""Key lists as mapped fetch instances: one bulk request each, under max_map_length, and their UI labels."""

from __future__ import annotations

from collections.abc import Sequence

from include.jira_rules import BULK_FETCH_LIMIT_ANY_FIELDS, BULK_FETCH_LIMIT_PLAIN_FIELDS

# Airflow's default [core] max_map_length; batches are sized so that a run never comes near it.
MAX_MAP_LENGTH = 1024
MAX_MAPPED_FETCHES = 500


def batch_keys(
    keys: Sequence[str],
    *,
    per_request: int = BULK_FETCH_LIMIT_ANY_FIELDS,
    max_batches: int = MAX_MAPPED_FETCHES,
) -> list[list[str]]:
    """Split keys into batches for mapped fetch instances: `per_request` keys each (one bulk request:
    1000, or 100 when the fields do not allow more), growing in steps of that only when it would need
    more than `max_batches` instances, so the mapping stays far below max_map_length however many keys
    a sweep finds."""
    if max_batches < 1 or max_batches > MAX_MAP_LENGTH:
        raise ValueError(f"max_batches must be in 1..{MAX_MAP_LENGTH}, got {max_batches}")
    if not BULK_FETCH_LIMIT_ANY_FIELDS <= per_request <= BULK_FETCH_LIMIT_PLAIN_FIELDS:
        raise ValueError(
            f"per_request must be in {BULK_FETCH_LIMIT_ANY_FIELDS}..{BULK_FETCH_LIMIT_PLAIN_FIELDS}, "
            f"got {per_request}"
        )
    unique = list(dict.fromkeys(keys))
    if not unique:
        return []
    per_batch = per_request
    while -(-len(unique) // per_batch) > max_batches:
        per_batch += per_request
    return [unique[i : i + per_batch] for i in range(0, len(unique), per_batch)]


def describe_batch(keys: Sequence[str]) -> str:
    """The label a mapped fetch instance shows in the UI instead of its index."""
    if not keys:
        return "no keys"
    if len(keys) <= 3:
        return ", ".join(keys)
    return f"{keys[0]} … {keys[-1]} ({len(keys)} keys)"
