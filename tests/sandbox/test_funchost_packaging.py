"""The Functions packaging files: local.settings.json.example carries every setting and
validates, .funcignore keeps the dev tree out and the app in, host.json is strict JSON."""

from __future__ import annotations

import json
from pathlib import Path

from cmk.settings import ENVIRONMENT_VARIABLES, Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def _ignore_patterns() -> list[str]:
    lines = (REPO_ROOT / ".funcignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


class TestLocalSettingsExample:
    def test_every_setting_is_present(self):
        """Every CMK_* setting and the Functions runtime settings have an entry."""
        example = json.loads((REPO_ROOT / "local.settings.json.example").read_text())
        values = example["Values"]
        expected = {n for n in ENVIRONMENT_VARIABLES if "__" not in n}  # identity: docs only
        assert expected <= set(values)
        assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
        assert example["IsEncrypted"] is False

    def test_values_validate(self):
        """The example's values pass the app's own settings validation."""
        values = json.loads((REPO_ROOT / "local.settings.json.example").read_text())["Values"]
        settings = Settings.from_environ(values)
        assert settings.job_queue == "cmk-rotation-jobs"

    def test_configuration_doc_shows_the_example(self):
        """docs/configuration.md shows the example file as it is, not an older copy."""
        doc = (REPO_ROOT / "docs" / "configuration.md").read_text()
        section = doc.split("## local.settings.json example", 1)[1]
        shown = section.split("```json\n", 1)[1].split("```", 1)[0]
        assert shown == (REPO_ROOT / "local.settings.json.example").read_text()

    def test_real_file_is_git_ignored(self):
        """local.settings.json (with secrets) is ignored by git and by the package."""
        assert "local.settings.json" in (REPO_ROOT / ".gitignore").read_text().splitlines()
        assert "local.settings.json" in _ignore_patterns()


class TestFuncignore:
    def test_dev_tree_is_excluded(self):
        """Tests, bench, infra, docs, the sandbox, venvs and node_modules stay out."""
        patterns = set(_ignore_patterns())
        for required in (
            "tests/",
            "bench/",
            "infra/",
            "docs/",
            "cmk/sandbox/",
            ".venv*/",
            "node_modules/",
            "Makefile",
        ):
            assert required in patterns, required

    def test_app_files_are_kept(self):
        """No pattern names the files the Functions host needs."""
        patterns = _ignore_patterns()
        for kept in ("function_app.py", "host.json", "requirements.txt", "cmk/", "cmk"):
            assert kept not in patterns
        assert not any(
            p.startswith(("function", "host", "requirements", "cmk/*")) for p in patterns
        )


class TestHostJson:
    def test_strict_json_with_bundle_range(self):
        """host.json parses as strict JSON and pins the v4 extension bundle range."""
        host = json.loads((REPO_ROOT / "host.json").read_text())
        assert host["version"] == "2.0"
        assert host["extensionBundle"] == {
            "id": "Microsoft.Azure.Functions.ExtensionBundle",
            "version": "[4.*, 5.0.0)",
        }
        assert "retry" not in host  # queues own their retries; see docs/functions.md
        sampling = host["logging"]["applicationInsights"]["samplingSettings"]
        assert sampling["excludedTypes"] == "Request;Exception;Trace"
