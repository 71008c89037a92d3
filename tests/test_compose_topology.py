"""The compose file is valid Compose, and its services form a sound topology (dependencies, health)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.stack_files import (
    AIRFLOW_SERVICES,
    compose,
    depends_on,
    one_shot_services,
    schema_errors,
    services,
)


def test_compose_file_is_valid_against_the_compose_specification():
    errors = schema_errors(compose())
    assert not errors, "docker-compose.yaml breaks the Compose Specification:\n" + "\n".join(errors)


def _unknown_service_key(document: dict[str, Any]) -> str:
    document["services"]["redis"]["restart_policy"] = "always"
    return "redis"


def _unknown_dependency_condition(document: dict[str, Any]) -> str:
    document["services"]["airflow-scheduler"]["depends_on"]["airflow-init"]["condition"] = "service_succeeded"
    return "airflow-scheduler"


def _healthcheck_without_test_list(document: dict[str, Any]) -> str:
    document["services"]["dovecot"]["healthcheck"]["test"] = {"CMD": "true"}
    return "dovecot"


@pytest.mark.parametrize(
    "breakage", [_unknown_service_key, _unknown_dependency_condition, _healthcheck_without_test_list]
)
def test_schema_rejects_a_deliberately_broken_copy(breakage):
    broken = copy.deepcopy(compose())
    service = breakage(broken)
    errors = schema_errors(broken)
    assert errors, f"the schema accepted a broken copy ({breakage.__name__}): the validator is not live"
    assert any(error.startswith(f"services/{service}") for error in errors), errors


# ------------------------------------------------------------------------------- service wiring


def test_every_depends_on_target_is_a_defined_service():
    missing = {
        f"{name} -> {target}"
        for name, service in services().items()
        for target in depends_on(service)
        if target not in services()
    }
    assert not missing, f"depends_on names services that do not exist: {sorted(missing)}"


def test_dependency_conditions_are_ones_the_target_can_reach():
    for name, service in services().items():
        for target, condition in depends_on(service).items():
            target_service = services()[target]
            if condition == "service_healthy":
                check = target_service.get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), (
                    f"{name} waits for {target} to be healthy, but {target} has no healthcheck"
                )
            if condition == "service_completed_successfully":
                assert target_service.get("restart", "no") in ("no", "on-failure"), (
                    f"{name} waits for {target} to complete, but {target} restarts forever"
                )


def test_dependency_graph_has_no_cycle():
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in visiting, f"depends_on cycle: {' -> '.join((*path, name))}"
        if name in done:
            return
        visiting.add(name)
        for target in depends_on(services()[name]):
            visit(target, (*path, name))
        visiting.discard(name)
        done.add(name)

    for name in services():
        visit(name, ())


def test_every_long_running_service_has_a_healthcheck_and_restarts():
    one_shots = one_shot_services()
    assert one_shots == {"airflow-init"}, f"unexpected one-shot services: {one_shots}"
    for name, service in services().items():
        if name in one_shots:
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
        assert service.get("restart") == "always", f"{name} does not restart after a crash"


def test_stack_has_the_official_airflow_components_and_ours():
    expected = {"postgres", "redis", *AIRFLOW_SERVICES, "dovecot", "jira-standin"}
    assert expected <= set(services()), f"missing services: {sorted(expected - set(services()))}"
