"""``jsmail check``: is this configuration fit to run, for a person or a monitoring
system (Nagios-style: exit status 0 OK, 1 WARNING, 2 CRITICAL, and the first line says
which and why).

It checks that the configuration loads (policy plugins included); that each listener
can bind (bound and released at once; a port that answers as a mail or status server
counts as the running gateway's own); that the queue directory is writable and how
much room its file system has; that DNS answers within a few seconds; when the TLS
certificate expires; and who can reach the local submission socket.  It changes
nothing but a probe file in ``queue/tmp``.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Any, TextIO

from jsmail.config import Config, ConfigError, loadConfig
from jsmail.ops.certinfo import readCertificate
from jsmail.submit.endpoint import closedDirectory
from jsmail.submit.unix import connect

OK, WARNING, CRITICAL = 0, 1, 2
LEVELS = ("OK", "WARNING", "CRITICAL")
#: The certificate is a warning this many days before it expires, critical after the second.
CERTIFICATE_DAYS = (21, 7)
PROBE_TIMEOUT = 3.0


@dataclass(frozen=True)
class Finding:
    level: int
    what: str


def checkConfiguration(path: str | None, overrides: dict[str, Any]) -> tuple[Config | None, Finding]:
    from twisted.internet import reactor

    from jsmail.service import checkPolicies

    try:
        config = loadConfig(path, overrides)
        checkPolicies(config, reactor)
    except ConfigError as e:
        return None, Finding(CRITICAL, f"configuration: {e}")
    return config, Finding(OK, f"configuration {path or '(built-in defaults)'} is valid")


def _tcpTarget(description: str) -> tuple[int, str, int] | None:
    """(address family, interface, port) of a tcp: or tcp6: endpoint, else None."""
    kind, _, rest = description.partition(":")
    if kind not in ("tcp", "tcp6"):
        return None
    parts = rest.replace("\\:", "\0").split(":")
    options = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    for p in parts[1:]:
        if p.startswith("port="):
            parts[0] = p[5:]
    interface = options.get("interface", "::" if kind == "tcp6" else "").replace("\0", ":")
    return (socket.AF_INET6 if kind == "tcp6" else socket.AF_INET), interface, int(parts[0])


def _answers(family: int, interface: str, port: int, kind: str) -> bool:
    """Whether the port in use answers as jsmail would (an SMTP greeting, or the status page)."""
    host = interface or ("::1" if family == socket.AF_INET6 else "127.0.0.1")
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT) as connection:
            if kind == "metrics":
                connection.sendall(b"GET / HTTP/1.0\r\n\r\n")
                return b"jsmail" in connection.recv(65536) + connection.recv(65536)
            return connection.recv(512).startswith(b"220")
    except OSError:
        return False


def checkListener(kind: str, description: str) -> Finding:
    target = _tcpTarget(description)
    if target is None:
        return Finding(OK, f"{kind} listener {description}: not a TCP endpoint, not tried")
    family, interface, port = target
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted binds
        probe.bind((interface, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE and _answers(family, interface, port, kind):
            return Finding(OK, f"{kind} listener {description}: in use, answering (the running gateway)")
        if e.errno == errno.EACCES:
            return Finding(WARNING, f"{kind} listener {description}: this user may not bind it "
                                    "(root or CAP_NET_BIND_SERVICE may)")
        return Finding(CRITICAL, f"{kind} listener {description}: cannot bind: {e.strerror}")
    finally:
        probe.close()
    return Finding(OK, f"{kind} listener {description}: can bind")


def checkQueue(config: Config) -> list[Finding]:
    directory = os.path.join(config.server.dataDir, "queue")
    if not os.path.isdir(directory):
        parent = config.server.dataDir if os.path.isdir(config.server.dataDir) else os.path.dirname(directory)
        level = WARNING if os.access(parent if os.path.isdir(parent) else ".", os.W_OK) else CRITICAL
        return [Finding(level, f"queue {directory}: not there yet (made at the first start)")]
    findings = []
    try:
        fd, probe = tempfile.mkstemp(dir=os.path.join(directory, "tmp"), prefix=".check-")
        os.close(fd)
        os.unlink(probe)
        findings.append(Finding(OK, f"queue {directory}: writable"))
    except OSError as e:
        findings.append(Finding(CRITICAL, f"queue {directory}: cannot write: {e.strerror}"))
    stat = os.statvfs(directory)
    free, size = stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize
    minimum = config.smtp.minFreeSpace
    level = CRITICAL if free < minimum else WARNING if free < 2 * minimum or free < size * 0.05 else OK
    findings.append(Finding(level, f"queue file system: {free / 2**20:.0f} MiB free of {size / 2**20:.0f} MiB "
                                   f"(mail is refused below {minimum / 2**20:.0f} MiB)"))
    return findings


def checkDNS(config: Config, timeout: float = PROBE_TIMEOUT) -> Finding:
    """One MX query for the first local domain: any answer, even "no such domain",
    shows DNS is reachable."""
    import dns.exception
    import dns.resolver

    from jsmail.address import hostPort

    resolver = dns.resolver.Resolver(configure=not config.remote.dnsServer)
    if config.remote.dnsServer:
        host, port = hostPort(config.remote.dnsServer, 53)
        resolver.nameservers, resolver.port = [host], port
    name = config.server.domains[0]
    server = config.remote.dnsServer or "resolv.conf's servers"
    started = time.monotonic()
    try:
        resolver.resolve(name, "MX", lifetime=timeout)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        pass
    except dns.resolver.NoNameservers:
        return Finding(WARNING, f"DNS ({server}): answers, but refused or failed the query for {name} MX")
    except dns.exception.Timeout:
        return Finding(CRITICAL, f"DNS ({server}): no answer within {timeout:g} s")
    except dns.exception.DNSException as e:
        return Finding(CRITICAL, f"DNS ({server}): {e}")
    return Finding(OK, f"DNS ({server}): answered in {(time.monotonic() - started) * 1000:.0f} ms")


def checkCertificate(config: Config, now: float) -> Finding:
    server = config.server
    path = server.tlsCertificate or os.path.join(server.dataDir, "tls", "selfsigned-cert.pem")
    if not server.tlsCertificate and not os.path.exists(path):
        return Finding(OK, "TLS certificate: self-signed, made at the first start")
    certificate = readCertificate(path)
    if certificate.notAfter is None:
        return Finding(CRITICAL, f"TLS certificate {path}: {certificate.problem}")
    days = (certificate.notAfter - now) / 86400
    level = CRITICAL if days < CERTIFICATE_DAYS[1] else WARNING if days < CERTIFICATE_DAYS[0] else OK
    when = "expired" if days < 0 else f"expires in {days:.0f} days"
    return Finding(level, f"TLS certificate {path} for {certificate.subject}: {when}")


def checkLocalSubmission(config: Config) -> list[Finding]:
    """Whether the socket answers, and whether users other than jsmail's can reach it
    (informative only: a gateway without local users needs no more)."""
    path = config.submit.socket
    if not path:
        return []
    try:
        connect(path, PROBE_TIMEOUT).close()
        state = "answering"
    except OSError as e:
        state = f"not listening ({e.strerror or e}; made at start)"
    closed = closedDirectory(path)
    reach = (f"only root and jsmail's user reach it ({closed} is closed to others; other users need [submit] "
             f"socket = \"/run/jsmail/submit.sock\")" if closed else "every local user reaches it")
    return [Finding(OK, f"local submission {path}: {state}; {reach}")]


def run(path: str | None, overrides: dict[str, Any], out: TextIO, dnsTimeout: float = PROBE_TIMEOUT) -> int:
    """Check everything, print the verdict line and each finding; the exit status."""
    config, finding = checkConfiguration(path, overrides)
    findings = [finding]
    if config is not None:
        listeners = [(kind, d) for kind in ("smtp", "submission", "smtps") for d in getattr(config.listen, kind)]
        listeners += [("metrics", config.metrics.listen)] if config.metrics.listen else []
        findings += [checkListener(kind, description) for kind, description in listeners]
        findings += checkQueue(config)
        findings.append(checkDNS(config, dnsTimeout))
        findings.append(checkCertificate(config, time.time()))
        findings += checkLocalSubmission(config)
    level = max(f.level for f in findings)
    worst = [f.what for f in findings if f.level == level]
    summary = f"{len(findings)} checks passed" if level == OK else "; ".join(worst)
    print(f"JSMAIL {LEVELS[level]} - {summary}", file=out)
    for f in findings:
        print(f"{LEVELS[f.level]:<8} {f.what}", file=out)
    return level
