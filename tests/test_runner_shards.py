"""Shards (--shard K/N) in one output folder, and `gradcam merge`: same manifest as a single run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.errors import ConfigError
from gradcam_cli.runner.lock import OutputLock
from gradcam_cli.runner.shards import parse_shard, shard_of
from tests.conftest import REPO, random_image, write_slow_config

runner = CliRunner()
VOLATILE = ("started_at", "finished_at")  # timestamps differ between any two runs


def gradcam(*args: str):
    return runner.invoke(app, list(args))


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def comparable(data: dict) -> dict:
    """A manifest without what legitimately differs between two output folders and two runs."""
    data = {k: v for k, v in data.items() if k not in VOLATILE}
    data["config"] = dict(data["config"], output={k: v for k, v in data["config"]["output"].items() if k != "dir"})
    return data


def output_files(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for sub in ("heatmaps", "overlays")
        for p in (out / sub).rglob("*")
        if p.is_file()
    }


@pytest.fixture
def many_images(image_folder: Path) -> Path:
    for i in range(9):
        random_image(image_folder / f"d{i % 3}" / f"{i:02d}.png", 30 + 3 * i, 24 + 2 * i, seed=20 + i)
    (image_folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return image_folder


def test_parse_shard_and_stable_assignment() -> None:
    assert parse_shard("1/4") == parse_shard(" 1 / 4 ") and parse_shard("4/4").label == "4/4"
    for bad in ("0/4", "5/4", "1-4", "0/0", "-1/4", "a/b", "2", "١/٣"):  # Arabic-Indic digits are not shard numbers
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)
    # shards count from 1 where users see them; the bucket and the file names stay 0-based (existing folders)
    first = parse_shard("1/4")
    assert (first.index, first.count, first.label) == (0, 4, "1/4")
    assert first.records_name == "records.shard-0-of-4.jsonl" and first.lock_name == ".gradcam.shard-0-of-4.lock"
    assert parse_shard("4/4").complete_name == "complete.shard-3-of-4.json"
    with pytest.raises(ConfigError, match=r"shards count from 1.*SLURM_ARRAY_TASK_ID \+ 1.*JOB_COMPLETION_INDEX \+ 1"):
        parse_shard("0/4")
    # sha256 of the record path mod N: fixed values, so a growing archive keeps its assignment
    assert [shard_of(p, 3) for p in ("a.jpg", "a.png", "sub/b.png")] == [1, 2, 2]
    assert shard_of("photos/2024/img_00001.jpg", 8) == 2
    paths = [f"dir{i % 7}/img_{i:05d}.jpg" for i in range(3000)]
    counts = [sum(1 for p in paths if shard_of(p, 4) == k) for k in range(4)]
    assert sum(counts) == 3000 and min(counts) > 650  # a partition, roughly balanced


def test_bad_shard_option_is_a_usage_error(config_file, image_folder: Path, tmp_path: Path) -> None:
    for bad in ("0/3", "4/3", "1of3"):
        result = gradcam("run", "-c", str(config_file()), "-i", str(image_folder), "--shard", bad)
        assert result.exit_code == 2 and "--shard" in result.stderr and "from 1" in result.stderr, result.output
    overwrite = gradcam("run", "-c", str(config_file()), "-i", str(image_folder), "--shard", "1/2", "--overwrite")
    assert overwrite.exit_code == 2 and "--overwrite cannot be combined with --shard" in overwrite.stderr
    assert not (tmp_path / "out").exists()


def test_three_shards_merge_into_the_single_run_manifest(config_file, many_images: Path, tmp_path: Path) -> None:
    # One image per batch: a shard's batches hold other images than a single run's, and batched CPU kernels
    # are not bit-identical across batch compositions (raw_max can differ in its last bits; the heatmaps
    # usually do not). With batch 1 both runs compute exactly the same, so records must be equal exactly.
    config = str(config_file(runtime={"batch_size": 1}))
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert gradcam("run", "-c", config, "-i", str(many_images), "-o", str(single), "-q").exit_code == 1

    codes = [
        gradcam("run", "-c", config, "-i", str(many_images), "-o", str(sharded), "--shard", f"{k}/3").exit_code
        for k in (1, 2)
    ]
    assert set(codes) <= {0, 1}
    assert not (sharded / "manifest.json").exists()  # shard 3 has not run: no manifest yet
    early = gradcam("merge", str(sharded))
    assert early.exit_code == 2 and "3/3" in early.stderr and "not completed" in early.stderr

    dry = gradcam("run", "-c", config, "-i", str(many_images), "-o", str(sharded), "--shard", "3/3", "--dry-run")
    listed = [line.split()[1] for line in dry.stdout.splitlines() if line.startswith("process")]
    assert listed and all(shard_of(path, 3) == 2 for path in listed)
    assert "in other shards" in dry.stderr

    last = gradcam("run", "-c", config, "-i", str(many_images), "-o", str(sharded), "--shard", "3/3")
    assert last.exit_code in (0, 1) and "merged 3 shards" in last.stderr, last.output
    expected = manifest(single)
    assert comparable(manifest(sharded)) == comparable(expected)  # records, order, summary, header
    assert expected["summary"] == {"total": 13, "ok": 12, "failed": 1}
    assert output_files(sharded) == output_files(single)  # heatmaps and overlays, byte for byte
    for k in range(3):
        assert (sharded / f"records.shard-{k}-of-3.jsonl").exists()
        assert (sharded / f"complete.shard-{k}-of-3.json").exists()
    assert not (sharded / "records.jsonl").exists()

    merged = gradcam("merge", str(sharded), "--json")
    assert merged.exit_code == 0 and json.loads(merged.stdout)["total"] == 13
    assert comparable(manifest(sharded)) == comparable(expected)

    # resume per shard: nothing left to do in shard 2, and the merge still gives the same records
    again = gradcam("run", "-c", config, "-i", str(many_images), "-o", str(sharded), "--shard", "2/3", "-q", "--json")
    mine = sum(1 for line in (sharded / "records.shard-1-of-3.jsonl").read_text().splitlines() if '"ok"' in line)
    assert json.loads(again.stdout)["ok"] == 0 and json.loads(again.stdout)["skipped"] == mine
    assert manifest(sharded)["images"] == expected["images"]


def test_merge_detects_duplicates_and_mixed_configs(config_file, image_folder: Path, tmp_path: Path) -> None:
    config = str(config_file())
    out = tmp_path / "out"
    for k in range(2):
        assert gradcam("run", "-c", config, "-i", str(image_folder), "--shard", f"{k + 1}/2", "-q").exit_code == 0
    assert manifest(out)["summary"]["total"] == 3

    other = str(config_file(cam={"method": "layercam"}))
    refused = gradcam("run", "-c", other, "-i", str(image_folder), "--shard", "1/2", "-q")
    assert refused.exit_code == 2 and "different config" in refused.stderr and "cam.method" in refused.stderr
    config_file()  # the fixture writes one file: back to the first config

    marker = out / "complete.shard-1-of-2.json"
    data = json.loads(marker.read_text())
    marker.write_text(json.dumps(dict(data, config_hash="0" * 64)))  # e.g. a folder assembled by hand
    mixed = gradcam("merge", str(out))
    assert mixed.exit_code == 2 and "2/2" in mixed.stderr and "config" in mixed.stderr
    marker.write_text(json.dumps(data))

    # the shard count changes between runs: every image is redone under N=3, and the merge refuses
    for k in range(3):
        result = gradcam("run", "-c", config, "-i", str(image_folder), "--shard", f"{k + 1}/3", "-q")
        assert result.exit_code == 0
    assert "more than one records file" in result.stderr and "warning" in result.stderr  # the last shard says so
    duplicated = gradcam("merge", str(out))
    assert duplicated.exit_code == 2 and "more than one records file" in duplicated.stderr
    assert "-of-2.jsonl and records.shard-" in duplicated.stderr
    for k in range(2):
        (out / f"records.shard-{k}-of-2.jsonl").unlink()
        (out / f"complete.shard-{k}-of-2.json").unlink()
    assert gradcam("merge", str(out)).exit_code == 0

    empty = tmp_path / "empty"
    empty.mkdir()
    assert gradcam("merge", str(empty)).exit_code == 2


def test_plain_runs_and_shards_exclude_each_other(config_file, image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    config = str(config_file())
    with OutputLock(out, shared=True):  # a shard at work
        plain = gradcam("run", "-c", config, "-i", str(image_folder), "-q")
        assert plain.exit_code == 3 and "another gradcam run" in plain.stderr
        assert gradcam("run", "-c", config, "-i", str(image_folder), "--shard", "1/2", "-q").exit_code == 0
    with OutputLock(out, ".gradcam.shard-1-of-2.lock"):  # the same shard twice (2/2: its files are 1-of-2)
        assert gradcam("run", "-c", config, "-i", str(image_folder), "--shard", "2/2", "-q").exit_code == 3
    with OutputLock(out):  # a plain run at work
        assert gradcam("run", "-c", config, "-i", str(image_folder), "--shard", "2/2", "-q").exit_code == 3
        assert gradcam("merge", str(out)).exit_code == 3


# ------------------------------------------------------------------ real processes, real signals
def _slow_command(tmp_path: Path, tiny_weights: Path, shard: str) -> tuple[list[str], Path]:
    folder = tmp_path / "many"
    if not folder.exists():
        for i in range(24):  # shard 1/2 gets 8 of these names, shard 2/2 gets 16
            random_image(folder / f"{i:02d}.png", 40, 30, seed=i)
    config = write_slow_config(tmp_path / "slow.yaml", tiny_weights, batch_size=1, workers=0)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "gradcam_cli.cli", "run", "-c", str(config), "-i", str(folder), "-o", str(out)]
    return [*command, "--shard", shard], out


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def test_concurrent_shards_and_an_interrupted_one(tmp_path: Path, tiny_weights: Path) -> None:
    first, out = _slow_command(tmp_path, tiny_weights, "1/2")
    second, _ = _slow_command(tmp_path, tiny_weights, "2/2")
    processes = [subprocess.Popen(c, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in (first, second)]
    deadline = time.time() + 120
    while time.time() < deadline:  # both write records into the same folder at the same time
        if _lines(out / "records.shard-0-of-2.jsonl") >= 1 and _lines(out / "records.shard-1-of-2.jsonl") >= 2:
            break
        assert all(p.poll() is None for p in processes), "a shard ended before both were running"
        time.sleep(0.05)
    processes[1].send_signal(signal.SIGINT)  # shard 2/2 (16 images) is interrupted mid-way
    results = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 130], [r[1].decode()[-2000:] for r in results]
    assert (out / "complete.shard-0-of-2.json").exists() and not (out / "complete.shard-1-of-2.json").exists()
    assert not (out / "manifest.json").exists()
    waiting = gradcam("merge", str(out))
    assert waiting.exit_code == 2 and "2/2" in waiting.stderr

    finished = gradcam(*second[3:])  # resume shard 2/2, in this process (saves a Python start)
    assert finished.exit_code == 0 and "merged 2 shards" in finished.stderr, finished.output
    images = manifest(out)["images"]
    assert [r["path"] for r in images] == [f"{i:02d}.png" for i in range(24)]
    assert all(r["status"] == "ok" for r in images)
    for record in images:
        Image.open(out / record["cams"][0]["heatmap"]).load()


@pytest.mark.parametrize("shard", [None, "1/2"])
def test_a_folder_created_while_the_model_loads_is_still_locked(
    config_file, image_folder: Path, tmp_path: Path, monkeypatch, shard: str | None
) -> None:
    """Array jobs start together on a new folder: a sibling may create it while this run loads its model."""
    import gradcam_cli.runner.prepare as pipeline  # run() imports prepare when it needs a model
    from gradcam_cli.runner.shards import Shard

    out = tmp_path / "out"
    sibling = OutputLock(out, Shard(0, 2).lock_name if shard else ".gradcam.lock")
    real_prepare = pipeline.prepare

    def prepare_while_a_sibling_starts(config, build=None):
        out.mkdir()
        sibling.__enter__()
        return real_prepare(config, build)

    monkeypatch.setattr(pipeline, "prepare", prepare_while_a_sibling_starts)
    try:
        result = gradcam(
            "run", "-c", str(config_file()), "-i", str(image_folder), "-q", *(["--shard", shard] if shard else [])
        )
    finally:
        sibling.__exit__()
    assert result.exit_code == 3, result.output
    assert not list(out.glob("records*.jsonl")) and not (out / "run.json").exists()


def test_a_sibling_with_another_config_is_refused_before_its_first_batch(config_file, tmp_path: Path) -> None:
    from gradcam_cli.config import load_config
    from gradcam_cli.io.identity import run_identity
    from gradcam_cli.runner.resume import claim_run_info

    out = tmp_path / "out"
    out.mkdir()
    first = load_config(config_file())
    other = load_config(config_file(cam={"method": "layercam"}))
    claim_run_info(out, first, out / "records.shard-0-of-2.jsonl")  # shard 0 starts; no record written yet
    with pytest.raises(ConfigError, match="cam.method"):
        claim_run_info(out, other, out / "records.shard-1-of-2.jsonl")
    assert json.loads((out / "run.json").read_text())["config_hash"] == run_identity(first).hash


def test_merge_writes_the_report_when_the_config_asks(config_file, image_folder: Path, tmp_path: Path) -> None:
    config = str(config_file(output={"report": True}))
    for k in (1, 2):
        assert gradcam("run", "-c", config, "-i", str(image_folder), "--shard", f"{k}/2", "-q").exit_code == 0
    page = tmp_path / "out" / "index.html"
    assert page.is_file()  # the last shard merged and wrote it
    page.unlink()
    assert gradcam("merge", str(tmp_path / "out")).exit_code == 0
    assert page.is_file() and "sub/b.png" in page.read_text()


def test_shards_of_a_previous_release_folder_merge_after_one_is_rerun(
    config_file, image_folder: Path, tmp_path: Path
) -> None:
    """An upgrade between two nights: the shard rerun first migrates run.json; the others' markers, written
    by the earlier release with its config_hash, still merge."""
    from gradcam_cli.config import load_config

    out, config = tmp_path / "out", config_file()
    for k in (1, 2):
        assert gradcam("run", "-c", str(config), "-i", str(image_folder), "--shard", f"{k}/2", "-q").exit_code == 0
    old_hash = load_config(config).config_hash()
    old = {"config_hash": old_hash, "config": json.loads((out / "run.json").read_text())["config"]}
    (out / "run.json").write_text(json.dumps(old, sort_keys=True, indent=2))  # as gradcam-cli 0.1 wrote it
    for marker in out.glob("complete.shard-*.json"):
        data = json.loads(marker.read_text())
        data["header"].pop("identity")
        marker.write_text(
            json.dumps(dict(data, config_hash=old_hash, header=dict(data["header"], config_hash=old_hash)))
        )
    (out / "manifest.json").unlink()

    again = gradcam("run", "-c", str(config), "-i", str(image_folder), "--shard", "1/2")
    assert again.exit_code == 0 and "merged 2 shards" in again.stderr, again.output
    info = json.loads((out / "run.json").read_text())
    assert info["migrated_from"] == old_hash and manifest(out)["config_hash"] == info["config_hash"] != old_hash
    assert manifest(out)["summary"]["total"] == 3


def test_shards_merge_their_metric_passes(config_file, image_folder: Path, tmp_path: Path) -> None:
    config = str(config_file(cam={"metrics": ["confidence_change"]}))
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert gradcam("run", "-c", config, "-i", str(image_folder), "-o", str(single), "-q").exit_code == 0
    for k in (1, 2):
        assert (
            gradcam("run", "-c", config, "-i", str(image_folder), "-o", str(sharded), "--shard", f"{k}/2").exit_code
            == 0
        )
    assert manifest(sharded)["run"]["metric_passes"] == manifest(single)["run"]["metric_passes"] == 3  # 1 per image
