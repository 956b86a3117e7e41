"""What ``--check-config`` (and ``jsmail check``) look at beyond the values: the files
and directories the configuration names, read the way the gateway will read them at
start, without creating or changing any of them.

Each problem is one line naming the file and what is wrong with it.  Things the
gateway makes at its first start (the data directory, a self-signed certificate, a
DKIM key named but not there yet) are not problems, as long as it will be able to
make them.
"""

from __future__ import annotations

import os
import tempfile
from typing import TextIO

from jsmail.config import Config, ConfigError
from jsmail.local.aliases import AliasesError, AliasesFile
from jsmail.smtp.tls import TLSError, loadServerContext


def writableDirectory(path: str) -> str | None:
    """Why the gateway could not make files in ``path`` (made if missing), or None.
    Tried for real, with a probe removed at once, since permission bits do not tell
    root the truth (``/proc``, a read-only mount)."""
    existing = path
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        return f"{path}: {existing} is not a directory"
    try:
        probe = tempfile.mkdtemp(dir=existing, prefix=".jsmail-check-")
        os.rmdir(probe)
    except OSError as e:
        made = "" if existing == path else f" (it would be made in {existing})"
        return f"{path}: cannot write{made}: {e.strerror}"
    return None


def problems(config: Config) -> list[str]:
    """One line per file or directory the gateway will not be able to use."""
    found = []
    server = config.server
    dataProblem = writableDirectory(server.dataDir)
    if dataProblem is not None:
        found.append(f"server.data: {dataProblem}")
    if server.tlsCertificate:
        certificate, key = server.tlsCertificate, server.tlsKey or server.tlsCertificate
        where = "server.tls_certificate"
    else:
        directory = os.path.join(server.dataDir, "tls")
        certificate, key = os.path.join(directory, "selfsigned-cert.pem"), os.path.join(directory, "selfsigned-key.pem")
        where = "the self-signed certificate"
        if not os.path.exists(certificate):
            certificate = ""  # made at the first start, in the data directory checked above
    if certificate:
        try:
            loadServerContext(certificate, key)
        except TLSError as e:
            found.append(f"{where}: {e}")
    passwords = config.auth.passwordFile
    if os.path.exists(passwords) and not (os.path.isfile(passwords) and os.access(passwords, os.R_OK)):
        found.append(f"auth.password_file: {passwords}: not a readable file")  # missing is fine: no users yet
    program = config.queue.program
    if program and not (os.path.isfile(program) and os.access(program, os.X_OK)):
        found.append(f"queue.program: {program}: not an executable file")
    if config.local.aliases:
        try:
            AliasesFile(config.local.aliases, config.local.noAtHost).load()
        except AliasesError as e:
            found.append(f"local.aliases: {e}")
    return found


def named(error: ConfigError, path: str | None) -> ConfigError:
    """A plugin's error names the configuration file its table is in."""
    if error.source != "configuration" or not path:
        return error
    return ConfigError(path, error.key, error.problem)


def checkConfig(config: Config, path: str | None, out: TextIO, err: TextIO) -> int:
    """``--check-config``: the plugins' options, then the files; the exit status (0, or
    2 with one line per problem)."""
    from twisted.internet import reactor

    from jsmail.service import checkPolicies

    try:
        checkPolicies(config, reactor)
    except ConfigError as e:
        err.write(f"jsmail: configuration error: {named(e, path)}\n")
        return 2
    found = problems(config)
    for problem in found:
        err.write(f"jsmail: configuration error: {path or 'built-in defaults'}: {problem}\n")
    if found:
        return 2
    out.write(f"jsmail: configuration OK ({path or 'built-in defaults'})\n")
    return 0
