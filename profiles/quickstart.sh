#!/usr/bin/env bash
# profiles/quickstart.sh — cairn's main job end to end on a fresh Debian 12 machine, as root.
#
# Installs what it needs (rocks/setup-host), builds cairn and its static agent, starts a local registry on
# localhost:5000 (Debian's docker-registry, storage in /var/tmp/cairn-registry-5000), builds the node base rock
# from Debian packages and pushes it there, pins profiles/quickstart.toml to the digest that registry serves
# (this rewrites the profile in place: `git diff` shows the new digest), builds it into ./out (a root tarball and a
# bootable raw disk), and boots the disk under QEMU to the agent's `ready` line.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*" >&2; }

step "host packages and the musl target"
bash rocks/setup-host

step "build cairn and cairn-agent"
cargo build --release --locked -p cairn
cargo build --profile agent --locked -p cairn-agent --target x86_64-unknown-linux-musl

step "local registry on localhost:5000"
bash rocks/registry 5000 /var/tmp/cairn-registry-5000

step "node base rock"
bash rocks/node-base/build --push localhost:5000

step "pin and build the quickstart profile"
target/release/cairn pin profiles/quickstart.toml
target/release/cairn build profiles/quickstart.toml --out out

step "boot it (QEMU, UEFI, no network out) to the agent's ready line"
target/release/cairn boot out/quickstart
