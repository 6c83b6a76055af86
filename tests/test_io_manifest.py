"""io/manifest.py: the records file and what resume reads back from it."""

from __future__ import annotations

from pathlib import Path

from gradcam_cli.io.manifest import RecordsWriter, load_done, refreshed_records


def test_refreshed_records_copy_the_latest_ok_record_with_the_new_size_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    writer = RecordsWriter(path)
    writer.write_batch(
        [
            {"path": "a.jpg", "status": "ok", "sha256": "1", "file_size": 10, "mtime_ns": 5, "cams": [{"rank": 0}]},
            {"path": "b.jpg", "status": "ok", "sha256": "2", "file_size": 20, "mtime_ns": 5},
            {"path": "c.jpg", "status": "ok", "sha256": "3", "file_size": 30, "mtime_ns": 5},
        ]
    )
    writer.write_batch(
        [
            {"path": "a.jpg", "status": "ok", "sha256": "4", "file_size": 11, "mtime_ns": 6},  # a later result
            {"path": "b.jpg", "status": "error", "error": {"type": "X"}},  # failed since: retried, not refreshed
        ]
    )
    stats = {"a.jpg": (11, 9), "b.jpg": (20, 9), "missing.jpg": (1, 1)}
    refreshed = refreshed_records(path, stats)
    assert refreshed == [{"path": "a.jpg", "status": "ok", "sha256": "4", "file_size": 11, "mtime_ns": 9}]
    writer.write_batch(refreshed)
    writer.close()
    done = load_done(path)
    assert (done["a.jpg"].file_size, done["a.jpg"].mtime_ns, done["a.jpg"].sha256) == (11, 9, "4")
    assert "b.jpg" not in done and done["c.jpg"].mtime_ns == 5  # untouched ones stay as they were
