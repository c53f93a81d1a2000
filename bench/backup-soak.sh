#!/usr/bin/env bash
# Crash soak: the test suite's SIGKILL loop (agent/tests/crash.rs), longer.
#   bench/backup-soak.sh [ROUNDS]   (default 120)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-backup}
export LEVEE_SOAK_ROUNDS=${1:-120}
cd "$ROOT"
exec cargo test -p levee-agent --test tests -- --exact crash::sigkill_backup_and_prune_repeatedly --nocapture
