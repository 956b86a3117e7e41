"""Run the fuzz targets of ``fuzz/targets.py`` with atheris (libFuzzer), for a while each.

::

    .venv/bin/python fuzz/run.py smtp path --seconds 120    # two targets, 2 minutes each
    .venv/bin/python fuzz/run.py --all --seconds 60         # every target in turn
    .venv/bin/python fuzz/run.py --replay fuzz/crashes/FILE smtp

Each target runs in its own process at low priority (``nice 10``), one at a time.
New interesting inputs go to ``fuzz/work/TARGET/`` (not kept in git); the seeds in
``fuzz/corpus/TARGET/`` are read too.  A failing input is written to
``fuzz/crashes/TARGET-crash-<sha1>`` (or ``-timeout-``, ``-oom-``); the run then goes
on with the target's remaining time, up to ``--max-crashes`` crashes.  The summary
(inputs run per target, crashes) goes to stdout.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# This checkout's jsmail and tests, whatever the environment has installed.
sys.path[:0] = [ROOT, os.path.join(ROOT, "src")]


def child(target: str, libfuzzerArgs: list[str]) -> None:
    """In the fuzzing process: instrument jsmail, then hand the target to libFuzzer."""
    import atheris

    os.nice(10)
    with atheris.instrument_imports(include=["jsmail"]):
        import jsmail.address  # noqa: F401  (the rest comes in through the oracles)
        from fuzz.targets import TARGETS
    atheris.Setup([sys.argv[0], *libfuzzerArgs], TARGETS[target])
    atheris.Fuzz()


def writeSeeds(target: str, seeds: list[bytes]) -> str:
    directory = os.path.join(HERE, "corpus", target)
    os.makedirs(directory, exist_ok=True)
    for n, seed in enumerate(seeds):
        path = os.path.join(directory, f"seed-{n}")
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(seed)
    return directory


def fuzz(target: str, seconds: float, maxCrashes: int, timeout: int, maxLen: int) -> tuple[int, list[str]]:
    """Fuzz ``target`` for ``seconds`` in all: the inputs run, and the crash files."""
    from fuzz.targets import SEEDS

    work = os.path.join(HERE, "work", target)
    os.makedirs(work, exist_ok=True)
    seeds = writeSeeds(target, SEEDS.get(target, []))
    crashes = os.path.join(HERE, "crashes")
    os.makedirs(crashes, exist_ok=True)
    deadline = time.monotonic() + seconds
    runs, found = 0, []
    while (left := deadline - time.monotonic()) > 5 and len(found) < maxCrashes:
        command = [sys.executable, os.path.abspath(__file__), "--child", target, work, seeds,
                   f"-max_total_time={int(left)}", f"-timeout={timeout}", "-rss_limit_mb=2048",
                   f"-max_len={maxLen}", f"-artifact_prefix={crashes}/{target}-", "-print_final_stats=1"]
        result = subprocess.run(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        output = result.stdout
        done = re.findall(r"^Done (\d+) runs", output, re.M)
        counted = re.findall(r"^stat::number_of_executed_units:\s*(\d+)", output, re.M)
        status = re.findall(r"^#(\d+)\s", output, re.M)
        runs += int((done or counted or status or ["0"])[-1])
        artifacts = re.findall(r"Test unit written to (\S+)", output)
        found += [a for a in artifacts if a not in found]
        if result.returncode != 0:
            tail = "\n".join(output.splitlines()[-40:])
            print(f"--- {target}: exit status {result.returncode}; {artifacts or 'no artifact'}\n{tail}\n",
                  file=sys.stderr, flush=True)
            if not artifacts:
                break
    return runs, found


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3:])
        return
    from fuzz.targets import MAX_LEN, TARGETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", choices=[[], *TARGETS], metavar="TARGET",
                        help=f"targets to run: {', '.join(TARGETS)}")
    parser.add_argument("--all", action="store_true", help="run every target")
    parser.add_argument("--seconds", type=float, default=60.0, help="time per target (default 60)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take (default 10)")
    parser.add_argument("--max-crashes", type=int, default=3, help="stop a target after this many (default 3)")
    parser.add_argument("--replay", metavar="FILE", help="run the target once on FILE, with a traceback")
    args = parser.parse_args()
    if args.replay:
        with open(args.replay, "rb") as f:
            data = f.read()
        for target in args.targets:
            TARGETS[target](data)
            print(f"{target}: {args.replay} passes")
        return
    names = list(TARGETS) if args.all else args.targets
    if not names:
        parser.error("name targets, or --all")
    rows = []
    for name in names:
        started = time.monotonic()
        runs, crashes = fuzz(name, args.seconds, args.max_crashes, args.timeout, MAX_LEN.get(name, 4096))
        rows.append((name, runs, time.monotonic() - started, crashes))
        print(f"{name}: {runs} inputs in {rows[-1][2]:.0f} s, {len(crashes)} crash(es) {crashes}",
              file=sys.stderr, flush=True)
    print(f"{'target':<12} {'inputs':>10} {'seconds':>8}  crashes")
    for name, runs, seconds, crashes in rows:
        print(f"{name:<12} {runs:>10} {seconds:>8.0f}  {', '.join(os.path.basename(c) for c in crashes) or '-'}")


if __name__ == "__main__":
    main()
