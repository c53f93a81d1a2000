#!/usr/bin/env bash
# Offsite replication benchmark: levee's replication of a repository to an
# S3 server against `rclone copy` of the same repository's files to the
# same server, in one run. Not a test; prints a table.
#
#   bench/offsite.sh                                  # repository of ~2 GB from /usr
#   LEVEE_BENCH_SRC="/usr/lib/x86_64-linux-gnu" bench/offsite.sh
#
# The S3 server is s3s-fs 0.14.1 (dev/setup installs it) on loopback,
# one bucket per tool. Phases: a backup of the source (not timed), the
# first replication of each tool, then a backup with 1% new data and the
# second replication (only what is new should move). MB/s is the
# repository files' bytes moved over wall time; CPU is user + system
# seconds of the uploading process (the server's CPU is not counted).
set -euo pipefail

SRC=${LEVEE_BENCH_SRC:-"/usr/share /usr/lib/x86_64-linux-gnu /usr/bin /usr/include /usr/lib/gcc /usr/libexec"}
WORK=${LEVEE_BENCH_DIR:-/tmp/levee-bench-offsite}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-s3bench}

if ! command -v rclone >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing Debian's rclone"
        apt-get install -y -qq --no-install-recommends rclone >/dev/null
    else
        echo "missing rclone: apt-get install -y rclone" >&2; exit 1
    fi
fi
S3S=$(command -v s3s-fs || echo "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs")
[ -x "$S3S" ] || { echo "missing s3s-fs: run dev/setup" >&2; exit 1; }
command -v /usr/bin/time >/dev/null || { echo "missing /usr/bin/time: apt-get install -y time" >&2; exit 1; }

(cd "$ROOT" && cargo build --release -q -p levee-agent --bin levee-agent --example replicate_s3)
LEVEE=$CARGO_TARGET_DIR/release/levee-agent
REPLICATE=$CARGO_TARGET_DIR/release/examples/replicate_s3

rm -rf "$WORK"; mkdir -p "$WORK/s3/levee" "$WORK/s3/rclone" "$WORK/extra"
export LEVEE_REPO=$WORK/repo LEVEE_PASSWORD=bench-password LEVEE_STATE_DIR=$WORK/state
export S3_ACCESS_KEY_ID=bench-access S3_SECRET_ACCESS_KEY=bench-secret-0123456789 S3_REGION=us-east-1
PORT=$((20000 + RANDOM % 20000))
export S3_ENDPOINT=http://127.0.0.1:$PORT S3_URL=s3://levee/bench
"$S3S" --host 127.0.0.1 --port "$PORT" --access-key "$S3_ACCESS_KEY_ID" \
    --secret-key "$S3_SECRET_ACCESS_KEY" "$WORK/s3" >"$WORK/s3s-fs.log" 2>&1 &
S3PID=$!
trap 'kill $S3PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done

# rclone from its environment only (no config file).
export RCLONE_CONFIG_BENCH_TYPE=s3 RCLONE_CONFIG_BENCH_PROVIDER=Other \
    RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=$S3_ACCESS_KEY_ID \
    RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=$S3_SECRET_ACCESS_KEY \
    RCLONE_CONFIG_BENCH_ENDPOINT=$S3_ENDPOINT RCLONE_CONFIG_BENCH_REGION=$S3_REGION \
    RCLONE_CONFIG=/dev/null

"$LEVEE" init --kdf-memory-kib 65536 >/dev/null
# shellcheck disable=SC2086
"$LEVEE" backup $SRC >/dev/null 2>&1 || true   # unreadable files are reported, not fatal
sync

bytes_of() { du -sb --apparent-size "$1" | cut -f1; }
timed() { # label, bytes moved file, command...
    local label=$1 moved=$2; shift 2
    /usr/bin/time -f "%e %U %S" -o "$WORK/time" "$@" >"$WORK/$label.out" 2>"$WORK/$label.err"
    read -r wall user sys <"$WORK/time"
    local bytes; bytes=$(cat "$moved")
    awk -v l="$label" -v b="$bytes" -v w="$wall" -v u="$user" -v s="$sys" \
        'BEGIN { printf "%-22s %10.1f MB %8.1f s %8.1f MB/s %8.1f CPU-s\n", l, b/1e6, w, b/1e6/w, u+s }'
}

levee_run() { # label
    "$REPLICATE" >"$WORK/levee.json"
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_uploaded"])' "$WORK/levee.json" >"$WORK/moved"
}
rclone_run() {
    local before; before=$(bytes_of "$WORK/s3/rclone")
    # The endpoint is plain loopback HTTP: no CA bundle from the environment.
    env -u AWS_CA_BUNDLE rclone copy --transfers 4 "$LEVEE_REPO" bench:rclone/repo
    echo $(( $(bytes_of "$WORK/s3/rclone") - before )) >"$WORK/moved"
}
export -f levee_run rclone_run bytes_of
export WORK REPLICATE

echo "repository: $(bytes_of "$LEVEE_REPO" | awk '{printf "%.1f MB", $1/1e6}') from $SRC"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-22s %13s %10s %13s %13s\n" phase moved wall rate CPU
timed "levee first" "$WORK/moved" bash -c levee_run
timed "rclone first" "$WORK/moved" bash -c rclone_run

# 1% new data, a second backup, a second replication.
repo_bytes=$(bytes_of "$LEVEE_REPO")
head -c $((repo_bytes / 100)) /dev/urandom >"$WORK/extra/new.bin"
# shellcheck disable=SC2086
"$LEVEE" backup $SRC "$WORK/extra" >/dev/null 2>&1 || true
sync
timed "levee after 1%" "$WORK/moved" bash -c levee_run
timed "rclone after 1%" "$WORK/moved" bash -c rclone_run
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
