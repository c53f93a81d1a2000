#!/usr/bin/env bash
# TFTP benchmark (a measurement, not a test): one file (64 MiB by default)
# fetched with the atftp client (blksize 1468, windowsize 16) from our
# server, dnsmasq and atftpd across a veth pair between two network
# namespaces that this script creates and deletes. Each server listens on
# its own address so none restarts; rounds are interleaved (the machine is
# noisy) and medians compared. Run as root:  bash bench/tftp.sh
#
# Environment: ROUNDS (7), SIZE_MIB (64), BLKSIZE (1468), WINDOW (16),
# LEVEE_SERVER=example|levee (default: `levee serve` if a release build with
# --tftp exists, else the pxe/examples/tftpd.rs binary); EXTRA_NAME and
# EXTRA_BIN add a fourth server, a binary run as `EXTRA_BIN ROOT ADDR:69`
# (used once to measure the async-tftp crate).
set -euo pipefail

ROUNDS=${ROUNDS:-7}
SIZE_MIB=${SIZE_MIB:-64}
BLKSIZE=${BLKSIZE:-1468}
WINDOW=${WINDOW:-16}
REPO=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}

NET=10.123.0
OURS_IP=$NET.1
DNSMASQ_IP=$NET.2
ATFTPD_IP=$NET.3
EXTRA_IP=$NET.4
CLIENT_IP=$NET.10
NS_S=levee-tftpb-s-$$
NS_C=levee-tftpb-c-$$

[ "$(id -u)" = 0 ] || { echo "bench/tftp.sh: run as root (network namespaces)" >&2; exit 1; }
for tool in atftp atftpd dnsmasq ip cmp cargo; do
    command -v "$tool" >/dev/null || {
        echo "bench/tftp.sh: $tool missing: apt-get install -y atftp atftpd dnsmasq-base iproute2" >&2
        exit 1
    }
done

WORK=$(mktemp -d /tmp/levee-tftp-bench.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    ip netns del "$NS_S" 2>/dev/null || true
    ip netns del "$NS_C" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- our server: `levee serve` if it already serves TFTP, else the example.
mode=${LEVEE_SERVER:-}
if [ -z "$mode" ]; then
    # Building the provisioner in release is slow: use it only if built.
    mode=example
    if [ -x "$TARGET/release/levee" ] && "$TARGET/release/levee" serve --help 2>/dev/null | grep -q -- '--tftp'; then
        mode=levee
    fi
fi
if [ "$mode" = example ]; then
    (cd "$REPO" && cargo build --quiet --release -p levee-pxe --example tftpd)
else
    (cd "$REPO" && cargo build --quiet --release -p levee-provisioner)
fi

mkdir -p "$WORK/data/tftp" "$WORK/out"
ROOT=$WORK/data/tftp
FILE=bench.bin
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$ROOT/$FILE"
echo probe >"$ROOT/probe"

# --- network: server namespace with three addresses, client namespace.
ip netns add "$NS_S"
ip netns add "$NS_C"
ip -n "$NS_S" link add vs type veth peer name vc netns "$NS_C"
ip -n "$NS_S" addr add "$OURS_IP/24" dev vs
ip -n "$NS_S" addr add "$DNSMASQ_IP/24" dev vs
ip -n "$NS_S" addr add "$ATFTPD_IP/24" dev vs
ip -n "$NS_S" addr add "$EXTRA_IP/24" dev vs
ip -n "$NS_C" addr add "$CLIENT_IP/24" dev vc
for ns in "$NS_S" "$NS_C"; do ip -n "$ns" link set lo up; done
ip -n "$NS_S" link set vs up
ip -n "$NS_C" link set vc up

# --- servers, each in the foreground of its own background job.
if [ "$mode" = levee ]; then
    ip netns exec "$NS_S" "$TARGET/release/levee" serve --tftp "$OURS_IP:69" --http 127.0.0.1:0 \
        --data-dir "$WORK/data" >"$WORK/ours.log" 2>&1 &
else
    ip netns exec "$NS_S" "$TARGET/release/examples/tftpd" "$ROOT" "$OURS_IP:69" >"$WORK/ours.log" 2>&1 &
fi
PIDS+=($!)
ip netns exec "$NS_S" dnsmasq --keep-in-foreground --conf-file=/dev/null --pid-file= --port 0 \
    --user=root --enable-tftp --tftp-root="$ROOT" --listen-address="$DNSMASQ_IP" --bind-interfaces \
    --log-facility="$WORK/dnsmasq.log" &
PIDS+=($!)
ip netns exec "$NS_S" atftpd --daemon --no-fork --user root --group root --port 69 \
    --bind-address "$ATFTPD_IP" --logfile "$WORK/atftpd.log" "$ROOT" &
PIDS+=($!)

names=(levee dnsmasq atftpd)
addrs=("$OURS_IP" "$DNSMASQ_IP" "$ATFTPD_IP")
if [ -n "${EXTRA_BIN:-}" ]; then
    EXTRA_NAME=${EXTRA_NAME:-extra}
    ip netns exec "$NS_S" "$EXTRA_BIN" "$ROOT" "$EXTRA_IP:69" >"$WORK/extra.log" 2>&1 &
    PIDS+=($!)
    names+=("$EXTRA_NAME")
    addrs+=("$EXTRA_IP")
fi
n=${#names[@]}

fetch() { # fetch ADDR OUT
    ip netns exec "$NS_C" atftp --option "blksize $BLKSIZE" --option "windowsize $WINDOW" \
        -g -r "$FILE" -l "$2" "$1" >/dev/null 2>&1
}

for i in $(seq 0 $((n - 1))); do
    ok=
    for _ in $(seq 50); do
        if ip netns exec "$NS_C" atftp -g -r probe -l "$WORK/out/probe" "${addrs[$i]}" >/dev/null 2>&1; then
            ok=1
            break
        fi
        sleep 0.2
    done
    [ -n "$ok" ] || { echo "${names[$i]} did not answer on ${addrs[$i]}" >&2; exit 1; }
done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
echo "file: $SIZE_MIB MiB; client: atftp --option \"blksize $BLKSIZE\" --option \"windowsize $WINDOW\"; ours: $mode; rounds: $ROUNDS"
# One unmeasured fetch per server: warms the page cache and the client (the
# first big fetch after start-up was up to 1 s slower whoever served it).
for i in $(seq 0 $((n - 1))); do
    fetch "${addrs[$i]}" "$WORK/out/warmup" || { echo "warm-up fetch from ${names[$i]} failed" >&2; exit 1; }
    rm -f "$WORK/out/warmup"
done
declare -A times
for round in $(seq "$ROUNDS"); do
    line="round $round:"
    for k in $(seq 0 $((n - 1))); do
        # Rotate the order each round so no server always goes first.
        i=$(((k + round) % n))
        out="$WORK/out/${names[$i]}"
        rm -f "$out"
        start=$EPOCHREALTIME
        fetch "${addrs[$i]}" "$out" || { echo "fetch from ${names[$i]} failed" >&2; exit 1; }
        end=$EPOCHREALTIME
        cmp -s "$out" "$ROOT/$FILE" || { echo "${names[$i]}: downloaded file differs" >&2; exit 1; }
        t=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
        times[${names[$i]}]+="$t "
        line+=" ${names[$i]} $t"
    done
    echo "$line"
done

stats() { # stats "t1 t2 ..." -> "median best"
    tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%.3f %.3f", m, v[1] }'
}
read -r ours_med ours_best <<<"$(stats "${times[levee]}")"
read -r dns_med dns_best <<<"$(stats "${times[dnsmasq]}")"
read -r atf_med atf_best <<<"$(stats "${times[atftpd]}")"
printf '%-8s %8s %8s\n' server median best
printf '%-8s %7ss %7ss\n' levee "$ours_med" "$ours_best" dnsmasq "$dns_med" "$dns_best" atftpd "$atf_med" "$atf_best"
if [ -n "${EXTRA_BIN:-}" ]; then
    read -r ex_med ex_best <<<"$(stats "${times[$EXTRA_NAME]}")"
    printf '%-8s %7ss %7ss\n' "$EXTRA_NAME" "$ex_med" "$ex_best"
    awk -v o="$ours_med" -v e="$ex_med" -v n="$EXTRA_NAME" 'BEGIN { printf "levee vs %s: %.2fx faster (median)\n", n, e / o }'
fi
awk -v o="$ours_med" -v d="$dns_med" -v a="$atf_med" -v ob="$ours_best" -v db="$dns_best" -v ab="$atf_best" 'BEGIN {
    printf "levee vs dnsmasq: %.2fx faster (median), %.2fx (best)\n", d / o, db / ob
    printf "levee vs atftpd:  %.2fx faster (median), %.2fx (best)\n", a / o, ab / ob }'
# Our server logs one line per transfer; show its retransmission counts.
echo "levee retransmitted blocks per transfer (warm-up first): $(sed 's/\x1b\[[0-9;]*m//g' "$WORK/ours.log" |
    grep "file=$FILE" | grep -o 'retransmits=[0-9]*' | cut -d= -f2 | tr '\n' ' ')"
