"""The docker-compose.yaml topology (CeleryExecutor) run natively on loopback, for `make test-distributed`."""
