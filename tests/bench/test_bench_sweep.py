"""bench.sweep's request figures: every Storage request a sweep makes, counted where it
leaves the process (the HTTP transport), against the minimum a sweep must make."""

from __future__ import annotations

from bench.sweep import run


class TestSweepBenchRequests:
    def test_counts_every_table_query_and_enqueue(self) -> None:
        """A small estate's timed sweep (real sandbox and Azurite): the figures hold the
        four Table queries (outbox, open alerts, open ledger rows, unreadable marks), the
        table and queue creates and one enqueue per stale account, and so does the
        minimum."""
        result = run(400, 4, dry_run=False, in_process=True)

        made, minimum = result["requests_made"], result["requests_minimum"]
        assert made["table_query_pages"] == minimum["table_query_pages"] == 4
        stale = result["stale_accounts"]
        assert stale > 0
        assert made["enqueues"] == minimum["enqueues"] == stale == result["queued_after_sweep"]
        assert made["storage_setup"] == minimum["storage_setup"] == 2
        assert made["storage_other"] == 0
        assert result["storage_requests_failed"] == 0

    def test_dry_run_counts_its_reads_of_a_missing_table(self) -> None:
        """A dry run creates and sends nothing; its two Table queries (open ledger rows,
        unreadable marks) are counted though the table does not exist (404)."""
        result = run(400, 4, dry_run=True, in_process=True)

        made, minimum = result["requests_made"], result["requests_minimum"]
        assert made["table_query_pages"] == minimum["table_query_pages"] == 2
        assert made["enqueues"] == made["storage_setup"] == minimum["storage_setup"] == 0
        assert result["storage_requests_failed"] == 2
