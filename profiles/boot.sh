#!/usr/bin/env bash
# profiles/boot.sh DISK.raw [INSTANCE.toml] — boots a cairn disk image under QEMU (UEFI with OVMF, software
# emulation, no network out: -nic user,restrict=on), prints the console's cairn lines, waits (bounded) for
# `cairn-agent: ready`, then shuts the guest down with ACPI. INSTANCE.toml, if given, reaches the agent by fw_cfg.
# Exit 0 on `ready`, 1 on `failed` or a timeout (QEMU is then killed by its own pid).
set -euo pipefail

disk=${1:?usage: profiles/boot.sh DISK.raw [INSTANCE.toml]}
instance=${2:-}
timeout=${CAIRN_BOOT_TIMEOUT:-300}
work=$(mktemp -d)
qemu_pid=
cleanup() {
  [[ -n $qemu_pid ]] && kill "$qemu_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
args=(-accel tcg -machine q35 -m 1024 -smp 2 -display none -no-reboot
  -drive "if=pflash,format=raw,unit=0,file=/usr/share/OVMF/OVMF_CODE_4M.fd,readonly=on"
  -drive "if=pflash,format=raw,unit=1,file=$work/vars.fd"
  -drive "file=$disk,if=virtio,format=raw"
  -nic user,restrict=on,model=virtio-net-pci
  -serial "file:$work/serial.log"
  -monitor "tcp:127.0.0.1:$port,server,nowait")
[[ -n $instance ]] && args+=(-fw_cfg "name=opt/cairn/instance.toml,file=$instance")
start=$(date +%s.%N)
qemu-system-x86_64 "${args[@]}" &
qemu_pid=$!

outcome=timeout
for ((i = 0; i < timeout * 4; i++)); do
  if grep -aq '^cairn-agent: ready ' "$work/serial.log" 2>/dev/null; then outcome=ready; break; fi
  if grep -aqE '^cairn-(agent|init): failed ' "$work/serial.log" 2>/dev/null; then outcome=failed; break; fi
  kill -0 "$qemu_pid" 2>/dev/null || { outcome=exited; break; }
  sleep 0.25
done
grep -a '^cairn-' "$work/serial.log" || true
elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
echo "boot: $outcome after ${elapsed} s (QEMU start to the agent's line)"

# ACPI power button, pressed again until the guest listens; bounded.
for ((i = 0; i < 18; i++)); do
  kill -0 "$qemu_pid" 2>/dev/null || break
  { exec 3<>"/dev/tcp/127.0.0.1/$port" && echo system_powerdown >&3 && sleep 0.5 && exec 3>&-; } 2>/dev/null || true
  for ((j = 0; j < 40; j++)); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.25; done
done
if kill -0 "$qemu_pid" 2>/dev/null; then
  echo "boot: the guest did not power down; killing QEMU (pid $qemu_pid)" >&2
  kill "$qemu_pid"
fi
wait "$qemu_pid" 2>/dev/null || true
qemu_pid=
[[ $outcome == ready ]]
