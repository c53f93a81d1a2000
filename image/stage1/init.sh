#!/bin/busybox sh
# Levee stage 1. Gets the root file system named by levee.root= (an HTTP
# URL, checked against levee.sha256= before anything mounts it, or
# PARTLABEL=... for an installed appliance), mounts it read-only under a
# tmpfs overlay and hands over to systemd.
/bin/busybox --install -s /bin
export PATH=/bin

mount -t devtmpfs -o mode=0755 devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run

say() { echo "levee-stage1: $*"; }

# A refused root must not boot: say why, loudly, and stay here.
fail() {
    while true; do
        say "FATAL: $*"
        say "refusing to boot; fix the boot configuration and power-cycle this machine"
        sleep 60
    done
}

arg() {
    for x in $(cat /proc/cmdline); do
        case "$x" in "$1="*) echo "${x#*=}"; return 0 ;; esac
    done
}

ROOT=$(arg levee.root)
SUM=$(arg levee.sha256 | tr 'A-F' 'a-f')
[ -n "$ROOT" ] || fail "no levee.root= on the kernel command line"

# QEMU's i6300esb (PCI 8086:25ab) with a 60 s heartbeat, which covers the
# hand-over to systemd under emulation (its default is 30 s).
if grep -qs 'v00008086d000025AB' /sys/bus/pci/devices/*/modalias; then
    modprobe -q i6300esb heartbeat=60 2>/dev/null
fi

# Drivers of the devices present only (modules.alias), in two passes since
# virtio devices appear once virtio_pci is in: every module load costs ~0.1 s
# under emulation. load_all is the fallback when no wanted device shows up.
# Real boards' watchdogs that are platform devices are loaded the same way:
# ACPI's WDAT, and Intel's TCO, which lpc_ich or i2c_i801 (loaded for their
# PCI device in pass 1) registers for pass 2. Only those two aliases: each
# modprobe costs time under emulation. AMD's sp5100_tco binds a PCI device.
# Their timeouts (60 s) are in /etc/modprobe.d/levee-watchdog.conf.
for pass in 1 2; do
    for f in /sys/bus/pci/devices/*/modalias /sys/bus/virtio/devices/*/modalias; do
        [ -r "$f" ] && modprobe -q "$(cat "$f")" 2>/dev/null
    done
    for f in /sys/bus/platform/devices/*/modalias; do
        case "$(cat "$f" 2>/dev/null)" in
        platform:iTCO_wdt | platform:wdat_wdt) modprobe -q "$(cat "$f")" 2>/dev/null ;;
        esac
    done
done
for m in loop squashfs overlay; do modprobe -q "$m" 2>/dev/null; done
ALL_LOADED=
load_all() {
    [ -n "$ALL_LOADED" ] && return 0
    ALL_LOADED=1
    say "loading every stage-1 driver"
    for m in $(cat /etc/levee-modules); do modprobe -q "$m" 2>/dev/null; done
}

# DHCP on the boot interface (BOOTIF= from PXE) or on the first Ethernet
# port that gets a lease.
net_up() {
    want=$(arg BOOTIF | sed 's/^01-//; s/-/:/g' | tr 'A-F' 'a-f')
    tries=0
    while [ $tries -lt 20 ]; do
        for dev in /sys/class/net/*; do
            ifc=${dev##*/}
            [ "$ifc" = lo ] && continue
            [ "$(cat "$dev/type" 2>/dev/null)" = 1 ] || continue
            [ -z "$want" ] || [ "$(cat "$dev/address")" = "$want" ] || continue
            ip link set "$ifc" up
            if udhcpc -i "$ifc" -n -q -f -t 3 -T 1 -A 1 -s /etc/udhcpc.script >/dev/null 2>&1; then
                NETIF=$ifc
                say "network up on $ifc ($(ip -4 -o addr show dev "$ifc" | awk '{print $4}'))"
                return 0
            fi
            ip link set "$ifc" down
        done
        tries=$((tries + 1))
        [ $tries -lt 2 ] || load_all
        sleep 1
    done
    fail "no network interface got a DHCP lease"
}

mkdir -p /run/levee/lower /run/levee/rw
case "$ROOT" in
http://*)
    [ -n "$SUM" ] || fail "no levee.sha256= on the kernel command line: refusing to mount an unchecked root from $ROOT"
    net_up
    n=0
    until wget -q -O /run/levee/root.squashfs "$ROOT"; do
        n=$((n + 1))
        [ $n -lt 5 ] || fail "could not download $ROOT"
        sleep 2
    done
    GOT=$(sha256sum /run/levee/root.squashfs | cut -d' ' -f1)
    if [ "$GOT" != "$SUM" ]; then
        rm -f /run/levee/root.squashfs
        fail "root file system sha256 MISMATCH for $ROOT: expected $SUM, got $GOT"
    fi
    say "root file system sha256 ok ($SUM)"
    mount -t squashfs -o ro,loop /run/levee/root.squashfs /run/levee/lower || fail "cannot mount the root file system"
    ;;
PARTLABEL=*)
    label=${ROOT#PARTLABEL=}
    DEV=
    n=0
    while [ -z "$DEV" ]; do
        for ue in /sys/class/block/*/uevent; do
            if grep -qx "PARTNAME=$label" "$ue"; then
                DEV=/dev/$(sed -n 's/^DEVNAME=//p' "$ue")
            fi
        done
        [ -n "$DEV" ] && break
        n=$((n + 1))
        [ $n -lt 3 ] || load_all
        [ $n -lt 30 ] || fail "no partition labelled $label"
        sleep 1
    done
    say "root on $DEV ($ROOT)"
    [ "$(head -c 4 "$DEV")" = hsqs ] || fail "$DEV ($label) holds no squashfs"
    if [ -n "$SUM" ]; then
        # The image's sha256 covers the squashfs padded to 4 KiB.
        used=$(od -A n -t u8 -j 40 -N 8 "$DEV" | tr -d ' ')
        size=$(( (used + 4095) / 4096 * 4096 ))
        GOT=$(head -c "$size" "$DEV" | sha256sum | cut -d' ' -f1)
        [ "$GOT" = "$SUM" ] || fail "root file system sha256 MISMATCH on $DEV ($label): expected $SUM, got $GOT"
        say "root file system sha256 ok ($SUM)"
    fi
    mount -t squashfs -o ro "$DEV" /run/levee/lower || fail "cannot mount $DEV"
    ;;
*)
    fail "levee.root=$ROOT is neither http://... nor PARTLABEL=..."
    ;;
esac

# The hardware watchdog, on disk boots: armed here, once the root checked
# out, and kept from now on by systemd (RuntimeWatchdogSec). A slot that
# hangs after this point, before or after systemd takes over, is reset,
# and GRUB's spent try sends the next boot to the other slot. Opened and
# closed without the magic 'V', the watchdog keeps running. A network
# boot leaves it to systemd: a reset there would only boot the network.
case "$ROOT" in
PARTLABEL=*)
    if [ -c /dev/watchdog ]; then
        echo > /dev/watchdog && say "hardware watchdog armed ($(cat /sys/class/watchdog/watchdog0/identity 2>/dev/null), $(cat /sys/class/watchdog/watchdog0/timeout 2>/dev/null) s)"
    fi
    ;;
esac

mount -t tmpfs -o mode=0755 tmpfs /run/levee/rw
mkdir -p /run/levee/rw/upper /run/levee/rw/work
mount -t overlay overlay -o lowerdir=/run/levee/lower,upperdir=/run/levee/rw/upper,workdir=/run/levee/rw/work /newroot ||
    fail "cannot mount the overlay root"
[ -x /newroot/sbin/init ] || [ -L /newroot/sbin/init ] || fail "the root file system has no /sbin/init"

# The lease stays on the boot NIC (with its lifetime) so the agent can
# report before systemd-networkd has started; networkd then takes the
# link over with its own DHCP client (same MAC client id, same address).
say "switching to systemd"
for d in dev proc sys run; do mount --move "/$d" "/newroot/$d"; done
exec switch_root /newroot /sbin/init
