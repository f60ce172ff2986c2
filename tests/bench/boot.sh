#!/usr/bin/env bash
# tests/bench/boot.sh [RUNS] — boot time under QEMU (TCG, UEFI/OVMF, 2 vCPUs, 1 GiB), firmware start to the line
# that says the node is up: cairn's quickstart disk (verified squashfs root, cairn's initrd, the agent) side by
# side with a plain Debian boot of the same kernel and root (Debian's own initramfs, a writable ext4 root, the
# same systemd-boot), both from out/quickstart.{raw,tar} (profiles/quickstart.sh makes them). Interleaved runs;
# prints min / median / max seconds from QEMU's start to `cairn-agent: ready`, and to the login prompt for both.
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=${1:-3}
RAW=out/quickstart.raw
TAR=out/quickstart.tar
[[ -f $RAW && -f $TAR ]] || { echo "build the quickstart first: bash profiles/quickstart.sh" >&2; exit 2; }
WORK=target/bench-boot
rm -rf "$WORK"
mkdir -p "$WORK/root"

# The plain disk: the same root tarball as a writable ext4, booted by Debian's own initramfs.
tar -C "$WORK/root" --numeric-owner --xattrs --xattrs-include='*' -xpf "$TAR"
kver=$(ls "$WORK/root/boot" | sed -n 's/^vmlinuz-//p' | sort -V | tail -n1)
root_uuid=5a3c1a52-8d36-4c8e-9a57-0c1d2e3f4a5b
truncate -s 1536M "$WORK/root.ext4"
mke2fs -q -F -t ext4 -U "$root_uuid" -d "$WORK/root" "$WORK/root.ext4"
truncate -s 64M "$WORK/esp.fat"
mformat -i "$WORK/esp.fat" -F -v ESP ::
mkdir -p "$WORK/esp/EFI/BOOT" "$WORK/esp/loader/entries" "$WORK/esp/debian"
cp "$WORK/root/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$WORK/esp/EFI/BOOT/BOOTX64.EFI"
cp "$WORK/root/boot/vmlinuz-$kver" "$WORK/root/boot/initrd.img-$kver" "$WORK/esp/debian/"
printf 'default debian.conf\ntimeout 0\n' >"$WORK/esp/loader/loader.conf"
printf 'title Debian\nlinux /debian/vmlinuz-%s\ninitrd /debian/initrd.img-%s\noptions root=UUID=%s rw console=ttyS0\n' \
  "$kver" "$kver" "$root_uuid" >"$WORK/esp/loader/entries/debian.conf"
mcopy -s -i "$WORK/esp.fat" "$WORK/esp/EFI" "$WORK/esp/loader" "$WORK/esp/debian" ::/
truncate -s 1700M "$WORK/plain.raw"
printf 'label: gpt\nstart=2048, size=131072, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\nstart=133120, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709\n' |
  sfdisk --quiet "$WORK/plain.raw"
dd if="$WORK/esp.fat" of="$WORK/plain.raw" bs=1M seek=1 conv=notrunc status=none
dd if="$WORK/root.ext4" of="$WORK/plain.raw" bs=1M seek=65 conv=notrunc status=none

# boot DISK: seconds from QEMU's start to the agent's ready line (or -) and to the login prompt.
boot() {
  local disk=$1 log=$WORK/serial.log start ready=- login=- t
  cp /usr/share/OVMF/OVMF_VARS_4M.fd "$WORK/vars.fd"
  rm -f "$log"
  start=$(date +%s.%N)
  qemu-system-x86_64 -accel tcg -machine q35 -m 1024 -smp 2 -display none -no-reboot \
    -drive if=pflash,format=raw,unit=0,file=/usr/share/OVMF/OVMF_CODE_4M.fd,readonly=on \
    -drive "if=pflash,format=raw,unit=1,file=$WORK/vars.fd" -drive "file=$disk,if=virtio,format=raw,snapshot=on" \
    -nic user,restrict=on,model=virtio-net-pci -serial "file:$log" -monitor none &
  local pid=$!
  for ((i = 0; i < 1200; i++)); do
    t=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
    [[ $ready == - ]] && grep -aq '^cairn-agent: ready' "$log" 2>/dev/null && ready=$t
    if grep -aq 'login:' "$log" 2>/dev/null; then login=$t; break; fi
    sleep 0.25
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo "$ready $login"
}

declare -a C_READY C_LOGIN P_LOGIN
for ((r = 1; r <= RUNS; r++)); do
  read -r a b <<<"$(boot "$RAW")"
  C_READY+=("$a") C_LOGIN+=("$b")
  read -r _ c <<<"$(boot "$WORK/plain.raw")"
  P_LOGIN+=("$c")
  echo "run $r/$RUNS: cairn ready $a s, cairn login $b s, plain Debian login $c s" >&2
done
stats() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { printf "%6s %6s %6s", v[1], v[int((NR + 1) / 2)], v[NR] }'; }
printf '\nboot under TCG, %d runs, seconds from QEMU start    min median    max\n' "$RUNS"
printf '%-48s %s\n' "cairn quickstart: cairn-agent ready" "$(stats "${C_READY[@]}")"
printf '%-48s %s\n' "cairn quickstart: login prompt" "$(stats "${C_LOGIN[@]}")"
printf '%-48s %s\n' "plain Debian, same kernel and root: login prompt" "$(stats "${P_LOGIN[@]}")"
