"""Run checkov over the Bicep templates and fail on what its exit code does not show.

checkov's exit code ignores parse errors (a template it cannot parse is simply not
checked), so this gate reads the JSON report instead and fails when any check failed,
any file did not parse, any check was skipped without a written reason, or nothing was
scanned at all. It prints one summary line either way.

Usage: python infra/checkov_gate.py --checkov .venv-checkov/bin/checkov infra
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TIMEOUT_SECONDS = 900


@dataclass
class Totals:
    """What checkov reported, summed over the report's framework sections."""

    passed: int = 0
    failed: int = 0
    skipped: int = 0
    parsing_errors: int = 0
    resources: int = 0
    failures: list[str] = field(default_factory=list)
    unexplained_skips: list[str] = field(default_factory=list)
    unparsed_files: list[str] = field(default_factory=list)

    def line(self) -> str:
        """The one-line summary."""
        return (
            f"checkov bicep: passed={self.passed} failed={self.failed} skipped={self.skipped}"
            f" parsing_errors={self.parsing_errors} resources={self.resources}"
        )

    def problems(self) -> list[str]:
        """Why the gate fails; empty when it passes."""
        found = [f"failed check: {failure}" for failure in self.failures]
        if self.failed and not self.failures:
            found.append(f"{self.failed} failed check(s)")
        if self.parsing_errors:
            files = f": {', '.join(self.unparsed_files)}" if self.unparsed_files else ""
            found.append(f"{self.parsing_errors} file(s) checkov could not parse{files}")
        found += [f"skipped without a reason: {skip}" for skip in self.unexplained_skips]
        if self.resources == 0:
            found.append("no Bicep resources were scanned")
        return found


def _count(value: Any) -> int:
    """A summary number; parsing_errors may be a count or a list of files."""
    if isinstance(value, list):
        return len(value)
    return int(value or 0)


def _describe(check: dict[str, Any]) -> str:
    return (
        f"{check.get('check_id')} {check.get('resource')} in {check.get('file_path')}"
        f" ({check.get('check_name')})"
    )


def summarize(report: Any) -> Totals:
    """Sum a checkov JSON report: one framework section (a dict) or several (a list)."""
    sections: list[Any] = report if isinstance(report, list) else [report]
    totals = Totals()
    for section in sections:
        if not isinstance(section, dict):
            continue
        summary = section.get("summary", {})
        totals.passed += _count(summary.get("passed"))
        totals.failed += _count(summary.get("failed"))
        totals.skipped += _count(summary.get("skipped"))
        totals.parsing_errors += _count(summary.get("parsing_errors"))
        totals.resources += _count(summary.get("resource_count"))
        results = section.get("results", {})
        unparsed = results.get("parsing_errors") or summary.get("parsing_errors")
        if isinstance(unparsed, list):
            totals.unparsed_files += [str(path) for path in unparsed]
        totals.failures += [_describe(check) for check in results.get("failed_checks", [])]
        for check in results.get("skipped_checks", []):
            reason = str(check.get("check_result", {}).get("suppress_comment") or "").strip()
            if not reason or reason.lower() == "no comment provided":
                totals.unexplained_skips.append(_describe(check))
    return totals


def run_checkov(checkov: str, directory: str) -> Any:
    """Run checkov on the directory's Bicep files and return its parsed JSON report."""
    command = [
        checkov,
        "--directory",
        directory,
        "--framework",
        "bicep",
        "--output",
        "json",
        "--skip-download",
        "--compact",
    ]
    completed = subprocess.run(  # noqa: S603 - a fixed argument list, no shell
        command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False
    )
    try:
        return json.loads(completed.stdout)
    except json.JSONDecodeError:
        sys.stderr.write(completed.stderr[-4000:])
        raise SystemExit(
            f"checkov gate: checkov (exit {completed.returncode}) printed no JSON report"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gate; 0 when checkov found nothing to fix, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkov", required=True, help="path to the checkov executable")
    parser.add_argument(
        "--report", help="read this saved checkov JSON report instead of running checkov"
    )
    parser.add_argument("directory", help="directory with the Bicep templates, e.g. infra")
    args = parser.parse_args(argv)
    if args.report:
        report = json.loads(Path(args.report).read_text(encoding="utf-8"))
    else:
        if not Path(args.checkov).exists():
            parser.error(f"checkov not found at {args.checkov}")
        report = run_checkov(args.checkov, args.directory)
    totals = summarize(report)
    print(totals.line())
    problems = totals.problems()
    for problem in problems:
        print(f"checkov gate: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
