"""``cmk demo``: the whole product on the local Azure sandbox in under a minute.

It starts the sandbox and Azurite with the demo world (cmk/sandbox/scenario/demo_world.json:
48 CMK accounts over two Key Vaults and a Managed HSM), runs ``function_app.py`` on the
local Functions host with two instances, subscribes the app's Event Grid functions to the
Key Vaults, and tells four acts. It ends with a results table and exits 0 only if every
act went as expected (``--json`` prints the outcomes).

Stopped by Ctrl-C or SIGTERM it still tears the stage down: the Functions host, the
sandbox, Azurite and the sandbox's temporary state directory; then it exits 130 after
Ctrl-C (SIGINT), 143 after SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from rich.rule import Rule
from rich.text import Text

from cmk.commands.demo_stage import find_app_dir, stage
from cmk.commands.demo_story import ACTS, Act
from cmk.commands.output import (
    EXIT_FINDINGS,
    EXIT_OK,
    Output,
    OutputFailed,
    common_options,
    output_format,
    table,
)
from cmk.commands.session import configure_logging, fail
from cmk.sandbox.command.vault_events import SUBSCRIPTIONS

__all__ = ["add_parser", "run_demo"]


def add_parser(subparsers: Any) -> None:
    """Register ``cmk demo``."""
    parser = subparsers.add_parser(
        "demo",
        parents=[common_options()],
        help="run the end-to-end demo on the local Azure sandbox",
        description=__doc__,
    )
    parser.add_argument(
        "--instances",
        type=instance_count,
        default=2,
        metavar="N",
        help=f"Functions host instances, 1 to {MAX_INSTANCES} (default 2)",
    )
    parser.set_defaults(func=demo_command)


#: Functions host instances the demo starts at most: each is a host process of its own
#: on this machine (and two already show the queue spreading jobs across instances).
MAX_INSTANCES = 8


def instance_count(text: str) -> int:
    """``--instances N``: a whole number from 1 to :data:`MAX_INSTANCES` (else exit 2)."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if not 1 <= count <= MAX_INSTANCES:
        raise argparse.ArgumentTypeError(
            f"must be from 1 to {MAX_INSTANCES} (each instance is a Functions host process"
            f" on this machine), not {count}"
        )
    return count


def run_demo(output: Output, instances: int) -> list[Act]:
    """Set the stage and play every act; the acts' outcomes. With ``-o json`` (or
    ``--query``) stdout keeps the one document: the story goes to stderr, one line per act,
    so a script's log shows progress."""
    say = _progress(output) if output.json_mode else output.print
    app_dir = find_app_dir(Path.cwd())
    started = time.monotonic()
    with stage(app_dir, instances=instances) as scene:
        world = scene.world
        say(Rule("cmk-rotator demo"))
        say(
            f"Local Azure ready in {time.monotonic() - started:.1f}s: {len(world.subscriptions)}"
            f" subscriptions, {len(world.vaults)} vaults, {len(world.accounts)} AI services"
            f" accounts; Azurite; {app_dir / 'function_app.py'} on {instances} Functions"
            " instances; Event Grid wired to "
            + " / ".join(function for _, function in SUBSCRIPTIONS.values())
            + "."
        )
        acts: list[Act] = []
        for play in ACTS:
            act_started = time.monotonic()
            doc = (play.__doc__ or "").strip()
            say(Rule(f"Act {len(acts) + 1}: {doc}", align="left"))
            act = play(scene, say)
            act.seconds = round(time.monotonic() - act_started, 1)
            acts.append(act)
    return acts


def _progress(output: Output) -> Callable[..., None]:
    """What the story says, reduced to its headings (on stderr)."""

    def say(*renderables: object) -> None:
        for renderable in renderables:
            if isinstance(renderable, Rule):
                title = renderable.title
                output.note(f"cmk demo: {title.plain if isinstance(title, Text) else title}")

    return say


def _results(output: Output, acts: list[Act], seconds: float, code: int) -> None:
    if output.json_mode:
        output.emit_json(
            {"ok": code == EXIT_OK, "seconds": seconds, "acts": acts, "exit_code": code}
        )
        return
    rows = [(a.number, a.title, a.expected, a.observed, f"{a.seconds}s", _mark(a.ok)) for a in acts]
    output.print(Rule("Results"))
    output.print(table("", ("#", "act", "expected", "observed", "time", "result"), rows))
    verdict = "every outcome as expected" if code == EXIT_OK else "SOME OUTCOMES WERE NOT"
    output.print(f"demo finished in {seconds:.1f}s: {verdict}")


def _mark(ok: bool) -> Text:
    return Text("ok", style="green") if ok else Text("FAILED", style="bold red")


class Terminated(SystemExit):
    """SIGTERM, raised in the main thread so that every ``finally`` of the stage runs."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup
    raise Terminated(128 + signum)


@contextmanager
def _stopped_by_sigterm() -> Iterator[None]:
    """While the block runs, SIGTERM unwinds it (as Ctrl-C does) instead of ending the
    process on the spot, which would orphan Azurite and leave its state directory."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def demo_command(args: argparse.Namespace) -> int:
    output = Output(bool(args.json), output_format(args), args.query)
    configure_logging(bool(args.verbose), quiet=True)
    started = time.monotonic()
    try:
        with _stopped_by_sigterm():
            acts = run_demo(output, args.instances)
    except Terminated as terminated:
        sys.stderr.write("cmk demo: terminated; the sandbox and Azurite were stopped\n")
        return int(terminated.code or 1)
    except (BrokenPipeError, OutputFailed):
        raise  # the reader of stdout is gone (cmk.cli ends quietly)
    except Exception as error:
        return fail(args, output, error)
    code = EXIT_OK if acts and all(a.ok for a in acts) else EXIT_FINDINGS
    _results(output, acts, round(time.monotonic() - started, 1), code)
    return code
