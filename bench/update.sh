#!/usr/bin/env bash
# Update download benchmark: levee's full and delta rootfs downloads
# against casync's, in one run, on the same two releases and the same
# HTTP server. Not a test; prints a table.
#
#   bench/update.sh
#   LEVEE_BENCH_IMAGE=DIR        an image directory (default: the newest
#                                shared test image under target/)
#   LEVEE_BENCH_AGENT2=FILE      v2's agent binary (default: the agent of
#                                another cached test image that differs)
#
# v1 is the image's root file system re-squashed with the image builder's
# options; v2 is the same tree with only usr/bin/levee-agent replaced. Both
# are published with `levee release publish` (which writes the chunk
# index); casync gets a blob index of v2's rootfs (`casync make`, default
# 64 KiB average chunks, its default compression) in a chunk store beside
# them. One Python HTTP server (Range, keep-alive) serves both and counts
# every body byte it sends. The old slot (v1's rootfs padded like a
# partition) is levee's seed and casync's `--seed`.
#
# Then the time from publish to commit on one appliance under TCG: the
# QEMU golden path (tests/tests/e2e/update/, `golden_path_v1_to_v2_then_v3_by_delta`)
# on the same image, which publishes release 2 on a copy of the installed
# base's server, boots release 1 from an overlay of the base disk, rolls
# release 2 out and follows it to its commit, printing each step's time.
# It needs root (network namespaces) and QEMU, about 4 minutes with the
# base cached (its first run installs the base: 3 more). On a machine
# shared with other QEMU tests, run the whole script under their lock.
#   LEVEE_BENCH_TCG=0            leaves the TCG part out (said so at the end)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=${LEVEE_BENCH_DIR:-/tmp/levee-bench-update}
IMAGES=$CARGO_TARGET_DIR/levee-image-test/images
IMAGE=${LEVEE_BENCH_IMAGE:-$(ls -dt "$IMAGES"/*/ 2>/dev/null | head -1)}
[ -n "$IMAGE" ] && [ -f "$IMAGE/rootfs.squashfs" ] || {
    echo "no image: set LEVEE_BENCH_IMAGE or run the QEMU tests once (they build $IMAGES)" >&2; exit 1; }

if ! command -v casync >/dev/null || ! command -v mksquashfs >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "casync and squashfs-tools are needed: apt-get install -y casync squashfs-tools" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q casync squashfs-tools >/dev/null
fi
for t in python3 /usr/bin/time cargo; do
    command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }
done
(cd "$ROOT" && cargo build --release -q -p levee-agent --example update_apply \
    && cargo build -q -p levee-provisioner --bin levee)
APPLY=$CARGO_TARGET_DIR/release/examples/update_apply
LEVEE=$CARGO_TARGET_DIR/debug/levee

rm -rf "$WORK"; mkdir -p "$WORK"
echo "== image $IMAGE" >&2
unsquashfs -q -no-progress -d "$WORK/tree" "$IMAGE/rootfs.squashfs" >/dev/null
AGENT=usr/bin/levee-agent
if [ -z "${LEVEE_BENCH_AGENT2:-}" ]; then
    for d in "$IMAGES"/*/; do
        rm -rf "$WORK/other"
        unsquashfs -q -no-progress -d "$WORK/other" "$d/rootfs.squashfs" "$AGENT" >/dev/null 2>&1 || continue
        if ! cmp -s "$WORK/other/$AGENT" "$WORK/tree/$AGENT"; then
            LEVEE_BENCH_AGENT2=$WORK/agent2; cp "$WORK/other/$AGENT" "$LEVEE_BENCH_AGENT2"; break
        fi
    done
    [ -n "${LEVEE_BENCH_AGENT2:-}" ] || { echo "no other agent binary: set LEVEE_BENCH_AGENT2" >&2; exit 1; }
fi

# The image builder's squashfs options (image/src/rootfs.rs `squash`).
squash() { mksquashfs "$1" "$2" -noappend -comp zstd -Xcompression-level 9 -b 1M \
    -reproducible -no-xattrs -mkfs-time 1 -all-time 1 -no-progress -quiet >/dev/null; }
release_dir() {  # VERSION -> an image directory around $WORK/$1.squashfs
    local out=$WORK/img-$1; mkdir -p "$out"
    mv "$WORK/$1.squashfs" "$out/rootfs.squashfs"
    cp "$IMAGE/vmlinuz" "$IMAGE/initrd.img" "$out/"
    python3 - "$out" "$1" <<'EOF'
import hashlib, json, os, sys
out, version = sys.argv[1], sys.argv[2]
arts = {}
for n in ["vmlinuz", "initrd.img", "rootfs.squashfs"]:
    b = open(os.path.join(out, n), "rb").read()
    arts[n] = {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
json.dump({"name": "levee-appliance", "version": version, "artifacts": arts, "cmdline": "quiet"},
          open(os.path.join(out, "image.json"), "w"))
EOF
}
V1=2026.12.01-bench1 V2=2026.12.02-bench2
squash "$WORK/tree" "$WORK/$V1.squashfs"; release_dir $V1
cp "$LEVEE_BENCH_AGENT2" "$WORK/tree/$AGENT"
squash "$WORK/tree" "$WORK/$V2.squashfs"; release_dir $V2
NEW=$WORK/img-$V2/rootfs.squashfs
LEN=$(stat -c %s "$NEW")

DATA=$WORK/data
"$LEVEE" --data-dir "$DATA" release keys init --offline-dir "$WORK/offline" >/dev/null
t0=$(date +%s.%N)
"$LEVEE" --data-dir "$DATA" release publish "$WORK/img-$V1" --channel stable --targets-key "$WORK/offline/targets.pem" >/dev/null
"$LEVEE" --data-dir "$DATA" release publish "$WORK/img-$V2" --channel stable --targets-key "$WORK/offline/targets.pem" >/dev/null
PUBLISH=$(echo "$(date +%s.%N) - $t0" | bc)
INDEX=$(stat -c %s "$DATA"/releases/stable/targets/*."$V2".rootfs.chunks)

mkdir -p "$WORK/srv/casync"
ln -s "$DATA/releases" "$WORK/srv/releases"
t0=$(date +%s.%N)
casync make --store="$WORK/srv/casync/default.castr" "$WORK/srv/casync/v2.caibx" "$NEW" >/dev/null
CAMAKE=$(echo "$(date +%s.%N) - $t0" | bc)
CAIBX=$(stat -c %s "$WORK/srv/casync/v2.caibx")

# The old slot: v1's rootfs in a partition 64 MiB larger than it.
cp "$WORK/img-$V1/rootfs.squashfs" "$WORK/slot-a"
truncate -s +64M "$WORK/slot-a"

# The server: files under $WORK/srv, single ranges, a byte count per run.
cat > "$WORK/server.py" <<'EOF'
import http.server, os, re, sys, threading
root, log = sys.argv[1], sys.argv[2]
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        p = os.path.realpath(os.path.join(root, self.path.split("?")[0].lstrip("/")))
        if not os.path.isfile(p):
            self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers(); return
        size = os.path.getsize(p)
        a, b, code = 0, size - 1, 200
        m = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
        if m:
            a = int(m.group(1)); b = min(int(m.group(2)) if m.group(2) else size - 1, size - 1); code = 206
        n = b - a + 1
        self.send_response(code)
        self.send_header("Content-Length", str(n))
        if code == 206: self.send_header("Content-Range", f"bytes {a}-{b}/{size}")
        self.end_headers()
        with open(p, "rb") as f:
            f.seek(a); left = n
            while left:
                buf = f.read(min(left, 1 << 20)); self.wfile.write(buf); left -= len(buf)
        with lock:
            with open(log, "a") as l: l.write(f"{n}\n")
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[3])), H).serve_forever()
EOF
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 "$WORK/server.py" "$WORK/srv" "$WORK/bytes.log" "$PORT" & SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
URL=http://127.0.0.1:$PORT
for _ in $(seq 50); do curl -s -o /dev/null "$URL/" && break; sleep 0.1; done

ROWS=()
run() {  # NAME OUTPUT_FILE COMMAND...
    local name=$1 out=$2; shift 2
    : > "$WORK/bytes.log"; sync
    /usr/bin/time -f %e -o "$WORK/time" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err" \
        || { cat "$WORK/$name.err" >&2; exit 1; }
    cmp -n "$LEN" "$out" "$NEW" || { echo "$name: the result is not v2's rootfs" >&2; exit 1; }
    local bytes reqs
    bytes=$(awk '{s+=$1} END {print s+0}' "$WORK/bytes.log"); reqs=$(wc -l < "$WORK/bytes.log")
    ROWS+=("$(printf '%-14s %12s %7.1f%% %8s %8s' "$name" "$bytes" "$(echo "100 * $bytes / $LEN" | bc -l)" "$reqs" "$(cat "$WORK/time")")")
}
run levee-full "$WORK/c-full/levee-b" "$APPLY" "$URL" "$WORK/offline/root.json" "$WORK/c-full" $V1 2
# The delta run's appliance has slot a's kernel and initrd on its ESP, as
# an installed one does (the same files in both releases).
mkdir -p "$WORK/c-delta/esp/levee/a"
cp "$WORK/img-$V1/vmlinuz" "$WORK/img-$V1/initrd.img" "$WORK/c-delta/esp/levee/a/"
run levee-delta "$WORK/c-delta/levee-b" "$APPLY" "$URL" "$WORK/offline/root.json" "$WORK/c-delta" $V1 2 "$WORK/slot-a"
run casync-full "$WORK/ca-full.img" casync extract --store="$URL/casync/default.castr" "$URL/casync/v2.caibx" "$WORK/ca-full.img"
run casync-delta "$WORK/ca-delta.img" casync extract --store="$URL/casync/default.castr" --seed="$WORK/slot-a" "$URL/casync/v2.caibx" "$WORK/ca-delta.img"

echo "== v2 rootfs $LEN bytes; agent $(stat -c %s "$WORK/tree/$AGENT") bytes; levee index $INDEX bytes (publish of both: ${PUBLISH} s, debug build); casync index $CAIBX bytes (make: ${CAMAKE} s)"
echo "   host $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-14s %12s %8s %8s %8s\n' run "bytes sent" "of v2" requests seconds
printf '%s\n' "${ROWS[@]}"
grep -h "rootfs by delta\|rootfs in full" "$WORK/levee-delta.err" "$WORK/levee-full.err" | sed 's/^/   /'
kill $SERVER 2>/dev/null || true

if [ "${LEVEE_BENCH_TCG:-1}" = 0 ]; then
    echo "== publish -> commit under TCG: left out (LEVEE_BENCH_TCG=0)"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "publish -> commit under TCG needs root (network namespaces); LEVEE_BENCH_TCG=0 leaves it out" >&2; exit 1; }
TEST=update::golden_path_v1_to_v2_then_v3_by_delta
(cd "$ROOT" && LEVEE_TEST_IMAGE=$IMAGE cargo nextest run -p levee-tests --test e2e "$TEST" \
    --no-capture > "$WORK/tcg.log" 2>&1) || { tail -60 "$WORK/tcg.log" >&2; echo "$TEST failed: $WORK/tcg.log" >&2; exit 1; }
echo "== publish -> commit on one appliance under TCG (QEMU, 1 vCPU, 1 GiB; $TEST), load $(cut -d' ' -f1-3 /proc/loadavg)"
grep -h "^update base:\|^golden: " "$WORK/tcg.log" | sed 's/^/   /'
