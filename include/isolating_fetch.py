"""A batch of keys fetched so that a key Jira keeps failing on costs O(log n) requests, not its batch.

A bulk fetch fails as a whole for one bad key: Jira answers 500 whenever the key is in the request,
lists it in `issueErrors` (the client then fails the call, see JiraCloudClient.bulk_fetch), refuses
the request with a 4xx, or returns a ticket the store would refuse. Failing the whole batch would
keep every mail in it unseen forever, so a batch that fails is split in halves, recursively, until
the failing keys stand alone; the others are fetched and returned as usual.

What is split and what is not:
- Whatever makes the whole request fail (a 5xx or 429 past the client's retries, a 4xx, an answer
  that cannot be read) is first checked with one GET /myself: does Jira answer this account at all?
  If it does not (an outage, a rate limit on the account, a revoked token), splitting would only
  multiply failing requests, so the error is raised, nothing is blamed on any key, and Airflow
  retries the task. If it does, the batch is split at once, on the first try: waiting for Airflow's
  retries (30 s, then 60 s) would only hold back the good keys, and a passing hiccup costs just the
  two halves, which then succeed.
- A ticket that comes back but fails the store's validation fails only its own key, with no split.
- Split requests are not retried, but for a single key's (one retry): the batch has already used
  its retries, Jira answering /myself shows the failures are the keys', and a half that fails is
  split again anyway, so a passing error costs requests, never a key.
- Splitting stops after a budget of requests (growing with log2 of the batch size), so even a batch
  of all-bad keys stays bounded. Keys not reached by then are reported `unresolved`, not failed:
  nothing is known against them, and the next run fetches them again.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from include.jira_cloud import JiraCloudClient, JiraError, ticket_details
from include.jira_rules import normalise_key
from include.ticket_fields import TICKET_FIELDS

log = logging.getLogger(__name__)

SINGLE_KEY_RETRIES = 1
# Bisection finds one bad key among n in about 2*log2(n) requests; this allows about four of them.
BUDGET_PER_LOG2 = 8


def split_budget(size: int) -> int:
    """How many split requests a batch of `size` keys may cost at most."""
    return BUDGET_PER_LOG2 * (math.ceil(math.log2(max(size, 2))) + 1)


@contextmanager
def _retries(client: JiraCloudClient, retries: int) -> Iterator[None]:
    # The client's retry count is plain configuration; it is lowered for the split requests only.
    saved = client.max_retries
    client.max_retries = min(saved, retries)
    try:
        yield
    finally:
        client.max_retries = saved


def error_text(exc: BaseException) -> str:
    """How a key's failure is reported (and kept in the mail ledger): the error's type and message."""
    return f"{type(exc).__name__}: {exc}"


class _Isolation:
    def __init__(
        self,
        client: JiraCloudClient,
        validate: Callable[[Mapping[str, Any]], None],
        budget: int,
        fields: Sequence[str],
        extra_fields: Sequence[str],
        per_request: int | None,
    ):
        self.client = client
        self.fields = fields
        self.extra_fields = extra_fields
        self.per_request = per_request
        self.validate = validate
        self.budget = budget
        self.requests = 0  # bulk fetch calls, each one request plus its retries
        self.tickets: list[dict[str, Any]] = []
        self.not_found: list[str] = []
        self.failed: dict[str, str] = {}
        self.unresolved: list[str] = []

    def fetch(self, keys: Sequence[str]) -> None:
        """One bulk request for `keys`; raises JiraError if the request fails as a whole."""
        self.requests += 1
        result = self.client.bulk_fetch(list(keys), self.fields, per_request=self.per_request)
        tickets: list[dict[str, Any]] = []
        failed: dict[str, str] = {}
        for issue in result.issues:
            key = str(issue.get("key") or "").upper()
            if not key:
                raise JiraError("Jira returned an issue without a key")
            try:
                ticket = ticket_details(issue, self.extra_fields)
                self.validate(ticket)
            except (KeyError, TypeError, ValueError) as exc:
                failed[key] = f"Jira's answer failed validation: {exc}"
                continue
            tickets.append(ticket)
        # Kept only once the whole answer was read, so a batch split after a bad answer has no duplicates.
        self.tickets.extend(tickets)
        self.failed.update(failed)
        self.not_found.extend(result.not_found)

    def split(self, keys: Sequence[str], error: JiraError) -> None:
        """`keys` failed together with `error`: fetch each half, splitting again whatever fails.

        Breadth first, so that a good half is fetched before the budget goes into the depths of a
        bad one. A group's request is sent once (its halves are its retry); a single key's gets
        SINGLE_KEY_RETRIES, so no key is blamed on one passing error.
        """
        queue: deque[tuple[Sequence[str], JiraError]] = deque([(keys, error)])
        while queue:
            group, group_error = queue.popleft()
            if len(group) == 1:
                self.failed[group[0]] = error_text(group_error)
                continue
            middle = len(group) // 2
            for half in (group[:middle], group[middle:]):
                if self.requests >= self.budget:
                    self.unresolved.extend(half)
                    continue
                try:
                    with _retries(self.client, SINGLE_KEY_RETRIES if len(half) == 1 else 0):
                        self.fetch(half)
                except JiraError as exc:
                    queue.append((half, exc))


def fetch_isolating(
    client: JiraCloudClient,
    keys: Sequence[str],
    *,
    validate: Callable[[Mapping[str, Any]], None],
    fields: Sequence[str] = TICKET_FIELDS,
    extra_fields: Sequence[str] = (),
    per_request: int | None = None,
) -> dict[str, Any]:
    """Fetch `keys` with one bulk request, isolating the keys that make it fail (see the module doc).

    `validate` raises ValueError for a ticket the store would refuse; `fields` (the extras among them)
    and `per_request` are passed to the bulk fetch. Returns {"tickets", "not_found",
    "failed": {key: error}, "unresolved": keys the split budget did not reach, "requests": HTTP
    requests sent for the batch, retries and the probe included}.
    Raises the batch's error when Jira does not answer this account at all.
    """
    wanted = list(dict.fromkeys(normalise_key(key) for key in keys))
    isolation = _Isolation(client, validate, 1 + split_budget(len(wanted)), fields, extra_fields, per_request)
    sent_before = client.request_count
    if not wanted:
        return {"tickets": [], "not_found": [], "failed": {}, "unresolved": [], "requests": 0}
    batch_error: JiraError | None = None
    try:
        isolation.fetch(wanted)
    except JiraError as exc:
        batch_error = exc
    if batch_error is not None:
        if not client.answers_this_account():
            log.warning("Jira does not answer this account; nothing is blamed on the batch's keys")
            raise batch_error from None
        log.warning(
            "A bulk fetch of %d key(s) failed as a whole (%s); splitting it to find the failing key(s)",
            len(wanted),
            batch_error,
        )
        isolation.split(wanted, batch_error)
    if isolation.unresolved:
        log.warning(
            "The split budget of %d requests ran out: %d key(s) left for the next run",
            isolation.budget,
            len(isolation.unresolved),
        )
    if isolation.failed:
        log.warning(
            "%d key(s) failed after isolation (%d bulk request(s)): %s",
            len(isolation.failed),
            isolation.requests,
            "; ".join(f"{key}: {why}" for key, why in list(isolation.failed.items())[:10]),
        )
    return {
        "tickets": isolation.tickets,
        "not_found": isolation.not_found,
        "failed": isolation.failed,
        "unresolved": isolation.unresolved,
        "requests": client.request_count - sent_before,
    }
