#!/usr/bin/env bash
# tests/bench/node-base.sh — a cold and a warm `cairn build` of the node base, side by side with the pipeline a
# user would otherwise run for the same root filesystem tarball: `skopeo copy` (registry → OCI layout) +
# `umoci unpack` + GNU `tar` (sorted, numeric ids, xattrs). Prints min / median / max wall seconds of RUNS runs
# of each (interleaved, so drift hits all alike) and the median ratios.
#
#   tests/bench/node-base.sh [PROFILE] [RUNS]
#
# PROFILE defaults to profiles/quickstart.toml, which must be pinned to a registry that serves the node base
# (profiles/quickstart.sh does that). Run as root from the repository; needs a release build of cairn
# (cargo build --release -p cairn) and the static agent. Scratch data goes under target/bench.
set -euo pipefail
cd "$(dirname "$0")/../.."

PROFILE=${1:-profiles/quickstart.toml}
RUNS=${2:-5}
CAIRN=target/release/cairn
WORK=target/bench
[[ -x $CAIRN ]] || { echo "build cairn first: cargo build --release -p cairn" >&2; exit 2; }

REF=$(sed -n '/^\[base\]/,/^\[/s/^rock *= *"\(.*\)".*/\1/p' "$PROFILE" | head -n1)
[[ $REF == *@sha256:* ]] || { echo "$PROFILE: no pinned base rock (run profiles/quickstart.sh)" >&2; exit 2; }
NAME=$(sed -n 's/^name *= *"\(.*\)".*/\1/p' "$PROFILE" | head -n1)
rm -rf "$WORK"
mkdir -p "$WORK"

now() { date +%s%N; }
declare -A TIMES

# run LABEL COMMAND...: times one run, appends seconds to TIMES[LABEL].
run() {
  local label=$1 start end
  shift
  sync
  start=$(now)
  "$@" >"$WORK/$label.log" 2>&1 || { echo "$label failed:" >&2; cat "$WORK/$label.log" >&2; exit 1; }
  end=$(now)
  TIMES[$label]+="$(awk -v ns=$((end - start)) 'BEGIN { printf "%.2f", ns / 1e9 }') "
}

cairn_cold() {
  rm -rf "$WORK/cold-cache" "$WORK/cold-out"
  "$CAIRN" build "$PROFILE" --cache "$WORK/cold-cache" --out "$WORK/cold-out"
}
cairn_warm() {
  rm -rf "$WORK/warm-out"
  "$CAIRN" build "$PROFILE" --cache "$WORK/warm-cache" --out "$WORK/warm-out"
}
pipeline() {
  rm -rf "$WORK/layout" "$WORK/bundle" "$WORK/pipeline.tar"
  # skopeo takes a tag or a digest, not both: the digest is the pin.
  local name=${REF%@*}
  [[ ${name##*/} == *:* ]] && name=${name%:*}
  skopeo copy --quiet --src-tls-verify=false "docker://$name@${REF#*@}" "oci:$WORK/layout:bench"
  umoci unpack --image "$WORK/layout:bench" "$WORK/bundle"
  tar -C "$WORK/bundle/rootfs" --sort=name --numeric-owner --owner=0 --group=0 --mtime=@0 \
    --xattrs --xattrs-include='*' -cf "$WORK/pipeline.tar" .
}

# Warm-up: fills the warm cache and the page cache.
"$CAIRN" build "$PROFILE" --cache "$WORK/warm-cache" --out "$WORK/warm-out" >/dev/null 2>&1
for ((i = 1; i <= RUNS; i++)); do
  run "cairn-cold" cairn_cold
  run "cairn-warm" cairn_warm
  run "skopeo+umoci+tar" pipeline
  printf 'run %d/%d done\n' "$i" "$RUNS" >&2
done

stats() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -n | awk '{ v[NR] = $1 } END { printf "%s %s %s", v[1], v[int((NR + 1) / 2)], v[NR] }'; }
printf '\n%s (%s), %d runs, wall seconds\n' "$NAME" "$REF" "$RUNS"
printf '%-20s %8s %8s %8s\n' command min median max
declare -A MEDIAN
for label in cairn-cold cairn-warm skopeo+umoci+tar; do
  read -r min med max <<<"$(stats "${TIMES[$label]}")"
  MEDIAN[$label]=$med
  printf '%-20s %8s %8s %8s\n' "$label" "$min" "$med" "$max"
done
awk -v p="${MEDIAN[skopeo+umoci+tar]}" -v c="${MEDIAN[cairn-cold]}" -v w="${MEDIAN[cairn-warm]}" \
  'BEGIN { printf "\npipeline / cairn cold: %.1fx    pipeline / cairn warm: %.1fx\n", p / c, p / w }'
printf 'output size: cairn %s bytes, pipeline %s bytes\n' \
  "$(stat -c %s "$WORK/warm-out/$NAME.tar")" "$(stat -c %s "$WORK/pipeline.tar")"
