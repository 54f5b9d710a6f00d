#!/usr/bin/env bash
# Builds the controller, runner, PostgreSQL and simulators images without a registry, the way deploy/agent does: release
# binaries built on this host, a Debian root filesystem from the Debian mirror (mmdebstrap), then
# `docker import`. Each image is labelled with a hash of its inputs and rebuilt only when they
# change. Usage: deploy/build-images.sh   (CARGO_TARGET_DIR is honoured)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
suite="${DEBIAN_SUITE:-bookworm}"
target="${CARGO_TARGET_DIR:-$root/target}"

for tool in mmdebstrap docker cargo; do
  command -v "$tool" >/dev/null || { echo "error: $tool is required" >&2; exit 1; }
done

echo "== release binaries"
(cd "$root" && cargo build --release --quiet --bin backporcher-controller --bin backporcher-runner --bin backporcher-sims)

build() { # name packages file entrypoint cmd user [extra customize hook]
  # `file` is installed at /usr/local/bin/<its name> (a release binary, or a script).
  local name="$1" packages="$2" file="$3" entrypoint="$4" cmd="$5" user="$6" extra="${7:-true}"
  local tag="backporcher-$name:latest"
  local hash
  hash=$(printf '%s\n' "$suite" "$packages" "$entrypoint" "$cmd" "$user" "$extra" | cat - "$file" "$0" | sha256sum | cut -c1-16)
  if [ "$(docker image inspect -f '{{ index .Config.Labels "backporcher.inputs" }}' "$tag" 2>/dev/null || true)" = "$hash" ]; then
    echo "$tag is up to date ($hash)"
    return
  fi
  local work
  work="$(mktemp -d)"
  echo "== $tag: root filesystem"
  mmdebstrap --quiet --variant=minbase --include="$packages" \
    --customize-hook="chroot \"\$1\" useradd --system --create-home --home-dir /var/lib/$name --shell /usr/sbin/nologin $user || true" \
    --customize-hook="install -m 0755 '$file' \"\$1/usr/local/bin/$(basename "$file")\"" \
    --customize-hook="$extra" \
    --customize-hook='rm -rf "$1/var/cache/apt" "$1/var/lib/apt/lists"/*' \
    "$suite" "$work/rootfs.tar"
  docker import \
    --change "USER $user" \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENTRYPOINT $entrypoint" \
    --change "CMD $cmd" \
    --change "LABEL backporcher.inputs=$hash" \
    "$work/rootfs.tar" "$tag" >/dev/null
  rm -rf "$work"
  echo "$tag built ($hash)"
}

build controller "ca-certificates,git,curl,postgresql-15,passwd" "$target/release/backporcher-controller" \
  '["/usr/local/bin/backporcher-controller"]' \
  '["serve", "--data-dir", "/var/lib/controller", "--listen", "0.0.0.0:8080", "--grpc-listen", "0.0.0.0:7443"]' \
  backporcher
build runner "ca-certificates,git,iptables,passwd" "$target/release/backporcher-runner" \
  '["/usr/local/bin/backporcher-runner", "--state-dir", "/var/lib/runner"]' \
  '["run", "--capacity", "2"]' \
  root
# PostgreSQL for the compose file (no registry): Debian's server, a data directory the volume
# inherits (owned by postgres), no cluster of the package's own.
build postgres "postgresql-15,passwd" "$root/deploy/postgres/entrypoint.sh" \
  '["/usr/local/bin/entrypoint.sh"]' '["postgres"]' postgres \
  'rm -rf "$1/var/lib/postgresql/15" "$1/etc/postgresql/15" && mkdir -p "$1/var/lib/postgresql/data" && chroot "$1" chown postgres:postgres /var/lib/postgresql/data && chmod 700 "$1/var/lib/postgresql/data"'
# The simulators of the compose file's `sims` profile (GitHub with real git, the model API).
build sims "ca-certificates,git,passwd" "$target/release/backporcher-sims" \
  '["/usr/local/bin/backporcher-sims"]' '[]' backporcher
