"""Dovecot config pieces for its `oauth2` passdb (XOAUTH2, OAUTHBEARER), checking tokens by introspection.

The launcher (today tests/harness/dovecot.py) renders a config with a static `nodelay` passdb and a
passwd-file passdb; `with_oauth2_passdb` turns that text into one that also accepts tokens, and
`oauth2_args` is the passdb's args file. Settings as checked on Dovecot 2.3.19 (see FACTS.md).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

OAUTH2_ARGS_NAME = "dovecot-oauth2.conf.ext"
_AUTH_MECHANISMS = re.compile(r"^auth_mechanisms = (.*)$", re.MULTILINE)
# The launcher's passwd-file passdb; the oauth2 one goes right before it.
_PASSWD_FILE_PASSDB = "passdb {\n  driver = passwd-file\n"


def oauth2_args(introspection_url: str) -> str:
    """The `args = FILE` of the oauth2 passdb: every token is introspected, `username` must be the login."""
    return f"""\
# Written by devkit/dovecot_oauth.py; tokens are checked at the stand-in's RFC 7662 endpoint.
introspection_url = {introspection_url}
introspection_mode = post
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
"""


def oauth2_passdb_block(args_path: Path) -> str:
    """The passdb block: used only for the token mechanisms, so PLAIN/LOGIN still go to the passwd-file."""
    return f"""\
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {args_path}
}}
"""


def with_oauth2_passdb(config: str, args_path: Path) -> str:
    """`config` plus XOAUTH2/OAUTHBEARER mechanisms and the oauth2 passdb before the passwd-file one."""
    match = _AUTH_MECHANISMS.search(config)
    if match is None or _PASSWD_FILE_PASSDB not in config:
        raise ValueError("the Dovecot config has no auth_mechanisms line or passwd-file passdb to extend")
    mechanisms = match.group(1).split()
    mechanisms += [m for m in ("xoauth2", "oauthbearer") if m not in mechanisms]
    config = _AUTH_MECHANISMS.sub(f"auth_mechanisms = {' '.join(mechanisms)}", config, count=1)
    return config.replace(_PASSWD_FILE_PASSDB, oauth2_passdb_block(args_path) + _PASSWD_FILE_PASSDB, 1)


def write_oauth2_args(root: Path, introspection_url: str) -> Path:
    """Write the args file into the Dovecot root; world-readable, since the auth process runs as `dovecot`."""
    path = root / OAUTH2_ARGS_NAME
    path.write_text(oauth2_args(introspection_url))
    os.chmod(path, 0o644)
    return path
