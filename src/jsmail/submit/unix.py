"""What both ends of local submission need of a UNIX-domain socket: a path of any
length, and who is at the other end.  Standard library only, so that
``jsmail-sendmail`` stays light."""

from __future__ import annotations

import os
import socket
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

#: ``sun_path`` holds 108 octets with the final NUL.
MAX_PATH = 107
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@contextmanager
def reachable(path: str) -> Iterator[str]:
    """A name for ``path`` short enough to bind or connect to: ``path`` itself, or,
    for a longer one, ``/proc/self/fd/N/<name>`` through its directory held open (a
    deep data directory, such as a test's, would not fit ``sun_path``)."""
    if len(os.fsencode(path)) <= MAX_PATH:
        yield path
        return
    directory, name = os.path.split(path)
    fd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


@dataclass(frozen=True)
class PeerCredentials:
    """The process at the other end of a UNIX socket, as the kernel saw it connect
    (SO_PEERCRED, socket(7)): nothing the client says can change it."""

    pid: int
    uid: int
    gid: int


def peerCredentials(sock: socket.socket) -> PeerCredentials:
    """Who connected to ``sock`` (raises OSError if the kernel cannot say)."""
    return PeerCredentials(*_UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)))


def connect(path: str, timeout: float) -> socket.socket:
    """A blocking connection to the socket at ``path``, every later send and receive
    bounded by ``timeout`` seconds."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        with reachable(path) as name:
            sock.connect(name)
    except BaseException:
        sock.close()
        raise
    return sock
