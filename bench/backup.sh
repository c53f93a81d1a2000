#!/usr/bin/env bash
# Backup engine benchmark: levee-agent vs restic vs borgbackup on the same
# data, in one run. Not a test; prints a table and ratios.
#
#   bench/backup.sh                      # ~2 GB from /usr
#   LEVEE_BENCH_SRC="/usr/lib /usr/share" bench/backup.sh
#   LEVEE_BENCH_DATASET=usr-dup bench/backup.sh   # /usr/share + /usr/lib/x86_64-linux-gnu,
#                                                # /usr/share/doc copied twice (duplicate content)
#
# Phases per tool: first backup of v1, second backup after 1% of files
# changed (v2), full restore of v2 (each tool into a fresh ext4 file system
# of its own when run as root, timed until synced), repository size, peak
# RSS (time -v). Page cache is warm for every tool (the data is read once
# first, each repository before its restore).
set -euo pipefail

SRC=${LEVEE_BENCH_SRC:-"/usr/share /usr/lib/x86_64-linux-gnu /usr/bin /usr/include /usr/lib/gcc /usr/libexec"}
DATASET=${LEVEE_BENCH_DATASET:-usr}
case $DATASET in
    usr) ;;
    usr-dup) SRC="/usr/share /usr/lib/x86_64-linux-gnu" ;;
    *) echo "LEVEE_BENCH_DATASET: usr or usr-dup, not $DATASET" >&2; exit 1 ;;
esac
WORK=${LEVEE_BENCH_DIR:-/tmp/levee-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-backup}

for t in restic borg /usr/bin/time cargo; do
    command -v "$t" >/dev/null || { echo "missing $t: apt-get install -y restic borgbackup time" >&2; exit 1; }
done
(cd "$ROOT" && cargo build --release -q -p levee-agent --bin levee-agent --example index_memory)
LEVEE=$CARGO_TARGET_DIR/release/levee-agent

# A run stopped half-way may have left restore file systems mounted.
for m in "$WORK"/r-*; do
    if mountpoint -q "$m" 2>/dev/null; then
        dev=$(findmnt -n -o SOURCE "$m"); umount "$m"; losetup -d "$dev" 2>/dev/null || true
    fi
done
rm -rf "$WORK"; mkdir -p "$WORK"
DATA=$WORK/data
echo "== copying data from: $SRC" >&2
mkdir -p "$DATA"
for s in $SRC; do cp -a --parents "$s" "$DATA"/ 2>/dev/null || true; done
if [ "$DATASET" = usr-dup ]; then
    cp -a "$DATA/usr/share/doc" "$DATA/usr/share/doc-copy2"
fi
find "$DATA" -type f | sort > "$WORK/files"
NFILES=$(wc -l < "$WORK/files")
BYTES=$(du -sb "$DATA" | cut -f1)
find "$DATA" -type f -print0 | xargs -0 cat > /dev/null   # warm the page cache
sync   # the copy's writeback must not land in the first tool's backup

# levee refuses secrets under 8 bytes; the same one for all three tools.
export RESTIC_PASSWORD=bench-secret BORG_PASSPHRASE=bench-secret LEVEE_PASSWORD=bench-secret
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
"$LEVEE" --repo "$WORK/levee" init >/dev/null
restic init --repo "$WORK/restic" >/dev/null 2>&1
borg init -e repokey "$WORK/borg" >/dev/null 2>&1

declare -A T M
run() { # name phase cmd...
    local name=$1 phase=$2; shift 2
    /usr/bin/time -v -o "$WORK/time.$name.$phase" "$@" > "$WORK/out.$name.$phase" 2>&1 || { echo "$name $phase failed:"; cat "$WORK/out.$name.$phase"; exit 1; }
    T[$name.$phase]=$(awk -F': ' '/Elapsed/ {split($2,a,":"); s=0; for(i=1;i<=length(a);i++) s=s*60+a[i]; print s}' "$WORK/time.$name.$phase")
    M[$name.$phase]=$(awk -F': ' '/Maximum resident/ {print $2}' "$WORK/time.$name.$phase")
    echo "  $name $phase: ${T[$name.$phase]} s, ${M[$name.$phase]} KiB peak" >&2
}

phase() { # phase
    run levee "$1" "$LEVEE" --repo "$WORK/levee" --quiet backup "$DATA"
    run restic "$1" restic --repo "$WORK/restic" backup --quiet "$DATA"
    run borg "$1" borg create "$WORK/borg::$1" "$DATA"
}

LOAD_START=$(cut -d" " -f1-3 /proc/loadavg)
echo "== first backup ($NFILES files, $BYTES bytes; load average $LOAD_START)" >&2
phase first
echo "== changing 1% of files" >&2
awk 'NR % 100 == 0' "$WORK/files" | while read -r f; do
    printf 'levee benchmark change %s\n' "$RANDOM" | dd of="$f" bs=1 seek=$(( $(stat -c %s "$f") / 2 )) conv=notrunc status=none
done
echo "== second backup" >&2
phase second

LOAD_RESTORE=$(cut -d" " -f1-3 /proc/loadavg)
echo "== restore (load average $LOAD_RESTORE)" >&2
# Fair restores: each tool restores into an empty ext4 file system of its
# own, made the same way (a loop image with direct I/O, so `sync -f` means on
# disk); its repository is read once first so every tool starts with its
# repository in the page cache (levee writes packs with O_DIRECT, so they
# would otherwise be cold while restic's and borg's are warm); and the
# timed command ends with `sync -f` on the target: every tool is timed until
# its restore is on disk, whether or not it syncs itself. Restoring into the
# work dir instead made the second tool pay for the first one's deletion
# (ext4 without a journal skips inodes deleted in the last 60-360 s, and
# `recently_deleted` was 45% of a restore right after `rm -rf`).
# Without root (no loop mounts): fresh directories in $WORK, and a wait past
# that window after each removal.
FS_BYTES=$(( (BYTES * 2 / 1048576 + 2048) * 1048576 ))   # whole MiB: losetup wants sectors
restore_target() { # name -> prints the empty directory to restore into
    local mnt=$WORK/r-$1
    mkdir -p "$mnt"
    if [ "$(id -u)" = 0 ]; then
        truncate -s "$FS_BYTES" "$WORK/fs.$1.img"
        mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$WORK/fs.$1.img"
        local dev; dev=$(losetup -f --show --direct-io=on "$WORK/fs.$1.img")
        mount "$dev" "$mnt"
    fi
    echo "$mnt"
}
drop_target() { # name
    local mnt=$WORK/r-$1
    if mountpoint -q "$mnt"; then
        local dev; dev=$(findmnt -n -o SOURCE "$mnt")
        umount "$mnt"; losetup -d "$dev" 2>/dev/null || true
        rm -f "$WORK/fs.$1.img"
    fi
    rm -rf "$mnt"; sync
    [ "$(id -u)" = 0 ] || sleep 65
}
warm() { find "$1" -type f -print0 | xargs -0 cat > /dev/null; sync; }
trap 'for n in levee restic borg; do mountpoint -q "$WORK/r-$n" 2>/dev/null && drop_target "$n"; done' EXIT
R=$(restore_target levee); warm "$WORK/levee"
run levee restore sh -c "'$LEVEE' --repo '$WORK/levee' --quiet restore latest --target '$R' && sync -f '$R'"
diff -rq --no-dereference "$DATA" "$R/data" >/dev/null || { echo "levee restore differs from the data!"; exit 1; }
drop_target levee
R=$(restore_target restic); warm "$WORK/restic"
run restic restore sh -c "restic --repo '$WORK/restic' restore latest --target '$R' && sync -f '$R'"
drop_target restic
R=$(restore_target borg); warm "$WORK/borg"
run borg restore sh -c "cd '$R' && borg extract '$WORK/borg::second' && sync -f ."
drop_target borg

SIZE_levee=$(du -sb "$WORK/levee" | cut -f1); SIZE_restic=$(du -sb "$WORK/restic" | cut -f1); SIZE_borg=$(du -sb "$WORK/borg" | cut -f1)
IDX=$("$CARGO_TARGET_DIR/release/examples/index_memory" 2)
PACKS=$("$LEVEE" --repo "$WORK/levee" --json check | python3 -c 'import json,sys; print(json.load(sys.stdin)["packs"])')

ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }
echo
echo "load average (1/5/15 min): start $LOAD_START, before the restores $LOAD_RESTORE, end $(cut -d" " -f1-3 /proc/loadavg)"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(uname -r); data ($DATASET): $NFILES files, $((BYTES / 1000000)) MB from $SRC"
printf '%-16s %10s %10s %10s %12s %12s\n' phase levee restic borg restic/levee borg/levee
for p in first second restore; do
    printf '%-16s %9ss %9ss %9ss %12s %12s\n' "$p" "${T[levee.$p]}" "${T[restic.$p]}" "${T[borg.$p]}" "$(ratio "${T[restic.$p]}" "${T[levee.$p]}")" "$(ratio "${T[borg.$p]}" "${T[levee.$p]}")"
done
printf '%-16s %10s %10s %10s %12s %12s\n' "repo MB" $((SIZE_levee/1000000)) $((SIZE_restic/1000000)) $((SIZE_borg/1000000)) "$(ratio "$SIZE_restic" "$SIZE_levee")" "$(ratio "$SIZE_borg" "$SIZE_levee")"
for p in first second restore; do
    printf '%-16s %10s %10s %10s\n' "peak MiB $p" $((${M[levee.$p]}/1024)) $((${M[restic.$p]}/1024)) $((${M[borg.$p]}/1024))
done
# CPU-seconds (user + system) are steadier than wall time on a shared machine.
cpu() { awk -F': ' '/User time|System time/ {s+=$2} END {printf "%.1f", s}' "$WORK/time.$1.$2"; }
for p in first second restore; do
    printf '%-16s %10s %10s %10s\n' "cpu s $p" "$(cpu levee "$p")" "$(cpu restic "$p")" "$(cpu borg "$p")"
done
echo "levee packs: $PACKS; in-memory index (2 M synthetic chunks, RSS growth): $IDX"
