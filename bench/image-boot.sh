#!/bin/bash
# Boot-time benchmark of the appliance image (issue 3), as root:
#
#   bench/image-boot.sh [--rounds N] [--firmware bios|uefi|both]
#
# Time from QEMU start (TCG) to
#   - levee:    the agent's first status report arriving in `levee serve`
#               (full DHCP mode, the image imported as the default profile);
#   - baseline: a plain `debootstrap --variant=minbase` + systemd root (cached
#               in target/levee-image-bench/), packed as a zstd squashfs and
#               served with the same kernel by dnsmasq (DHCP + TFTP + RAs,
#               --no-ping) and `python3 -m http.server`, reaching a systemd
#               service that prints a marker on the serial console.
# Both use the image's vmlinuz and its stage-1 initrd.img (which downloads,
# checks and mounts `levee.root=`), the same QEMU and firmware; rounds are
# interleaved (levee, baseline, levee, ...) and each boot gets a fresh
# network namespace (bridge + tap), so no traffic leaves it.
# Env: LEVEE (levee binary), AGENT (levee-agent binary baked into the image;
# default: the release build if there is one, it is what ships).
set -euo pipefail

ROUNDS=3
FIRMWARES="bios uefi"
while [ $# -gt 0 ]; do
    case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --firmware) case "$2" in both) FIRMWARES="bios uefi" ;; bios | uefi) FIRMWARES=$2 ;; *) echo "--firmware bios|uefi|both" >&2; exit 2 ;; esac; shift 2 ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, taps, debootstrap)" >&2; exit 1; }
for t in qemu-system-x86_64:qemu-system-x86 dnsmasq:dnsmasq-base debootstrap:debootstrap mksquashfs:squashfs-tools python3:python3 ip:iproute2; do
    command -v "${t%%:*}" >/dev/null || { echo "${t%%:*} is missing: apt-get install ${t#*:}" >&2; exit 1; }
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
W=$REPO/target/levee-image-bench
LEVEE=${LEVEE:-$REPO/target/debug/levee}
if [ -z "${AGENT:-}" ]; then
    AGENT=$REPO/target/release/levee-agent
    [ -x "$AGENT" ] || AGENT=$REPO/target/debug/levee-agent
fi
OVMF_CODE=/usr/share/OVMF/OVMF_CODE_4M.fd
OVMF_VARS=/usr/share/OVMF/OVMF_VARS_4M.fd
SERVER_IP=10.99.0.1
MAC=52:54:00:0b:03:01
TIMEOUT=180
mkdir -p "$W"

NS=
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
    [ -z "$NS" ] || ip netns del "$NS" 2>/dev/null || true
    NS=
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- our image (the builder's cache makes this ~10 s after the first time)
echo "building the image (agent: $AGENT)" >&2
"$LEVEE" image build --manifest "$REPO/image/appliance.yaml" --out "$W/image" --agent "$AGENT" \
    --cache-dir "$REPO/target/levee-image-test/cache" --lock "$REPO/target/levee-image-test/appliance.lock" >"$W/build.log" 2>&1 ||
    { tail -20 "$W/build.log" >&2; exit 1; }

# --- the baseline root, built once
if [ ! -d "$W/baseline-root" ]; then
    echo "debootstrap minbase + systemd (once)" >&2
    rm -rf "$W/baseline-root.tmp"
    mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    debootstrap --variant=minbase --include=systemd,systemd-sysv bookworm "$W/baseline-root.tmp" "${mirror:-http://deb.debian.org/debian}" >"$W/debootstrap.log" 2>&1 ||
        { tail -20 "$W/debootstrap.log" >&2; exit 1; }
    mv "$W/baseline-root.tmp" "$W/baseline-root"
fi
B=$W/baseline
mkdir -p "$B"
unit=$W/baseline-root/etc/systemd/system/bench-marker.service
if [ ! -f "$unit" ]; then
    cat >"$unit" <<'EOF'
[Unit]
Description=Benchmark marker

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo LEVEE-BASELINE-MARKER >/dev/ttyS0'

[Install]
WantedBy=multi-user.target
EOF
    ln -sf ../bench-marker.service "$W/baseline-root/etc/systemd/system/multi-user.target.wants/bench-marker.service"
    rm -f "$B/rootfs.squashfs"
fi
if [ ! -f "$B/rootfs.squashfs" ]; then
    mksquashfs "$W/baseline-root" "$B/rootfs.squashfs" -noappend -comp zstd -b 1M -no-progress >/dev/null
fi
cp "$W/image/vmlinuz" "$W/image/initrd.img" "$B/"
mkdir -p "$B/tftp"
cp /usr/lib/ipxe/undionly.kpxe /usr/lib/ipxe/ipxe.efi "$B/tftp/"
bsha=$(sha256sum "$B/rootfs.squashfs" | cut -d' ' -f1)
cat >"$B/boot.ipxe" <<EOF
#!ipxe
kernel http://$SERVER_IP:8080/vmlinuz initrd=initrd.img console=ttyS0,115200 no_timer_check levee.root=http://$SERVER_IP:8080/rootfs.squashfs levee.sha256=$bsha
initrd http://$SERVER_IP:8080/initrd.img
boot
EOF

netns() {
    NS=levee-imgbench-$$
    ip netns add "$NS"
    ip -n "$NS" link set lo up
    ip -n "$NS" link add br0 type bridge
    ip -n "$NS" link set br0 type bridge forward_delay 0 stp_state 0
    ip -n "$NS" addr add $SERVER_IP/24 dev br0
    ip -n "$NS" -6 addr add fd99::1/64 dev br0 nodad
    ip -n "$NS" link set br0 up
    ip -n "$NS" tuntap add dev tap0 mode tap
    ip -n "$NS" link set tap0 master br0 up
}

# Waits until FILE contains PATTERN (grep -E); prints seconds since START.
wait_for() {
    local file=$1 pattern=$2 start=$3
    while :; do
        if grep -aqE "$pattern" "$file" 2>/dev/null; then
            awk -v n="$(date +%s.%N)" -v s="$start" 'BEGIN { printf "%.2f\n", n - s }'
            return 0
        fi
        awk -v n="$(date +%s.%N)" -v s="$start" -v t=$TIMEOUT 'BEGIN { exit !(n - s > t) }' && return 1
        sleep 0.05
    done
}

qemu() {
    local fw=$1 dir=$2
    local args=(-accel tcg -m 1024 -display none -monitor none -no-reboot -serial "file:$dir/serial.log"
        -netdev tap,id=n0,ifname=tap0,script=no,downscript=no)
    local nic="virtio-net-pci,netdev=n0,mac=$MAC"
    if [ "$fw" = uefi ]; then
        cp "$OVMF_VARS" "$dir/vars.fd"
        args+=(-drive "if=pflash,format=raw,unit=0,readonly=on,file=$OVMF_CODE" -drive "if=pflash,format=raw,unit=1,file=$dir/vars.fd")
        # OVMF's own PXE, as on a blank box, then ipxe.efi.
        nic+=",romfile="
    fi
    args+=(-device "$nic,bootindex=1")
    ip netns exec "$NS" qemu-system-x86_64 "${args[@]}" </dev/null >/dev/null 2>"$dir/qemu.log" &
    PIDS+=($!)
}

# One boot each; prints the seconds from QEMU start to the marker.
boot_levee() {
    local fw=$1 dir=$2
    "$LEVEE" --data-dir "$dir/data" image import "$W/image" --profile default >/dev/null
    "$LEVEE" --data-dir "$dir/data" profile set default --cmdline \
        "console=ttyS0,115200 levee.url={url} levee.root={root_url} levee.sha256={root_sha256} {image_cmdline} no_timer_check" >/dev/null
    netns
    RUST_LOG=info ip netns exec "$NS" "$LEVEE" --data-dir "$dir/data" serve --http $SERVER_IP:80 --tftp $SERVER_IP:69 \
        --dhcp-interface br0 --dhcp-mode full --dhcp-range 10.99.0.100-10.99.0.150 >/dev/null 2>"$dir/serve.log" &
    PIDS+=($!)
    wait_for "$dir/serve.log" "http listening" "$(date +%s.%N)" >/dev/null || { echo "levee serve did not start" >&2; return 1; }
    local start
    start=$(date +%s.%N)
    qemu "$fw" "$dir"
    wait_for "$dir/serve.log" 'status report received.*agent' "$start"
}

boot_baseline() {
    local fw=$1 dir=$2
    netns
    ip netns exec "$NS" python3 -u -m http.server 8080 --bind $SERVER_IP --directory "$B" >"$dir/http.log" 2>&1 &
    PIDS+=($!)
    ip netns exec "$NS" dnsmasq --keep-in-foreground --conf-file=/dev/null --port=0 --user=root --log-facility=- --log-dhcp \
        --no-ping --bind-interfaces --interface=br0 --dhcp-range=10.99.0.100,10.99.0.150,255.255.255.0,1h \
        --dhcp-range=::,constructor:br0,ra-only --enable-ra --dhcp-userclass=set:ipxe,iPXE \
        --dhcp-match=set:efi,option:client-arch,7 --dhcp-match=set:efi,option:client-arch,9 \
        --dhcp-boot=tag:ipxe,http://$SERVER_IP:8080/boot.ipxe --dhcp-boot=tag:!ipxe,tag:efi,ipxe.efi \
        --dhcp-boot=tag:!ipxe,tag:!efi,undionly.kpxe --dhcp-option=tag:ipxe,encap:175,176,1b \
        --enable-tftp --tftp-root="$B/tftp" --dhcp-leasefile="$dir/leases" --pid-file="$dir/dnsmasq.pid" \
        >/dev/null 2>"$dir/dnsmasq.log" &
    PIDS+=($!)
    wait_for "$dir/http.log" "Serving HTTP" "$(date +%s.%N)" >/dev/null || { echo "python3 -m http.server did not start" >&2; return 1; }
    local start
    start=$(date +%s.%N)
    qemu "$fw" "$dir"
    wait_for "$dir/serial.log" "LEVEE-BASELINE-MARKER" "$start"
}

RUN=$W/runs/$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUN"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); rounds: $ROUNDS; logs: $RUN" >&2
declare -A T
for r in $(seq 1 "$ROUNDS"); do
    for fw in $FIRMWARES; do
        for side in levee baseline; do
            d=$RUN/$r-$fw-$side
            mkdir -p "$d"
            # Not in $(...): the servers and QEMU it starts must stay in this
            # shell's PIDS for cleanup.
            if boot_$side "$fw" "$d" >"$d/seconds"; then
                s=$(cat "$d/seconds")
                printf '%s round %s %-8s %6.1f s  (load %s)\n' "$fw" "$r" "$side" "$s" "$(cut -d' ' -f1 /proc/loadavg)" >&2
                T[$fw-$side]="${T[$fw-$side]:-} $s"
            else
                echo "$fw round $r $side: no marker within ${TIMEOUT} s (logs in $d)" >&2
            fi
            cleanup
        done
    done
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
echo
echo "QEMU start to marker, TCG, medians of $ROUNDS interleaved rounds (load average after: $(cut -d' ' -f1-3 /proc/loadavg))"
printf '%-5s %10s %10s %8s   %s\n' fw levee baseline ratio "all (levee | baseline)"
for fw in $FIRMWARES; do
    l=$(echo "${T[$fw-levee]:-}" | median)
    b=$(echo "${T[$fw-baseline]:-}" | median)
    ratio=$(awk -v l="$l" -v b="$b" 'BEGIN { if (l > 0) printf "%.2fx", b / l; else print "-" }')
    printf '%-5s %9.1fs %9.1fs %8s   %s |%s\n' "$fw" "$l" "$b" "$ratio" "${T[$fw-levee]:-}" "${T[$fw-baseline]:-}"
done
