"""Pytest fixtures over the dev kit's services (devkit/), one module per service."""
