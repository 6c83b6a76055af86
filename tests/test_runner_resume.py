"""Unattended runs: resume, config guard, lock, interruption, archives, filters, dry-run, event log."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.runner.lock import OutputLock
from tests.conftest import REPO, gradcam_command, random_image, wait_for_records, write_slow_config

runner = CliRunner()


def gradcam(*args: str):
    return runner.invoke(app, list(args))


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_rerun_processes_only_new_and_changed_images(config_file, image_folder: Path, tmp_path: Path) -> None:
    config = str(config_file())
    out = tmp_path / "out"
    assert gradcam("run", "-c", config, "-i", str(image_folder), "-q").exit_code == 0
    first = manifest(out)
    heatmap = out / "heatmaps" / "a.jpg.png"
    written = heatmap.stat().st_mtime_ns

    again = gradcam("run", "-c", config, "-i", str(image_folder), "-q", "--json")
    assert again.exit_code == 0
    assert json.loads(again.stdout)["skipped"] == 3 and json.loads(again.stdout)["ok"] == 0
    assert heatmap.stat().st_mtime_ns == written  # nothing recomputed
    second = manifest(out)
    assert second["images"] == first["images"] and second["run"]["skipped"] == 3

    random_image(image_folder / "new.png", 20, 20, seed=11)  # the archive grows
    os.utime(image_folder / "a.png", ns=(1, 1))  # touched, same bytes: re-hashed, not recomputed
    random_image(image_folder / "sub" / "b.png", 30, 70, seed=12)  # changed content
    result = gradcam("run", "-c", config, "-i", str(image_folder), "-q", "--json")
    summary = json.loads(result.stdout)
    assert (summary["ok"], summary["skipped"]) == (2, 2)
    third = manifest(out)
    assert [r["path"] for r in third["images"]] == ["a.jpg", "a.png", "new.png", "sub/b.png"]
    assert third["summary"]["total"] == 4
    b_record = next(r for r in third["images"] if r["path"] == "sub/b.png")
    assert b_record["sha256"] != next(r for r in first["images"] if r["path"] == "sub/b.png")["sha256"]
    a_record = next(r for r in third["images"] if r["path"] == "a.png")
    assert a_record["mtime_ns"] == 1 and a_record == {
        **next(r for r in first["images"] if r["path"] == "a.png"),
        "mtime_ns": 1,
    }
    # the touched file's record was refreshed: the next run skips it by size and mtime, without reading it
    listed = gradcam("run", "-c", config, "-i", str(image_folder), "--dry-run")
    assert "skip     a.png  (done)" in listed.stdout and "re-hashed" not in listed.stdout

    forced = gradcam("run", "-c", config, "-i", str(image_folder), "-q", "--no-resume", "--json")
    assert json.loads(forced.stdout)["ok"] == 4
    assert [r["path"] for r in manifest(out)["images"]] == ["a.jpg", "a.png", "new.png", "sub/b.png"]


def test_failed_images_are_retried(config_file, image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "late.png").write_bytes(b"")
    config = str(config_file())
    assert gradcam("run", "-c", config, "-i", str(image_folder), "-q").exit_code == 1
    random_image(image_folder / "late.png", 16, 16, seed=3)
    assert gradcam("run", "-c", config, "-i", str(image_folder), "-q").exit_code == 0
    statuses = {r["path"]: r["status"] for r in manifest(tmp_path / "out")["images"]}
    assert statuses["late.png"] == "ok" and len(statuses) == 4


def test_different_config_is_refused_unless_overwrite(config_file, image_folder: Path, tmp_path: Path) -> None:
    assert gradcam("run", "-c", str(config_file()), "-i", str(image_folder), "-q").exit_code == 0
    other = str(config_file(cam={"method": "layercam"}))
    refused = gradcam("run", "-c", other, "-i", str(image_folder), "-q")
    assert refused.exit_code == 2
    assert "different config" in refused.stderr and "cam.method" in refused.stderr and "--overwrite" in refused.stderr
    assert manifest(tmp_path / "out")["method"] == "gradcam"  # untouched
    (tmp_path / "out" / "keep-me.txt").write_text("not ours")
    assert gradcam("run", "-c", other, "-i", str(image_folder), "-q", "--overwrite").exit_code == 0
    assert manifest(tmp_path / "out")["method"] == "layercam"
    assert (tmp_path / "out" / "keep-me.txt").exists()


def test_folders_of_an_older_version_stay_resumable(config_file, image_folder: Path, tmp_path: Path) -> None:
    """An upgrade that adds config keys (at their defaults) must not orphan the output folders of cron jobs."""
    assert gradcam("run", "-c", str(config_file()), "-i", str(image_folder), "-q").exit_code == 0
    run_info = tmp_path / "out" / "run.json"
    info = json.loads(run_info.read_text())
    del info["config"]["preprocess"]["channel_order"]  # as an older version wrote it: without the new keys
    info["config_hash"] = "0" * 64
    run_info.write_text(json.dumps(info))
    again = gradcam("run", "-c", str(config_file()), "-i", str(image_folder), "-q", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout.splitlines()[-1])["skipped"] == 3
    run_info.write_text(json.dumps(info))
    changed = gradcam("run", "-c", str(config_file(preprocess={"channel_order": "bgr"})), "-i", str(image_folder))
    assert changed.exit_code == 2 and "preprocess.channel_order" in changed.stderr


def test_torn_last_record_is_repaired(config_file, image_folder: Path, tmp_path: Path) -> None:
    config = str(config_file())
    assert gradcam("run", "-c", config, "-i", str(image_folder), "-q").exit_code == 0
    records = tmp_path / "out" / "records.jsonl"
    lines = records.read_text().splitlines(keepends=True)
    records.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # crash mid-write
    assert gradcam("run", "-c", config, "-i", str(image_folder), "-q").exit_code == 0
    result = manifest(tmp_path / "out")
    assert [r["path"] for r in result["images"]] == ["a.jpg", "a.png", "sub/b.png"]
    assert all(line.endswith("\n") for line in records.read_text().splitlines(keepends=True))


def test_second_run_is_refused_while_the_first_holds_the_lock(config_file, image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with OutputLock(out):
        started = time.perf_counter()
        result = gradcam("run", "-c", str(config_file()), "-i", str(image_folder), "-q")
        assert time.perf_counter() - started < 5  # exits promptly, without loading a model
    assert result.exit_code == 3 and "another gradcam run" in result.stderr
    assert not (out / "manifest.json").exists()


def test_stale_lock_of_a_dead_run_is_taken_over(config_file, image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / ".gradcam.lock").write_text(json.dumps({"pid": 999999, "host": "gone", "started": "yesterday"}))
    log = tmp_path / "events.jsonl"
    result = gradcam("run", "-c", str(config_file()), "-i", str(image_folder), "-q", "--log-file", str(log))
    assert result.exit_code == 0
    first = json.loads(log.read_text().splitlines()[0])
    assert first["event"] == "stale_lock_taken_over" and first["previous_holder"]["pid"] == 999999


def test_disk_full_is_a_clear_error_and_records_stay_valid(
    config_file, image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from gradcam_cli.io import outputs

    calls = {"n": 0}
    real = outputs.atomic_write_bytes

    def fill_up(path, data, durable=False):
        calls["n"] += 1
        if calls["n"] > 4:  # the first two images fit, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, durable)

    monkeypatch.setattr(outputs, "atomic_write_bytes", fill_up)
    config = str(config_file(runtime={"batch_size": 1, "render_workers": 0}))  # in-process, so the patch applies
    result = gradcam("run", "-c", config, "-i", str(image_folder), "-q")
    assert result.exit_code == 4 and "No space left on device" in result.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    assert [r["path"] for r in records] == ["a.jpg", "a.png"]
    for record in records:
        Image.open(tmp_path / "out" / record["cams"][0]["heatmap"]).load()


def test_archives_are_read_member_by_member_and_never_escape(config_file, tmp_path: Path) -> None:
    png = io.BytesIO()
    Image.new("RGB", (24, 16), (200, 30, 30)).save(png, "PNG")
    data = png.getvalue()
    with zipfile.ZipFile(tmp_path / "batch.zip", "w") as archive:
        archive.writestr("photos/ok.png", data)
        archive.writestr("../../evil.png", data)
        archive.writestr("/abs/root.png", data)
        archive.writestr("notes.txt", b"ignored")
    with tarfile.open(tmp_path / "batch.tar.gz", "w:gz") as archive:
        for name in ("x/ok.png", "../up.png"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    out = tmp_path / "out"
    result = gradcam(
        "run", "-c", str(config_file()), "-i", str(tmp_path / "batch.zip"), "-i", str(tmp_path / "batch.tar.gz"), "-q"
    )
    assert result.exit_code == 1, result.output  # the link member is an error record
    images = {r["path"]: r for r in manifest(out)["images"]}
    assert set(images) == {
        "batch.zip/photos/ok.png",
        "batch.zip/__/__/evil.png",
        "batch.zip/abs/root.png",
        "batch.tar.gz/x/ok.png",
        "batch.tar.gz/__/up.png",
        "batch.tar.gz/link.png",
    }
    assert images["batch.zip/__/__/evil.png"]["member"] == "../../evil.png"
    assert images["batch.zip/__/__/evil.png"]["archive"] == str(tmp_path / "batch.zip")
    assert images["batch.tar.gz/link.png"]["error"]["type"] == "ArchiveLink"
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - {tmp_path / "batch.zip", tmp_path / "batch.tar.gz"}
    written -= {p for p in written if out in p.parents or p.name == "config.yaml"}
    assert written == set()  # nothing outside the output folder
    assert Image.open(out / images["batch.zip/__/__/evil.png"]["cams"][0]["heatmap"]).size == (24, 16)


def test_include_exclude_and_dry_run(config_file, image_folder: Path, tmp_path: Path) -> None:
    config = str(config_file(input={"include": ["*.png"], "exclude": ["sub/*"]}))
    dry = gradcam("run", "-c", config, "-i", str(image_folder), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "process  a.png" in dry.stdout
    assert "ignore   a.jpg  (not matched by input.include)" in dry.stdout
    assert "ignore   sub/b.png  (matched by input.exclude)" in dry.stdout
    assert not (tmp_path / "out").exists()
    assert gradcam("run", "-c", config, "-i", str(image_folder), "-q").exit_code == 0
    assert [r["path"] for r in manifest(tmp_path / "out")["images"]] == ["a.png"]
    again = gradcam("run", "-c", config, "-i", str(image_folder), "--dry-run")
    assert "skip     a.png  (done)" in again.stdout


def test_an_earlier_output_folder_inside_the_input_is_not_explained(
    config_file, image_folder: Path, tmp_path: Path
) -> None:
    config = str(config_file())
    earlier = image_folder / "gradcam-out"  # left by an earlier run with another -o
    assert gradcam("run", "-c", config, "-i", str(image_folder), "-o", str(earlier), "-q").exit_code == 0
    dry = gradcam("run", "-c", config, "-i", str(image_folder), "--dry-run")
    assert dry.exit_code == 0 and "ignore   gradcam-out  (a gradcam output folder, by its run.json)" in dry.stdout
    assert "heatmaps" not in dry.stdout
    assert gradcam("run", "-c", config, "-i", str(image_folder), "-q").exit_code == 0
    assert [r["path"] for r in manifest(tmp_path / "out")["images"]] == ["a.jpg", "a.png", "sub/b.png"]


def test_files_over_max_file_mb_are_error_records(config_file, image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(2 << 20))  # 2 MiB: never read
    result = gradcam("run", "-c", str(config_file(input={"max_file_mb": 1})), "-i", str(image_folder), "-q")
    assert result.exit_code == 1, result.output
    records = {r["path"]: r for r in manifest(tmp_path / "out")["images"]}
    assert records["huge.png"]["status"] == "error" and records["huge.png"]["error"]["type"] == "FileTooLarge"
    assert [p for p, r in records.items() if r["status"] == "ok"] == ["a.jpg", "a.png", "sub/b.png"]


def test_dry_run_loads_no_model(config_file, image_folder: Path) -> None:
    args = ["run", "-c", str(config_file()), "-i", str(image_folder), "--dry-run"]
    code = (
        "import sys; from typer.testing import CliRunner; from gradcam_cli.cli import app; "
        f"r = CliRunner().invoke(app, {args!r}); "
        "assert r.exit_code == 0, r.output; assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_a_rerun_with_nothing_new_imports_no_torch(config_file, image_folder: Path, tmp_path: Path) -> None:
    """The nightly cron over an unchanged archive: lock, config and what is left are checked first; with
    nothing to do it rewrites the manifest and exits 0 without importing torch or building the model."""
    config = str(config_file())
    assert gradcam("run", "-c", config, "-i", str(image_folder), "-q").exit_code == 0
    before = manifest(tmp_path / "out")
    args = ["run", "-c", config, "-i", str(image_folder), "--json"]
    code = (
        "import sys; from typer.testing import CliRunner; from gradcam_cli.cli import app; "
        f"r = CliRunner().invoke(app, {args!r}); "
        "assert r.exit_code == 0, r.output; assert 'torch' not in sys.modules, 'torch imported'; "
        "print(r.stdout.splitlines()[-1]); print(r.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[0])
    assert summary["nothing_new"] and summary["skipped"] == 3 and summary["folder"]["total"] == 3
    assert "Nothing new: all 3 images were already done" in done.stdout
    after = manifest(tmp_path / "out")
    assert after["images"] == before["images"] and after["summary"] == before["summary"]
    assert after["run"]["skipped"] == 3 and after["model"] == before["model"]
    (image_folder / "new.png").write_bytes((image_folder / "a.png").read_bytes())  # something new: the usual way
    again = gradcam("run", "-c", config, "-i", str(image_folder), "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["ok"] == 1


def test_event_log_and_json_summary(config_file, image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    log = tmp_path / "events.jsonl"
    result = gradcam("run", "-c", str(config_file()), "-i", str(image_folder), "-q", "--log-file", str(log), "--json")
    assert result.exit_code == 1
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["event"] for e in events] == ["run_started", "image_failed", "run_finished"]
    assert events[1]["path"] == "broken.jpg" and events[1]["error"]["type"]
    assert events[2]["summary"]["failed"] == 1 and events[2]["summary"]["exit_code"] == 1
    assert json.loads(result.stdout)["ok"] == 3
    text = gradcam(
        "run",
        "-c",
        str(config_file()),
        "-i",
        str(image_folder),
        "-q",
        "--log-file",
        str(tmp_path / "events.log"),
        "--log-format",
        "text",
    )
    assert text.exit_code == 1 and " run_finished " in (tmp_path / "events.log").read_text()


# ------------------------------------------------------------------ real processes, real signals
def _slow_run(tmp_path: Path, tiny_weights: Path, count: int = 16) -> tuple[list[str], Path]:
    folder = tmp_path / "many"
    for i in range(count):
        random_image(folder / f"{i:02d}.png", 40, 30, seed=i)
    config = write_slow_config(tmp_path / "slow.yaml", tiny_weights, batch_size=2, workers=1)
    out = tmp_path / "out"
    return gradcam_command(config, folder, out), out


def _assert_complete_exactly_once(out: Path, count: int) -> None:
    images = manifest(out)["images"]
    assert [r["path"] for r in images] == [f"{i:02d}.png" for i in range(count)]
    assert all(r["status"] == "ok" for r in images)
    for record in images:
        for key in ("heatmap", "overlay"):
            Image.open(out / record["cams"][0][key]).load()  # every PNG fully decodable
    for png in out.rglob("*.png"):
        Image.open(png).load()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGKILL, -9), (signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_run_loses_nothing_and_resumes(tmp_path: Path, tiny_weights: Path, signum: int, code: int) -> None:
    command, out = _slow_run(tmp_path, tiny_weights)
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_records(out, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr.decode()[-2000:]
    if signum != signal.SIGKILL:
        partial = manifest(out)  # written on the way out
        assert 0 < partial["summary"]["total"] < 16
    finished = subprocess.run(command, cwd=REPO, capture_output=True, timeout=300)
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    _assert_complete_exactly_once(out, 16)


def _png_header_claiming(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)  # a sliver of pixel data: the header is the attack
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_hostile_corpus(config_file, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    good = [random_image(corpus / "good1.jpg", 50, 40, seed=1), random_image(corpus / "x.jpg" / "inside.png", 30, 30)]
    jpeg = random_image(tmp_path / "src.jpg", 120, 90, seed=2).read_bytes()
    png = random_image(tmp_path / "src.png", 120, 90, seed=3).read_bytes()
    bad = {
        "zero.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) // 2],
        "text.jpg": b"this is a text file with a .jpg name\n",
        "random.png": os.urandom(4096),
        "bomb.png": _png_header_claiming(50000, 50000),
    }
    for name, data in bad.items():
        (corpus / name).write_bytes(data)
    os.symlink(corpus / "missing.jpg", corpus / "broken-link.jpg")
    os.symlink(corpus, corpus / "loop")
    with zipfile.ZipFile(corpus.parent / "members.zip", "w") as archive:
        archive.writestr("../../evil.png", png)
        archive.writestr("/etc/absolute.png", png)
    out = tmp_path / "out"
    result = gradcam("run", "-c", str(config_file()), "-i", str(corpus), "-i", str(tmp_path / "members.zip"), "-q")
    assert result.exit_code == 1, result.output
    images = {r["path"]: r for r in manifest(out)["images"]}
    ok = {p for p, r in images.items() if r["status"] == "ok"}
    assert ok == {
        "corpus/good1.jpg",
        "corpus/x.jpg/inside.png",
        "members.zip/__/__/evil.png",
        "members.zip/etc/absolute.png",
    }
    errors = {p.removeprefix("corpus/"): r["error"] for p, r in images.items() if r["status"] == "error"}
    assert set(errors) == set(bad) | {"broken-link.jpg"}
    assert errors["bomb.png"]["type"] == "DecompressionBomb" and "50000x50000" in errors["bomb.png"]["message"]
    assert errors["zero.jpg"]["type"] == "EmptyFile"
    assert errors["text.jpg"]["type"] == "NotAnImage" and errors["random.png"]["type"] in ("NotAnImage", "DecodeError")
    assert errors["broken-link.jpg"]["type"] == "ReadError"
    assert all(e["message"] for e in errors.values())
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and out not in p.parents]
    assert all(corpus in p.parents or p.parent == tmp_path for p in outside)
    assert not any(p.name.startswith(("evil", "absolute")) for p in outside)
    assert len(good) == 2


def retrain(path: Path, seed: int = 1) -> None:
    """New weights saved to the same checkpoint path (same size, other bytes)."""
    import torch

    from tests.assets.tiny_models import TinyCNN

    torch.manual_seed(seed)
    torch.save(TinyCNN().state_dict(), path)


def own_weights(tmp_path: Path, tiny_weights: Path, name: str = "ckpt/net.pt") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tiny_weights.read_bytes())
    return path


def test_a_retrained_checkpoint_at_the_same_path_is_refused(
    config_file, image_folder: Path, tmp_path: Path, tiny_weights: Path
) -> None:
    weights = own_weights(tmp_path, tiny_weights)
    config = str(config_file(model={"weights": str(weights)}))
    assert gradcam("run", "-c", config, "-i", str(image_folder), "-q").exit_code == 0
    before = hashlib.sha256(weights.read_bytes()).hexdigest()
    retrain(weights)
    after = hashlib.sha256(weights.read_bytes()).hexdigest()
    refused = gradcam("run", "-c", config, "-i", str(image_folder), "-q")
    assert refused.exit_code == 2, refused.output
    said = " ".join(refused.stderr.split())
    assert f"the weights file's content changed since the last run (sha256 {before[:12]}... -> {after[:12]}...)" in said
    assert "--overwrite" in said
    forced = gradcam("run", "-c", config, "-i", str(image_folder), "-q", "--overwrite", "--json")
    assert forced.exit_code == 0 and json.loads(forced.stdout)["ok"] == 3
    assert manifest(tmp_path / "out")["identity"]["model.weights"] == {"sha256": after}


def test_the_same_files_in_a_second_clone_resume(
    config_file, image_folder: Path, tmp_path: Path, tiny_weights: Path
) -> None:
    first = own_weights(tmp_path, tiny_weights, "clone1/net.pt")
    (tmp_path / "clone1" / "labels.txt").write_text("cat\ndog\nbird\n")
    second = own_weights(tmp_path, tiny_weights, "clone2/net.pt")
    (tmp_path / "clone2" / "labels.txt").write_text("cat\ndog\nbird\n")
    one = str(config_file(model={"weights": str(first), "labels": str(tmp_path / "clone1" / "labels.txt")}))
    assert gradcam("run", "-c", one, "-i", str(image_folder), "-q").exit_code == 0
    two = str(config_file(model={"weights": str(second), "labels": str(tmp_path / "clone2" / "labels.txt")}))
    again = gradcam("run", "-c", two, "-i", str(image_folder), "-q", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["skipped"] == 3


def test_precision_is_part_of_the_identity_batch_size_and_outputs_are_not(
    config_file, image_folder: Path, tmp_path: Path
) -> None:
    assert gradcam("run", "-c", str(config_file()), "-i", str(image_folder), "-q").exit_code == 0
    other = str(config_file(runtime={"batch_size": 2, "workers": 1}, output={"colormap": "turbo"}))
    again = gradcam("run", "-c", other, "-i", str(image_folder), "-q", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped"] == 3
    refused = gradcam("run", "-c", str(config_file()), "-i", str(image_folder), "-q", "--precision", "bf16")
    assert refused.exit_code == 2 and "runtime.precision changed: fp32 -> bf16" in " ".join(refused.stderr.split())


def test_an_unchanged_checkpoint_is_not_hashed_again(
    config_file, image_folder: Path, tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradcam_cli.io import identity

    weights = own_weights(tmp_path, tiny_weights)
    config = str(config_file(model={"weights": str(weights)}))
    assert gradcam("run", "-c", config, "-i", str(image_folder), "-q").exit_code == 0
    cached = json.loads((tmp_path / "out" / "run.json").read_text())["file_hashes"][str(weights)]
    assert cached == {
        "size": weights.stat().st_size,
        "mtime_ns": weights.stat().st_mtime_ns,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }
    hashed: list[str] = []
    real = identity._digest
    monkeypatch.setattr(identity, "_digest", lambda path: hashed.append(str(path)) or real(path))
    identity._MEMO.clear()  # as in a new process: only run.json remembers
    again = gradcam("run", "-c", config, "-i", str(image_folder), "-q", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped"] == 3
    assert str(weights) not in hashed  # neither by the identity check nor by the model loader
    os.utime(weights)  # touched, same bytes: hashed again, same identity
    touched = gradcam("run", "-c", config, "-i", str(image_folder), "-q", "--json")
    assert touched.exit_code == 0 and json.loads(touched.stdout)["skipped"] == 3
    assert hashed.count(str(weights)) == 1


def as_previous_release(out: Path, config_path: Path) -> None:
    """Rewrite a folder as gradcam-cli 0.1 (before run identities) wrote it: run.json with only the config
    text's hash and the config, and a manifest without `identity` (checked against a folder that release made)."""
    from gradcam_cli.config import load_config
    from gradcam_cli.io.manifest import write_manifest

    config = load_config(config_path)
    old = {"config_hash": config.config_hash(), "config": config.model_dump(mode="json")}
    (out / "run.json").write_text(json.dumps(old, sort_keys=True, indent=2))
    header = {k: v for k, v in manifest(out).items() if k not in ("identity", "images", "summary", "schema_version")}
    write_manifest(out, dict(header, config_hash=config.config_hash()))  # run.json has no identity to add


def test_folders_of_the_previous_release_are_migrated(
    config_file, image_folder: Path, tmp_path: Path, tiny_weights: Path
) -> None:
    out = tmp_path / "out"
    weights = own_weights(tmp_path, tiny_weights, "clone1/net.pt")
    config = config_file(model={"weights": str(weights)})
    assert gradcam("run", "-c", str(config), "-i", str(image_folder), "-q").exit_code == 0
    as_previous_release(out, config)
    saved = {name: (out / name).read_text() for name in ("run.json", "manifest.json")}

    # the same config: resumes, and run.json records the identity from now on
    again = gradcam("run", "-c", str(config), "-i", str(image_folder), "-q", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped"] == 3, again.output
    info = json.loads((out / "run.json").read_text())
    assert info["identity"]["model.weights"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert manifest(out)["config_hash"] == info["config_hash"] and manifest(out)["identity"] == info["identity"]

    # the same weights in a second clone: resumes (the first clone's files hold the same content)
    for name, text in saved.items():
        (out / name).write_text(text)
    second = own_weights(tmp_path, tiny_weights, "clone2/net.pt")
    moved = gradcam("run", "-c", str(config_file(model={"weights": str(second)})), "-i", str(image_folder), "-q")
    assert moved.exit_code == 0, moved.output

    # even once the first clone is gone: the manifest recorded the sha256 of the checkpoint it loaded
    for name, text in saved.items():
        (out / name).write_text(text)
    weights.unlink()
    gone = gradcam("run", "-c", str(config_file(model={"weights": str(second)})), "-i", str(image_folder), "-q")
    assert gone.exit_code == 0, gone.output

    # a checkpoint retrained at the recorded path: the manifest's sha256 says it is not what that run loaded
    for name, text in saved.items():
        (out / name).write_text(text)
    own_weights(tmp_path, tiny_weights, "clone1/net.pt")
    retrain(weights)
    config = config_file(model={"weights": str(weights)})  # the fixture writes one file: back to the first clone
    refused = gradcam("run", "-c", str(config), "-i", str(image_folder), "-q")
    assert refused.exit_code == 2 and "the weights file's content changed since the last run" in refused.stderr


def test_a_previous_release_folder_whose_files_are_gone_is_refused(
    config_file, image_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    labels = tmp_path / "clone1" / "labels.txt"
    labels.parent.mkdir()
    labels.write_text("cat\ndog\nbird\n")
    config = config_file(model={"labels": str(labels)})
    assert gradcam("run", "-c", str(config), "-i", str(image_folder), "-q").exit_code == 0
    as_previous_release(out, config)
    moved = tmp_path / "clone2" / "labels.txt"
    moved.parent.mkdir()
    labels.rename(moved)
    refused = gradcam("run", "-c", str(config_file(model={"labels": str(moved)})), "-i", str(image_folder), "-q")
    assert refused.exit_code == 2
    assert f"the labels of the last run ({labels}) is gone" in " ".join(refused.stderr.split())


def test_an_interrupted_run_says_so_and_what_is_left(tmp_path: Path, tiny_weights: Path) -> None:
    """Reviewer repro: exit 130 printed "80 images: 80 ok, 0 failed, 0 skipped", as if the run were done."""
    command, out = _slow_run(tmp_path, tiny_weights)
    command = [part for part in command if part != "-q"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_records(out, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    line = stderr.decode().strip().splitlines()[-1]
    assert line.startswith("Interrupted by SIGINT after") and "images left" in line and "rerun" in line
    left = int(line.split("images left")[0].rsplit(";", 1)[1])
    assert left == 16 - manifest(out)["summary"]["total"]
