#!/usr/bin/env bash
# Builds the base images repository environments start from, without a registry: a Debian root
# filesystem from the Debian mirror (mmdebstrap), `docker import`ed, labelled with a hash of its
# inputs and rebuilt only when they change. A repository names one in `.backporcher.toml`
# (`[environment] image = …`); its setup commands then run on it and the result is snapshotted by
# the runner. The agent CLI is not in these images: the runner mounts it at /opt/bp.
#
#   backporcher-env-python:latest  python3 with venv and pip (Debian bookworm)
#   backporcher-env-rust:latest    Debian's cargo and rustc, a C toolchain (Debian trixie: a
#                                  cargo that reads the crates.io index sparsely)
#
# Every image has the sandbox user (uid 1000), /workspace, and /opt/env owned by that user (where
# setup puts what must survive into the snapshot: the sandbox's home is a fresh tmpfs).
# Usage: build-offline.sh [python|rust]...   (default: both)
set -euo pipefail
common="bash,ca-certificates,git,socat,procps,coreutils,findutils,grep,sed,diffutils,patch,make"

declare -A suites=([python]="${DEBIAN_SUITE:-bookworm}" [rust]="${DEBIAN_SUITE_RUST:-trixie}")
declare -A packages=(
  [python]="$common,python3,python3-venv,python3-pip"
  [rust]="$common,cargo,rustc,gcc,libc6-dev"
)

for tool in mmdebstrap docker; do
  command -v "$tool" >/dev/null || { echo "error: $tool is required (apt-get install mmdebstrap)" >&2; exit 1; }
done

build() {
  local name="$1" tag="backporcher-env-$1:latest" hash work suite="${suites[$1]}"
  hash=$(printf '%s\n' "$suite" "${packages[$name]}" | cat - "$0" | sha256sum | cut -c1-16)
  if [ "$(docker image inspect -f '{{ index .Config.Labels "backporcher.inputs" }}' "$tag" 2>/dev/null || true)" = "$hash" ]; then
    echo "environment image $tag is up to date ($hash)"
    return
  fi
  work="$(mktemp -d)"
  echo "== $tag: root filesystem"
  mmdebstrap --quiet --variant=minbase --include="${packages[$name]}" \
    --customize-hook='chroot "$1" useradd --create-home --uid 1000 --shell /bin/bash agent' \
    --customize-hook='mkdir -p "$1/workspace" "$1/opt/env" "$1/opt/bp" && chown 1000:1000 "$1/workspace" "$1/opt/env"' \
    --customize-hook='rm -rf "$1/var/cache/apt" "$1/var/lib/apt/lists"/*' \
    "$suite" "$work/rootfs.tar"
  docker import \
    --change 'USER 1000:1000' \
    --change 'WORKDIR /workspace' \
    --change 'ENV PATH=/opt/bp:/opt/env/bin:/usr/local/bin:/usr/bin:/bin HOME=/home/agent' \
    --change "LABEL backporcher.inputs=$hash" \
    "$work/rootfs.tar" "$tag" >/dev/null
  rm -rf "$work"
  echo "environment image $tag built ($hash)"
}

for name in "${@:-python rust}"; do
  for n in $name; do build "$n"; done
done
