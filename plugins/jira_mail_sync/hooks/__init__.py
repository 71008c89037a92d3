"""Hooks that open our services from Airflow connections."""
