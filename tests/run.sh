#!/usr/bin/env bash
# tests/run.sh — cairn's whole test suite on a Debian 12 machine, as root (what CI runs through .ci/run).
#
# Installs what the tests need (rocks/setup-host), checks formatting and lints, builds the workspace and the
# static agent, builds the node base rock once (rocks/node-base/build reuses a complete layout from an earlier
# run), then runs every test. The tests start their own registries on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*" >&2; }

step "host packages and the musl target"
bash rocks/setup-host

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --all-targets --locked
# The builder installs this static agent in every image it makes.
cargo build --profile agent --locked -p cairn-agent --target x86_64-unknown-linux-musl
# The Kubernetes boot test layers this static contract double of the `k8s` command onto the node base.
cargo build --release --locked -p cairn-k8s-double --target x86_64-unknown-linux-musl

step "node base rock"
export CAIRN_NODE_BASE_LAYOUT=${CAIRN_NODE_BASE_LAYOUT:-$PWD/rocks/node-base/out}
bash rocks/node-base/build --out "$CAIRN_NODE_BASE_LAYOUT"

step "Kubernetes node base rock"
export CAIRN_K8S_NODE_BASE_LAYOUT=${CAIRN_K8S_NODE_BASE_LAYOUT:-$PWD/rocks/node-base/out-kubernetes}
bash rocks/node-base/build --kubernetes --out "$CAIRN_K8S_NODE_BASE_LAYOUT"

step "sandbox (pause) rock"
export CAIRN_PAUSE_LAYOUT=${CAIRN_PAUSE_LAYOUT:-$PWD/rocks/pause/out}
bash rocks/pause/build --out "$CAIRN_PAUSE_LAYOUT"

step "tests"
cargo test --workspace --locked
