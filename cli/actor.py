"""Who the CLI says is acting: the `X-Agentrun-Actor` of every request.

    --actor alice  >  $AGENTRUN_ACTOR  >  $USER  >  the login name  >  anonymous

Design (why it looks like this): the actor lands in the audit trail (who
approved, who cancelled), so the CLI names someone whenever the machine can
tell who: a root shell, `sudo -i`, a container or cron often has no `$USER`,
and the login name of the process's user (`getpass.getuser`, which ends at the
password database entry of the uid) still says who it is. Only when nothing
names anyone does the API record `anonymous` (it does so for an absent header).

This module must not: print, or talk to the API.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping


def default_actor(environ: Mapping[str, str] | None = None) -> str | None:
    """The actor when `--actor` is not given; None leaves it to the API (`anonymous`)."""
    env = os.environ if environ is None else environ
    for name in ("AGENTRUN_ACTOR", "USER"):
        if value := env.get(name, "").strip():
            return value
    return login_name()


def login_name() -> str | None:
    """The login name of this process's user (`$LOGNAME`, else the uid's passwd entry)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError, ImportError):  # a uid without a passwd entry
        return None
    return name.strip() or None
