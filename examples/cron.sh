#!/usr/bin/env bash
# Nightly sweep of a growing image archive. crontab (no flock(1) needed: gradcam locks its output folder):
#   0 2 * * *  /opt/gradcam/examples/cron.sh >> /var/log/gradcam-cron.log 2>&1
#
# The output folder stays the same every night: each run explains only new or changed images, and
# manifest.json always lists every explained image once. If last night's run is still going, tonight's
# exits 3 at once; if it crashed, its lock is taken over and its last batch is redone.
set -u
ARCHIVE=/data/archive
OUT=/data/gradcam/archive
CONFIG=/opt/gradcam/configs/production.yaml

/opt/gradcam/.venv/bin/gradcam run --config "$CONFIG" --input "$ARCHIVE" --output "$OUT" --quiet \
  --log-file /var/log/gradcam-events.jsonl --log-format json
status=$?
case $status in
  0) ;;                                                         # every image explained
  1) echo "gradcam: some images failed; see $OUT/manifest.json (status: error)" >&2 ;;
  3) echo "gradcam: the previous run is still working on $OUT; skipping tonight" >&2 ;;
  130|143) echo "gradcam: interrupted; the next run resumes where this one stopped" >&2 ;;
  *) echo "gradcam: run failed with exit code $status (2: config, 4: output not writable)" >&2; exit "$status" ;;
esac
