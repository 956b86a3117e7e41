"""Where a command finds jsmail's data directory (the queue, the mail, the TLS and
password files) when it is not told in a configuration file: ``--data``, else
``$JSMAIL_DATA``, else ``./jsmail-data``.

The ``jsmail`` command, ``jsmail-queue``, ``jsmail-sendmail`` and ``jsmail-smtpd``
all ask here, so that they find the same queue as each other; it is a module of its
own because it is needed on both sides of the package's layers (the administration
command and the qmail programs) and depends on nothing.
"""

from __future__ import annotations

import os

DEFAULT = "jsmail-data"
#: The gateway's configuration where no ``--config``/``-C`` or ``$JSMAIL_CONFIG`` names
#: one: jsmail-sendmail and the ``jsmail`` command both look here.
DEFAULT_CONFIG = "/etc/jsmail/jsmail.toml"


def dataDirectory(argument: str | None, default: str = DEFAULT) -> str:
    """``argument`` (a ``--data`` value) if given, else ``$JSMAIL_DATA``, else
    ``default``."""
    return argument or os.environ.get("JSMAIL_DATA") or default
