#!/usr/bin/env bash
# Offsite replication benchmark: levee's replication of a repository to an
# S3 server against `rclone copy` of the same repository's files to the
# same server, in one run. Not a test; prints a table.
#
#   bench/offsite.sh                          # a repository of about 2 GB
#   LEVEE_BENCH_SIZE=500M bench/offsite.sh    # about 500 MB
#   LEVEE_BENCH_STREAMS=8 bench/offsite.sh    # levee's `streams` (default 4)
#   LEVEE_BENCH_ROUNDS=5 bench/offsite.sh     # first replications (default 3)
#   LEVEE_BENCH_SRC="/usr/lib/x86_64-linux-gnu" bench/offsite.sh
#   # and levee a second time in the same run, to its own bucket, with
#   # other settings (agent/examples/replicate_s3.rs reads them), e.g. as
#   # replication sent before whole-file PUTs and unthrottled bodies:
#   LEVEE_BENCH_ALSO="LEVEE_WHOLE_BYTES=8388608 LEVEE_BANDWIDTH_LIMIT=1000Gbit/s" bench/offsite.sh
#
# The repository is a backup of real files (LEVEE_BENCH_SRC, by default
# the /usr directories of bench/backup.sh), then, when that compresses to
# less than LEVEE_BENCH_SIZE, a second backup that adds random
# (incompressible) files for the rest. The S3 server is s3s-fs 0.14.1
# (dev/setup installs it) on loopback, one bucket per tool. Phases: the
# backups (not timed), the first replication of each tool (several rounds
# into empty buckets, the order turned round each round; the median round
# is printed too), then a backup
# with 1% new data and the second replication (only what is new should
# move; the script counts the files that backup added and the files levee
# sent). The repository is read once before each replication phase, so
# every tool reads it from the page cache. MB/s is the repository files' bytes moved over wall time; CPU is
# user + system seconds of the uploading process (the server's CPU is not
# counted).
set -euo pipefail

SRC=${LEVEE_BENCH_SRC:-"/usr/share /usr/lib/x86_64-linux-gnu /usr/bin /usr/include /usr/lib/gcc /usr/libexec"}
SIZE=${LEVEE_BENCH_SIZE:-2G}
WORK=${LEVEE_BENCH_DIR:-/tmp/levee-bench-offsite}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-s3bench}

TARGET_BYTES=$(numfmt --from=auto "$SIZE" 2>/dev/null) || {
    echo "LEVEE_BENCH_SIZE: a size such as 2G or 500M, not $SIZE" >&2; exit 1; }
STREAMS=${LEVEE_BENCH_STREAMS:-}
ROUNDS=${LEVEE_BENCH_ROUNDS:-3}
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "LEVEE_BENCH_ROUNDS: a number of rounds, not $ROUNDS" >&2; exit 1; }
if [ -n "$STREAMS" ] && ! [[ "$STREAMS" =~ ^[0-9]+$ ]]; then
    echo "LEVEE_BENCH_STREAMS: a number of streams, not $STREAMS" >&2; exit 1
fi

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

ALSO=${LEVEE_BENCH_ALSO:-}
rm -rf "$WORK"; mkdir -p "$WORK/s3/levee" "$WORK/s3/levee-also" "$WORK/s3/rclone" "$WORK/fill" "$WORK/extra"
export LEVEE_REPO=$WORK/repo LEVEE_PASSWORD=bench-password LEVEE_STATE_DIR=$WORK/state
export S3_ACCESS_KEY_ID=bench-access S3_SECRET_ACCESS_KEY=bench-secret-0123456789 S3_REGION=us-east-1
[ -n "$STREAMS" ] && export LEVEE_STREAMS=$STREAMS
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

bytes_of() { du -sb --apparent-size "$1" | cut -f1; }
repo_files() { (cd "$LEVEE_REPO" && find . -type f | sort); }

"$LEVEE" init --kdf-memory-kib 65536 >/dev/null
# shellcheck disable=SC2086
"$LEVEE" backup $SRC >/dev/null 2>&1 || true   # unreadable files are reported, not fatal
real_bytes=$(bytes_of "$LEVEE_REPO")
if [ "$real_bytes" -lt "$TARGET_BYTES" ]; then
    # The rest as random files of 64 MiB (the last one shorter).
    left=$((TARGET_BYTES - real_bytes)); i=0
    while [ "$left" -gt 0 ]; do
        n=$((left < 67108864 ? left : 67108864))
        head -c "$n" /dev/urandom >"$WORK/fill/random-$i.bin"
        left=$((left - n)); i=$((i + 1))
    done
    # shellcheck disable=SC2086
    "$LEVEE" backup $SRC "$WORK/fill" >/dev/null 2>&1 || true
fi
sync
# Every tool reads a warm repository (the first one would pay for the
# reads from disk otherwise).
warm() { find "$LEVEE_REPO" -type f -print0 | xargs -0 cat >/dev/null; }
warm

timed() { # label, command...
    local label=$1; shift
    /usr/bin/time -f "%e %U %S" -o "$WORK/time" "$@" >"$WORK/$label.out" 2>"$WORK/$label.err" || {
        echo "$label failed:" >&2; cat "$WORK/$label.err" >&2; exit 1; }
    read -r wall user sys <"$WORK/time"
    local bytes; bytes=$(cat "$WORK/moved")
    awk -v l="$label" -v b="$bytes" -v w="$wall" -v u="$user" -v s="$sys" \
        'BEGIN { printf "%-22s %10.1f MB %8.1f s %8.1f MB/s %8.1f CPU-s\n", l, b/1e6, w, b/1e6/w, u+s }'
    echo "${label% #*} $wall $bytes $user $sys" >>"$WORK/results"
}
median() { # label: the median round's wall time, rate and CPU
    grep "^$1 [0-9]" "$WORK/results" | sed "s/^$1 //" | sort -k1 -n | awk -v l="$1" \
        '{ w[NR]=$1; b[NR]=$2; c[NR]=$3+$4 } END { m=int((NR+1)/2);
           printf "%-22s %10.1f MB %8.1f s %8.1f MB/s %8.1f CPU-s  (median of %d)\n", l, b[m]/1e6, w[m], b[m]/1e6/w[m], c[m], NR }'
}
empty_buckets() {
    rm -rf "$WORK/s3/levee" "$WORK/s3/levee-also" "$WORK/s3/rclone" "$WORK/state" "$WORK/state-also"
    mkdir -p "$WORK/s3/levee" "$WORK/s3/levee-also" "$WORK/s3/rclone"
}

levee_run() {
    "$REPLICATE" >"$WORK/levee.json"
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_uploaded"])' "$WORK/levee.json" >"$WORK/moved"
}
rclone_run() {
    local before; before=$(bytes_of "$WORK/s3/rclone")
    # The endpoint is plain loopback HTTP: no CA bundle from the environment.
    env -u AWS_CA_BUNDLE rclone copy --transfers 4 "$LEVEE_REPO" bench:rclone/repo
    echo $(( $(bytes_of "$WORK/s3/rclone") - before )) >"$WORK/moved"
}
levee_also_run() { # the same with $ALSO's settings, to its own bucket
    # shellcheck disable=SC2086
    env $ALSO S3_URL=s3://levee-also/bench LEVEE_STATE_DIR="$WORK/state-also" bash -c levee_run
}
levee_files() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["files_uploaded"])' "$WORK/levee.json"; }
export -f levee_run levee_also_run rclone_run bytes_of
export WORK REPLICATE ALSO

repo_bytes=$(bytes_of "$LEVEE_REPO")
echo "repository: $(awk -v b="$repo_bytes" 'BEGIN {printf "%.1f MB", b/1e6}') in $(repo_files | wc -l) files" \
     "($(awk -v b="$real_bytes" 'BEGIN {printf "%.1f MB", b/1e6}') from a backup of $SRC, the rest random)"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "levee streams: ${STREAMS:-default}${ALSO:+; levee also: $ALSO}"
printf "%-22s %13s %10s %13s %13s\n" phase moved wall rate CPU
# The first replication $ROUNDS times into empty buckets, the order turned
# round every round (a shared machine's load comes and goes).
for r in $(seq "$ROUNDS"); do
    empty_buckets
    if [ $((r % 2)) = 1 ]; then order="levee also rclone"; else order="rclone also levee"; fi
    for tool in $order; do
        case $tool in
            levee) timed "levee first #$r" bash -c levee_run
                   echo "  levee sent $(levee_files) files" ;;
            also) if [ -n "$ALSO" ]; then timed "levee also, first #$r" bash -c levee_also_run; fi ;;
            rclone) timed "rclone first #$r" bash -c rclone_run ;;
        esac
    done
done
median "levee first"
if [ -n "$ALSO" ]; then median "levee also, first"; fi
median "rclone first"

# 1% new data, a backup, a second replication.
repo_files >"$WORK/files.before"
head -c $((repo_bytes / 100)) /dev/urandom >"$WORK/extra/new.bin"
# shellcheck disable=SC2086
"$LEVEE" backup $SRC "$WORK/fill" "$WORK/extra" >/dev/null 2>&1 || true
sync
warm
repo_files >"$WORK/files.after"
added=$(comm -13 "$WORK/files.before" "$WORK/files.after")
added_bytes=$(cd "$LEVEE_REPO" && echo "$added" | xargs -r du -cb --apparent-size | tail -1 | cut -f1)
echo "the 1% backup added $(echo "$added" | grep -c . || true) files, $(awk -v b="${added_bytes:-0}" 'BEGIN {printf "%.1f MB", b/1e6}'):" \
     "$(echo "$added" | sed 's|^\./||; s|/.*||' | sort | uniq -c | awk '{printf "%s%s %s", (NR>1?", ":""), $1, $2}')"
timed "levee after 1%" bash -c levee_run
echo "  levee sent $(levee_files) files"
if [ -n "$ALSO" ]; then timed "levee also, after 1%" bash -c levee_also_run; fi
timed "rclone after 1%" bash -c rclone_run
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
