#!/usr/bin/env bash
# profiles/ci.sh PROFILE [OUT] — what a CI job runs for a profile, on any CI (profiles/github-actions.yml calls
# it): the pins are current, the build is reproducible, the image boots before it ships.
#
# 1. `cairn validate`, then `cairn pin --check`: exit 1 when a rock's tag now names another digest (run
#    `cairn pin PROFILE` and commit the change), before anything is pulled.
# 2. `cairn build` with SOURCE_DATE_EPOCH set to the last commit's time, so a commit gives the same bytes on
#    every machine; the outputs' sha256 go to OUT/SHA256SUMS and are checked with sha256sum -c.
# 3. `cairn inspect` into OUT/NAME.inspect.txt (what is in the image, for the job's artefacts).
# 4. `cairn boot` (QEMU, UEFI, no network out) until the agent says ready: exit 1 if it fails or times out. The
#    whole console is kept as OUT/NAME.console.log. CAIRN_BOOT_ARGS adds options (`--accel kvm` on a runner
#    with /dev/kvm, `--instance FILE`, `--timeout SECONDS`).
#
# CAIRN names the cairn binary (default: cairn on PATH); CAIRN_AGENT and CAIRN_CACHE are cairn's own.
set -euo pipefail

profile=${1:?usage: profiles/ci.sh PROFILE [OUT]}
out=${2:-out}
cairn=${CAIRN:-cairn}
read -r -a boot_args <<<"${CAIRN_BOOT_ARGS:-}"

step() { printf '\n== %s\n' "$*" >&2; }

if [[ -z ${SOURCE_DATE_EPOCH:-} ]]; then
  SOURCE_DATE_EPOCH=$(git -C "$(dirname "$profile")" log -1 --format=%ct 2>/dev/null || true)
  export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0}
fi

step "validate and check the pins of $profile"
"$cairn" validate "$profile"
"$cairn" pin --check "$profile"

step "build (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)"
mkdir -p "$out"
built=$(mktemp)
trap 'rm -f "$built"' EXIT
"$cairn" build "$profile" --out "$out" >"$built"
report=$(sed -n 's/^report: //p' "$built")
[[ -n $report ]] || { echo "ci.sh: cairn build named no report" >&2; exit 1; }
grep -v '^report: ' "$built" >"$out/SHA256SUMS"
sha256sum --check --quiet "$out/SHA256SUMS"
cat "$out/SHA256SUMS"
build=${report%.manifest.json}

step "inspect $build"
"$cairn" inspect "$build" >"$build.inspect.txt"
head -n 12 "$build.inspect.txt"

step "boot $build"
"$cairn" boot "$build" --console "$build.console.log" "${boot_args[@]}"
