#!/bin/bash
# Load benchmark of `levee serve`'s enrollment endpoint and mutual-TLS
# configuration endpoint, on SQLite and PostgreSQL, beside nginx serving a
# static file of the same size with client-certificate verification (issue 4).
# Run as root (installs nginx-light and PostgreSQL if missing):
#
#   bench/api.sh [--store sqlite|postgres|both] [--clients 64] [--seconds 10] [--enrollments 2000]
#
# Everything listens on 127.0.0.1; see provisioner/examples/bench-api.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
    apt-get install -y --no-install-recommends "${need[@]}"
    # The packages start their own services; the benchmark runs its own.
    systemctl disable --now nginx postgresql 2>/dev/null || true
fi
cargo build --release --locked -p levee-provisioner --bins --examples
exec target/release/examples/bench-api "$@"
