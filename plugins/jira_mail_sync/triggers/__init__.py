"""Triggers that run in the triggerer: the IMAP IDLE watcher of the inbox."""
