"""Sensors of jira-mail-sync."""
