"""Run the whole test suite N times from a fresh clone and count the runs that failed.

    python3 scripts/flake_check.py --runs 10 [--hog 1] [--keep]
    make flake-check RUNS=10 HOG=1

What it does:

1. ``git clone`` this repository's HEAD into a temporary directory (what a new user gets:
   uncommitted changes are not part of it) and runs ``make setup`` there, timed;
2. runs ``pytest`` in the clone ``--runs`` times, each with a fresh random seed passed as
   ``--chaos-seed`` (so a failing run can be replayed), optionally while ``--hog`` busy
   processes burn CPU beside it (a shared CI machine);
3. prints one line per run and then ``N passed, M failed``, with the seed and the log of
   each failing run. A run also fails when its output reports an unclosed aiohttp
   session or connector, a pending task destroyed or a coroutine never awaited.

The exit status is 0 only when every run passed. Logs stay in ``--logs`` (default: a
``flake-check`` directory under the clone's parent, printed at the end).
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEAK = re.compile(
    r"Unclosed (client session|connector)|Task was destroyed but it is pending"
    r"|coroutine '[^']+' was never awaited"
)
#: What `make test`'s unit target passes to pytest (three workers, a file per worker).
UNIT_OPTIONS = ("-n", "3", "--dist", "loadfile")
SUMMARY = re.compile(r"^=+ (.*) in [0-9.]+s", re.MULTILINE)


@dataclass
class Run:
    """One run of the suite."""

    number: int
    seed: int
    seconds: float
    returncode: int
    leaks: int
    summary: str
    log: Path

    @property
    def passed(self) -> bool:
        return self.returncode == 0 and self.leaks == 0


def _burn() -> None:  # pragma: no cover (runs in a child process)
    while True:
        pass


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"flake-check needs {name} on PATH")
    return path


def _clone(workdir: Path) -> Path:
    clone = workdir / "clone"
    git = [_tool("git"), "clone", "--quiet", str(ROOT), str(clone)]
    subprocess.run(git, check=True)  # noqa: S603 (fixed argv)
    return clone


def _setup(clone: Path, log: Path) -> float:
    started = time.monotonic()
    with log.open("w") as out:
        make = [_tool("make"), "setup"]
        subprocess.run(make, cwd=clone, stdout=out, stderr=subprocess.STDOUT, check=True)  # noqa: S603
    return time.monotonic() - started


def _run(clone: Path, number: int, logs: Path, extra: list[str]) -> Run:
    seed = secrets.randbelow(2**32)
    log = logs / f"run-{number:02d}-seed-{seed}.log"
    started = time.monotonic()
    with log.open("w") as out:
        result = subprocess.run(  # noqa: S603 (the clone's own pytest)
            [
                str(clone / ".venv/bin/pytest"),
                "-p",
                "no:cacheprovider",
                *UNIT_OPTIONS,
                f"--chaos-seed={seed}",
                *extra,
            ],
            cwd=clone,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    text = log.read_text(errors="replace")
    found = SUMMARY.findall(text)
    return Run(
        number=number,
        seed=seed,
        seconds=time.monotonic() - started,
        returncode=result.returncode,
        leaks=len(LEAK.findall(text)),
        summary=found[-1] if found else f"exit {result.returncode}",
        log=log,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10, help="how many runs (default 10)")
    parser.add_argument("--hog", type=int, default=0, help="CPU-burning processes beside the suite")
    parser.add_argument("--logs", type=Path, help="where the run logs go")
    parser.add_argument("--keep", action="store_true", help="keep the clone afterwards")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="cmk-flake-check-"))
    logs = args.logs or workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    hogs: list[multiprocessing.Process] = []
    runs: list[Run] = []
    try:
        clone = _clone(workdir)
        head = subprocess.run(  # noqa: S603 (fixed argv)
            [_tool("git"), "rev-parse", "--short", "HEAD"],
            cwd=clone,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        print(f"flake-check: fresh clone of {head} in {clone}", flush=True)
        setup = _setup(clone, logs / "setup.log")
        print(f"flake-check: make setup took {setup:.0f}s", flush=True)
        for _ in range(args.hog):
            hog = multiprocessing.Process(target=_burn, daemon=True)
            hog.start()
            hogs.append(hog)
        if hogs:
            print(f"flake-check: {len(hogs)} CPU hog(s) running beside the suite", flush=True)
        for number in range(1, args.runs + 1):
            run = _run(clone, number, logs, args.pytest_args)
            runs.append(run)
            verdict = "passed" if run.passed else "FAILED"
            leaks = f", {run.leaks} unclosed-session lines" if run.leaks else ""
            print(
                f"run {number}/{args.runs}: {verdict} in {run.seconds:.0f}s, seed {run.seed}"
                f" ({run.summary}{leaks})",
                flush=True,
            )
    finally:
        for hog in hogs:
            hog.terminate()
            hog.join()
        if not args.keep:
            shutil.rmtree(workdir / "clone", ignore_errors=True)
            if not logs.resolve().is_relative_to(workdir.resolve()):
                shutil.rmtree(workdir, ignore_errors=True)  # nothing of it is kept

    failed = [r for r in runs if not r.passed]
    hog_note = f" with {args.hog} CPU hog(s)" if args.hog else ""
    print(f"{len(runs) - len(failed)} passed, {len(failed)} failed{hog_note}")
    for run in failed:
        replay = f"pytest --chaos-seed={run.seed}"
        print(f"  run {run.number}: seed {run.seed} (replay: {replay}); log {run.log}")
    print(f"logs: {logs}")
    return 0 if runs and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
