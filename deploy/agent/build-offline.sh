#!/usr/bin/env bash
# Builds the agent image without a registry: a Debian root filesystem made by mmdebstrap from the
# Debian mirror, `docker import`ed, plus the native `claude` binary taken from the PyPI wheel
# `claude-agent-sdk` (claude_agent_sdk/_bundled/claude) and the native `codex` binary taken from
# the PyPI wheel `openai-codex-cli-bin` (codex_cli_bin/bin/codex, a static musl build), the
# latter checked against its pinned sha256. Equivalent to the Dockerfile beside it.
#
# The image is tagged `backporcher-agent:latest` and labelled with a hash of its inputs; when an
# image with that hash exists already, nothing is rebuilt. Usage: build-offline.sh [tag]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tag="${1:-backporcher-agent:latest}"
sdk_version="${CLAUDE_AGENT_SDK_VERSION:-0.2.187}"
codex_version="${CODEX_CLI_BIN_VERSION:-0.163.0}"
codex_sha256="${CODEX_CLI_BIN_SHA256:-76db41fb07fdf9ddacbe892b48d21dfde270031ec0f5666b5e558114355f006d}"
suite="${DEBIAN_SUITE:-bookworm}"
packages="bash,ca-certificates,git,socat,procps,coreutils,findutils,grep,sed,python3,make,diffutils,patch"

hash=$(printf '%s\n' "$sdk_version" "$codex_version" "$codex_sha256" "$suite" "$packages" | cat - "$here/entrypoint.sh" "$0" | sha256sum | cut -c1-16)
if [ "$(docker image inspect -f '{{ index .Config.Labels "backporcher.inputs" }}' "$tag" 2>/dev/null || true)" = "$hash" ]; then
  echo "agent image $tag is up to date ($hash)"
  exit 0
fi

for tool in mmdebstrap docker pip; do
  command -v "$tool" >/dev/null || { echo "error: $tool is required (apt-get install mmdebstrap; pip comes with python3)" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "== fetching claude-agent-sdk $sdk_version"
pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_17_x86_64 \
  --python-version 3.11 -d "$work/wheel" "claude-agent-sdk==$sdk_version"
python3 - "$work" <<'PY'
import sys, zipfile, glob
work = sys.argv[1]
whl = glob.glob(f"{work}/wheel/*.whl")[0]
with zipfile.ZipFile(whl) as z:
    with z.open("claude_agent_sdk/_bundled/claude") as src, open(f"{work}/claude", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
echo "== fetching openai-codex-cli-bin $codex_version"
pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_17_x86_64 \
  --python-version 3.11 -d "$work/codex-wheel" "openai-codex-cli-bin==$codex_version"
codex_whl=$(ls "$work"/codex-wheel/*.whl)
echo "$codex_sha256  $codex_whl" | sha256sum --check --quiet \
  || { echo "error: $codex_whl does not match its pinned sha256 $codex_sha256" >&2; exit 1; }
python3 - "$codex_whl" "$work/codex" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    with z.open("codex_cli_bin/bin/codex") as src, open(sys.argv[2], "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY

echo "== building the $suite root filesystem"
mmdebstrap --quiet --variant=minbase --include="$packages" \
  --customize-hook='chroot "$1" useradd --create-home --uid 1000 --shell /bin/bash agent' \
  --customize-hook='mkdir -p "$1/workspace" && chown 1000:1000 "$1/workspace"' \
  --customize-hook="install -m 0755 '$work/claude' \"\$1/usr/local/bin/claude\"" \
  --customize-hook="install -m 0755 '$work/codex' \"\$1/usr/local/bin/codex\"" \
  --customize-hook="install -m 0755 '$here/entrypoint.sh' \"\$1/usr/local/bin/bp-entrypoint\"" \
  --customize-hook='rm -rf "$1/var/cache/apt" "$1/var/lib/apt/lists"/*' \
  "$suite" "$work/rootfs.tar"

echo "== importing as $tag"
docker import \
  --change 'USER 1000:1000' \
  --change 'WORKDIR /workspace' \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin HOME=/home/agent' \
  --change 'ENTRYPOINT ["/usr/local/bin/bp-entrypoint"]' \
  --change "LABEL backporcher.inputs=$hash" \
  --change "LABEL backporcher.claude-agent-sdk=$sdk_version" \
  --change "LABEL backporcher.openai-codex-cli-bin=$codex_version" \
  "$work/rootfs.tar" "$tag" >/dev/null
echo "agent image $tag built ($hash)"
