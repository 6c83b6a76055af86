#!/usr/bin/env bash
# Nightly sweep of a growing image archive (crontab: 0 2 * * * /opt/gradcam/examples/cron.sh).
# Exit 1 (some images failed) still leaves a complete manifest; exit 2 means the config is broken.
set -u
ARCHIVE=/data/archive
OUT=/data/gradcam/$(date +%F)
CONFIG=/opt/gradcam/configs/production.yaml

/opt/gradcam/.venv/bin/gradcam run --config "$CONFIG" --input "$ARCHIVE" --output "$OUT" --quiet
status=$?
case $status in
  0) ;;
  1) echo "gradcam: some images failed, see $OUT/manifest.json (status: error)" >&2 ;;
  *) echo "gradcam: run failed with exit code $status" >&2; exit "$status" ;;
esac
