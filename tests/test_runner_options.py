"""runner/options.py: the summary's counts and exit-code policy, without the CLI."""

from __future__ import annotations

import signal
from pathlib import Path

from gradcam_cli.events import EventLog
from gradcam_cli.runner.options import STAGES, RunOptions, RunSummary


def test_exit_code_policy() -> None:
    summary = RunSummary()
    assert summary.exit_code == 0
    summary.failed = 1
    assert summary.exit_code == 1
    summary.interrupted_by = signal.SIGINT
    assert summary.exit_code == 130
    summary.interrupted_by = signal.SIGTERM
    assert summary.exit_code == 143


def test_account_counts_records_skips_and_failures(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    events = EventLog(log)
    summary, _ = RunSummary.start(tmp_path)
    ok = {"status": "ok", "path": "a.jpg", "source": "/x/a.jpg", "error": None}
    bad = {"status": "error", "path": "b.jpg", "source": "/x/b.jpg", "error": {"type": "DecodeError", "message": "m"}}
    summary.account([ok, bad], events, progress=None, skipped=2)
    summary.count_skipped(1)
    events.close()
    assert (summary.total, summary.ok, summary.failed, summary.skipped) == (5, 1, 1, 3)
    assert '"image_failed"' in log.read_text() and "b.jpg" in log.read_text()
    summary.complete = True
    assert summary.line().startswith("2 new images: 1 ok, 1 failed; 3 already done (skipped)")


def test_stage_laps_and_the_json_summary() -> None:
    summary = RunSummary()
    mark = summary.lap("decode", 0.0)
    assert mark > 0 and summary.stage_seconds["decode"] == mark
    data = summary.as_dict()
    assert set(data["stage_seconds"]) == set(STAGES) and data["exit_code"] == 0 and data["manifest"] is None


def test_run_options_default_to_a_plain_local_run() -> None:
    options = RunOptions(inputs=["images"])
    assert (options.backend, options.shard, options.resume, options.overwrite) == ("local", None, True, False)
