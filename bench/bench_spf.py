"""SPF checks per second: jsmail's SPFChecker (pyspf in reactor threads, DNS through
twisted.names) against pyspf with its own blocking dnspython resolver, both asking the same
loopback DNS server, in the same invocation.

Two records: ``one.bench`` (one TXT lookup, ip4 match) and ``four.bench`` (include, a and
mx: five lookups).  jsmail runs ``--concurrency`` checks at once; pyspf runs them one after
another in this process, then in as many threads as jsmail's pool.

    PYTHONPATH=$PWD python bench/bench_spf.py [--checks 2000] [--concurrency 10]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dns.resolver
import spf as pyspf
from twisted.internet import defer, task
from twisted.internet.threads import deferToThread
from twisted.names import dns as tdns

from jsmail._dns import makeResolver
from jsmail.policy.spf import SPFChecker
from jsmail.testing import DNSServer


def txt(text: str) -> tdns.Record_TXT:
    return tdns.Record_TXT(text.encode())


ZONE = [
    ("one.bench", txt("v=spf1 ip4:192.0.2.0/24 -all")),
    ("four.bench", txt("v=spf1 include:inc.bench a:host.bench mx -all")),
    ("inc.bench", txt("v=spf1 ip4:198.51.100.0/24 -all")),
    ("host.bench", tdns.Record_A("203.0.113.1")),
    ("four.bench", tdns.Record_MX(10, b"mx.four.bench")),
    ("mx.four.bench", tdns.Record_A("192.0.2.1")),
]
CASES = {"one.bench": "192.0.2.1", "four.bench": "192.0.2.1"}


def pyspfOwnDNS(port: int, domain: str, n: int, threads: int) -> float:
    """pyspf as shipped: blocking dnspython lookups (this runs outside any reactor)."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = ["127.0.0.1"], port
    dns.resolver.default_resolver = resolver
    saved, pyspf.DNSLookup = pyspf.DNSLookup, pyspf.DNSLookup_dnspython
    try:
        def one(_: int) -> str:
            return pyspf.query(i=CASES[domain], s=f"a@{domain}", h="h.bench").check()[0]

        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(one, range(n)))
        elapsed = time.perf_counter() - start
    finally:
        pyspf.DNSLookup = saved
    assert set(results) == {"pass"}, set(results)
    return n / elapsed


@defer.inlineCallbacks
def main(reactor: Any, checks: int, concurrency: int) -> Any:
    reactor.suggestThreadPoolSize(concurrency)
    server = DNSServer({"bench": ZONE}, reactor)
    address = server.start()
    checker = SPFChecker(reactor, makeResolver(address, reactor), timeout=10.0)
    rates: dict[str, float] = {}
    for domain in CASES:
        results: list[str] = []
        start = time.perf_counter()
        semaphore = defer.DeferredSemaphore(concurrency)
        yield defer.gatherResults([semaphore.run(checker.check, CASES[domain], f"a@{domain}", "h.bench")
                                   .addCallback(lambda r, results=results: results.append(r.result))
                                   for _ in range(checks)])
        rates[f"jsmail {domain}"] = checks / (time.perf_counter() - start)
        assert set(results) == {"pass"}, set(results)
        # pyspf's own resolver blocks: run it in threads so the reactor can serve its DNS
        for threads in (1, concurrency):
            rates[f"pyspf+dnspython x{threads} {domain}"] = yield deferToThread(pyspfOwnDNS, server.port, domain,
                                                                                 checks, threads)
    yield server.stop()
    for name, rate in rates.items():
        print(f"{name:40s} {rate:8.0f} checks/s")
    for domain in CASES:
        for threads in (1, concurrency):
            ratio = rates[f"jsmail {domain}"] / rates[f"pyspf+dnspython x{threads} {domain}"]
            print(f"ratio jsmail / pyspf+dnspython x{threads} {domain}: {ratio:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--checks", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    task.react(main, (args.checks, args.concurrency))
