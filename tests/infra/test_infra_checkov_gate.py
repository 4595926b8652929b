"""infra/checkov_gate.py: the gate fails on what checkov's exit code does not show."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"


def load_gate() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "checkov_gate", ROOT / "infra" / "checkov_gate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gate = load_gate()


def section(**summary: Any) -> dict[str, Any]:
    base = {"passed": 10, "failed": 0, "skipped": 0, "parsing_errors": 0, "resource_count": 5}
    base.update(summary)
    return {"check_type": "bicep", "results": {"failed_checks": []}, "summary": base}


def run_on_report(tmp_path: Path, report: Any) -> int:
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(report), encoding="utf-8")
    result: int = gate.main(["--checkov", "unused", "--report", str(saved), "infra"])
    return result


class TestSummarize:
    """Reading the report: a dict or a list of sections, counts or lists."""

    def test_clean_report_passes(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """No failures, no parse errors: exit 0 and a one-line summary."""
        assert run_on_report(tmp_path, section()) == 0
        out = capsys.readouterr().out.strip()
        assert out == ("checkov bicep: passed=10 failed=0 skipped=0 parsing_errors=0 resources=5")

    def test_failed_check_fails(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A failed check fails the gate and is named on stderr."""
        report = section(failed=1)
        report["results"]["failed_checks"] = [
            {
                "check_id": "CKV_AZURE_3",
                "check_name": "Ensure secure transfer",
                "resource": "Microsoft.Storage/storageAccounts.st",
                "file_path": "/app/storage.bicep",
            }
        ]
        assert run_on_report(tmp_path, report) == 1
        assert "CKV_AZURE_3" in capsys.readouterr().err

    def test_parsing_error_count_fails(self, tmp_path: Path) -> None:
        """summary.parsing_errors as a number fails the gate."""
        assert run_on_report(tmp_path, section(parsing_errors=2)) == 1

    def test_parsing_error_list_fails(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """summary.parsing_errors as a list of files fails the gate and names them."""
        assert run_on_report(tmp_path, section(parsing_errors=["/infra/app/x.bicep"])) == 1
        assert "/infra/app/x.bicep" in capsys.readouterr().err

    def test_list_of_sections_is_summed(self, tmp_path: Path) -> None:
        """Several framework sections are summed; a failure in any one fails the gate."""
        totals = gate.summarize([section(), section(passed=3, failed=2)])
        assert (totals.passed, totals.failed, totals.resources) == (13, 2, 10)
        assert run_on_report(tmp_path, [section(), section(failed=2)]) == 1

    def test_skip_without_reason_fails(self, tmp_path: Path) -> None:
        """A skipped check whose suppress comment is empty fails the gate."""
        report = section(skipped=1)
        report["results"]["skipped_checks"] = [
            {
                "check_id": "CKV_AZURE_35",
                "check_result": {"suppress_comment": "No comment provided"},
            }
        ]
        assert run_on_report(tmp_path, report) == 1
        report["results"]["skipped_checks"][0]["check_result"]["suppress_comment"] = "VNet variant"
        assert run_on_report(tmp_path, report) == 0

    def test_nothing_scanned_fails(self, tmp_path: Path) -> None:
        """An empty scan (wrong directory, no Bicep found) is not a pass."""
        assert run_on_report(tmp_path, section(passed=0, resource_count=0)) == 1
        assert run_on_report(tmp_path, []) == 1


@pytest.mark.skipif(not CHECKOV.exists(), reason="checkov venv not set up (make infra-check)")
class TestWithCheckov:
    """The real checkov: exit 0 on a file it cannot parse, which the gate turns into a failure."""

    def test_unparsable_bicep_fails_the_gate(self, tmp_path: Path) -> None:
        """A broken template makes the gate exit 1 although checkov itself exits 0."""
        (tmp_path / "broken.bicep").write_text(
            "resource x 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n  name: \n",
            encoding="utf-8",
        )
        assert gate.main(["--checkov", str(CHECKOV), str(tmp_path)]) == 1

    def test_infra_passes(self, tmp_path: Path) -> None:
        """The repository's infra/ passes: no failed checks, no parse errors."""
        copy = tmp_path / "infra"
        shutil.copytree(ROOT / "infra", copy, ignore=shutil.ignore_patterns("__pycache__"))
        assert gate.main(["--checkov", str(CHECKOV), str(copy)]) == 0
