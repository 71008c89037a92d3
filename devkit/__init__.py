"""The dev kit: what exists only for tests, the demo, benchmarks and the compose stand-in service.

Nothing in the product (dags/, plugins/, include/) imports it, and the Airflow image does not hold
it. It holds the Jira Cloud stand-in, the Jira mail builder, the Dovecot, PostgreSQL and Redis
launchers, process helpers, and a client of Airflow's REST API; tests/harness/ puts pytest fixtures
on top of it, and scripts/ and bench/ import it directly.
"""
