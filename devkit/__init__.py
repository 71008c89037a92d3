"""Stand-ins, mail builders and service launchers for tests and the demo; never shipped in the image."""
