#!/bin/sh
# PostgreSQL 15 for the compose deployment (Debian's packages, built offline like the other
# images): on first start the data directory is initialised — superuser and database
# `backporcher`, the password from POSTGRES_PASSWORD, password (SCRAM) authentication from any
# address, trust only on the container's own socket — then the server runs in the foreground.
set -eu
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
BIN=/usr/lib/postgresql/15/bin
SOCKETS=/tmp
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  "$BIN/initdb" -D "$PGDATA" -U backporcher --pwfile="$pwfile" -E UTF8 \
    --auth-host=scram-sha-256 --auth-local=trust >/dev/null
  rm -f "$pwfile"
  {
    echo "listen_addresses = '*'"
    echo "unix_socket_directories = '$SOCKETS'"
  } >> "$PGDATA/postgresql.conf"
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  "$BIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  "$BIN/createdb" -h "$SOCKETS" -U backporcher backporcher
  "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
  echo "database initialised in $PGDATA"
fi
exec "$BIN/postgres" -D "$PGDATA"
