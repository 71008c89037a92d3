"""The compose topology run natively on loopback (`make test-distributed`); not collected by `make test`."""
