"""Shared fixtures: the local Azure sandbox and Azurite.

- ``sandbox_server`` (session): one running :class:`~cmk.sandbox.core.Sandbox`.
- ``sandbox`` (function): the same sandbox reset to an empty world (the app identity
  kept), with the process environment pointing Azure SDK clients at it.
- ``azurite`` (session): the Storage connection string of a running Azurite; a test that
  uses both ``sandbox`` and ``azurite`` also gets ``AzureWebJobsStorage`` set.
- ``random_seed`` (session): the seed of every random choice the sandbox, the chaos
  suite and hypothesis make: ``--chaos-seed``, else ``CMK_TEST_SEED``, else a fresh one
  (``--hypothesis-seed``, when given, wins for hypothesis). The header prints it and every
  failure repeats it, so ``pytest --chaos-seed=N`` replays the draws.

Leaks fail the suite: aiohttp reports an unclosed client session, connector or response
(and asyncio a task destroyed while pending) through the event loop's exception handler
(a log record, not a warning that a filter could turn into an error), so a handler on
the ``asyncio`` logger collects those records and the teardown of the test during which
one appeared fails with them; whatever only the last garbage collection finds fails the
session. Coroutines never awaited fail
through ``filterwarnings`` in pyproject.toml.
"""

from __future__ import annotations

import gc
import logging
import os
import secrets
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest

from cmk.sandbox.core import INTERFERING_ENV, Sandbox
from cmk.sandbox.platform.azurite import Azurite

# Property tests are judged by their examples, never by how long one took: hypothesis's
# 200 ms per-example deadline would fail a test on a loaded machine, by chance. Timing
# belongs in bench/.
hypothesis.settings.register_profile("cmk", deadline=None)
hypothesis.settings.load_profile("cmk")

SEED = pytest.StashKey[int]()
#: What pytest-xdist's workers sent back: (section title, lines) for the terminal summary.
WORKER_REPORTS = pytest.StashKey[list[tuple[str, list[str]]]]()
#: The key under which a worker sends its leaks and its figures (``config.workeroutput``).
LEAKS_OUTPUT, FIGURES_OUTPUT = "cmk_leaks", "cmk_figures"
#: What asyncio logs (through the loop's exception handler) for what was left open: aiohttp
#: sessions, connectors, responses, and tasks dropped while still pending.
LEAK_MESSAGES = (
    "Unclosed client session",
    "Unclosed connector",
    "Unclosed response",
    "Task was destroyed but it is pending",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-size",
        type=int,
        default=None,
        help="accounts in the chaos suite's run (default 240, or CMK_CHAOS_SIZE)",
    )
    parser.addoption(
        "--chaos-seed",
        type=int,
        default=None,
        help="seed of the random choices of the sandbox, the chaos suite and hypothesis "
        "(default: CMK_TEST_SEED, else a fresh one; a failing run prints the seed to pass here)",
    )


class LeakLog(logging.Handler):
    """Keeps the first line of each report asyncio logs of something left open."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(LEAK_MESSAGES):
            self.found.append(" ".join(message.split("\n", 2)[:2]))

    def take(self) -> list[str]:
        found, self.found = self.found, []
        return found


LEAKS = LeakLog()


@pytest.hookimpl(tryfirst=True)  # before hypothesis's plugin reads --hypothesis-seed
def pytest_configure(config: pytest.Config) -> None:
    given = config.getoption("--chaos-seed", default=None) or os.environ.get("CMK_TEST_SEED")
    seed = int(given) if given else secrets.randbelow(2**32)
    config.stash[SEED] = seed
    config.stash[WORKER_REPORTS] = []
    # pytest-xdist's workers start after this and inherit the environment: one seed for all
    os.environ["CMK_TEST_SEED"] = str(seed)
    if getattr(config.option, "hypothesis_seed", "absent") is None:
        config.option.hypothesis_seed = str(seed)  # property tests replay with the seed too
    logging.getLogger("asyncio").addHandler(LEAKS)


def pytest_unconfigure(config: pytest.Config) -> None:
    logging.getLogger("asyncio").removeHandler(LEAKS)


def pytest_report_header(config: pytest.Config) -> str:
    seed = config.stash[SEED]
    return f"random seed: {seed} (replay with --chaos-seed={seed})"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Fail a test's teardown when an unclosed session was reported during the test; give
    every failure the seed that replays it."""
    report = yield
    if report.when == "teardown":
        leaks = LEAKS.take()
        if leaks and report.passed:
            report.outcome = "failed"
            report.longrepr = "left unclosed (close what you open):\n" + "\n".join(leaks)
        elif leaks:
            report.sections.append(("left unclosed", "\n".join(leaks)))
    if report.failed:
        seed = item.config.stash[SEED]
        report.sections.append(("random seed", f"{seed}: replay with --chaos-seed={seed}"))
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Whatever only a full collection finds (sessions in reference cycles) fails too; a
    pytest-xdist worker sends it to the controller, which fails the run with it."""
    gc.collect()
    leaks = LEAKS.take()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput[LEAKS_OUTPUT] = leaks
        return
    for title, lines in session.config.stash[WORKER_REPORTS]:
        if title == "left unclosed":
            leaks.extend(lines)
    if leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.section("left unclosed", red=True)
            for leak in leaks:
                reporter.write_line(leak)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """A pytest-xdist worker finished: keep its leaks and figures for the summary."""
    output = getattr(node, "workeroutput", {})
    reports = node.config.stash[WORKER_REPORTS]
    if output.get(LEAKS_OUTPUT):
        reports.append(("left unclosed", list(output[LEAKS_OUTPUT])))
    for title, text in output.get(FIGURES_OUTPUT, {}).items():
        reports.append((title, str(text).splitlines()))


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    for title, lines in config.stash.get(WORKER_REPORTS, []):
        if title != "left unclosed":
            terminalreporter.section(title)
            for line in lines:
                terminalreporter.write_line(line)
    if terminalreporter.stats.get("failed") or terminalreporter.stats.get("error"):
        seed = config.stash[SEED]
        terminalreporter.write_line(f"random seed: {seed} (replay with --chaos-seed={seed})")


@pytest.fixture(autouse=True)
def _loggers_restored() -> Iterator[None]:
    """Put every named logger back as the test found it (level, handlers, propagation).
    Tests run ``cmk`` in-process, and the CLI sets its loggers' levels and handler as a
    process does once: without this, one test's CLI run silences another's ``caplog``
    (which test that is depends on the order the tests happen to run in)."""
    loggers = logging.Logger.manager.loggerDict
    before = {
        name: (logger.level, list(logger.handlers), logger.propagate, logger.disabled)
        for name, logger in loggers.items()
        if isinstance(logger, logging.Logger)
    }
    yield
    for name, logger in list(loggers.items()):
        if not isinstance(logger, logging.Logger):
            continue
        if name not in before:  # created during the test
            logger.setLevel(logging.NOTSET)
            continue
        level, handlers, propagate, disabled = before[name]
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate, logger.disabled = propagate, disabled


@pytest.fixture(scope="session")
def random_seed(pytestconfig: pytest.Config) -> int:
    """The seed of this run's random choices (see the module docstring)."""
    return pytestconfig.stash[SEED]


@pytest.fixture(scope="session")
def sandbox_server(tmp_path_factory: pytest.TempPathFactory, random_seed: int) -> Iterator[Sandbox]:
    """One sandbox for the whole session, seeded; this process's aiohttp trusts its CA."""
    sandbox = Sandbox(Path(tmp_path_factory.mktemp("sandbox")), random_seed=random_seed).start()
    sandbox.trust_ca_in_process()
    try:
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The connection string of an Azurite (queues, tables, blobs) on free loopback ports."""
    emulator = Azurite(Path(tmp_path_factory.mktemp("azurite"))).start()
    try:
        yield emulator.connection_string
    finally:
        emulator.stop()


@pytest.fixture
def sandbox(
    sandbox_server: Sandbox, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Sandbox:
    """The session sandbox, reset, with os.environ pointing SDK clients at it."""
    sandbox_server.reset()
    for name in list(os.environ):
        if name.startswith("AZURE_") or name in INTERFERING_ENV:
            monkeypatch.delenv(name, raising=False)
    for name, value in sandbox_server.env().items():
        monkeypatch.setenv(name, value)
    if "azurite" in request.fixturenames:
        monkeypatch.setenv("AzureWebJobsStorage", request.getfixturevalue("azurite"))
    return sandbox_server
