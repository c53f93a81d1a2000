#!/bin/bash
# Load benchmark of the web panel's fleet API (issue 15): 10,000 appliances
# and 1,000,000 run reports in the store, GET /ui/api/fleet (pages, sorts,
# filters) while heartbeats keep changing the fleet, on SQLite and
# PostgreSQL; and the panel's first-load size. Target: p95 under 100 ms,
# first load under 200 KB. Run as root (PostgreSQL is started by the
# benchmark itself):
#
#   bench/panel.sh [--store sqlite|postgres|both] [--appliances 10000] [--runs 1000000] [--requests 300] [--heartbeats 50]
#
# Everything listens on 127.0.0.1; see provisioner/examples/bench-panel.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt-get install -y --no-install-recommends postgresql
cargo build --release --locked -p levee-provisioner --examples
exec target/release/examples/bench-panel "$@"
