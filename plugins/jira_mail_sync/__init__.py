"""Airflow hooks, sensors and shared tasks of jira-mail-sync (plugins/ is on sys.path in Airflow)."""
