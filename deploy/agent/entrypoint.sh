#!/bin/bash
# Entrypoint of the agent container. With no network at all (egress policy `none`), the model
# gateway arrives as a unix socket; a loopback relay makes it reachable as ANTHROPIC_BASE_URL.
set -euo pipefail
if [ -n "${BP_GATEWAY_SOCKET:-}" ]; then
  socat TCP-LISTEN:4180,bind=127.0.0.1,fork,reuseaddr "UNIX-CONNECT:${BP_GATEWAY_SOCKET}" &
  for _ in $(seq 1 50); do
    (exec 3<>/dev/tcp/127.0.0.1/4180) 2>/dev/null && break
    sleep 0.02
  done
fi
exec "$@"
