"""Who asked for an operator action, as its audit event records it (`by`): a small JSON object whose `via` says
how the request came. The HTTP API names the key's tenant and fingerprint (`{"via": "api", "tenant", "key"}`), the
`saga` command the OS user and host (`{"via": "cli", "user", "host"}`), and a library call that names nobody is
recorded as `{"via": "library"}`."""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from typing import Any

# A call of the library that did not say who asked: recorded as such, never guessed from the process.
LIBRARY: dict[str, Any] = {"via": "library"}


def recorded(by: Mapping[str, Any] | None) -> dict[str, Any]:
    """`by` as the audit log keeps it: a copy of the mapping, or LIBRARY when the caller named nobody."""
    if by is None:
        return dict(LIBRARY)
    if not isinstance(by, Mapping) or not by:
        raise TypeError(f"by must be a non-empty mapping saying who asked (e.g. {{'via': 'cli', 'user': 'ann'}}), "
                        f"not {by!r}")
    return dict(by)


def this_user(via: str = "cli") -> dict[str, str]:
    """The OS user and host this process runs as, for an action taken from a command line."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name in the environment and no passwd entry (a bare container)
        user = f"uid:{os.getuid()}"
    return {"via": via, "user": user, "host": socket.gethostname()}
