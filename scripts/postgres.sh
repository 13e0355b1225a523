#!/usr/bin/env bash
# A throwaway local PostgreSQL for DATABASE_URL tests, without Docker:
#   scripts/postgres.sh start|stop|status|url
# Installs Debian's `postgresql` if missing, keeps its cluster under .local/postgres,
# listens on 127.0.0.1:${PG_PORT:-55432} (a cluster already running keeps its port; `url`
# tells it), trusts local connections (test use only).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${PG_PORT:-55432}"
DIR="$ROOT/.local/postgres"
DATA="$DIR/data"

# the URL of our cluster: its real port when it runs (it may have been started with another PG_PORT)
url() {
  local port="$PORT"
  [ -f "$DATA/postmaster.pid" ] && running && port=$(sed -n 4p "$DATA/postmaster.pid")
  echo "postgresql://postgres@127.0.0.1:$port/switchboard"
}

pg_bin() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$bin" ] && echo "$bin"
}

install() {
  [ -n "$(pg_bin)" ] && return 0
  command -v apt-get >/dev/null || { echo "error: PostgreSQL not installed and apt-get not available" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq postgresql >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq postgresql >/dev/null; }
}

as_postgres() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }

running() { [ -n "$(pg_bin)" ] && as_postgres "$(pg_bin)/pg_ctl -D '$DATA' status" >/dev/null 2>&1; }

start() {
  install
  local bin; bin=$(pg_bin)
  mkdir -p "$DIR"
  [ "$(id -u)" = 0 ] && chown postgres "$DIR"
  if [ ! -f "$DATA/PG_VERSION" ]; then
    as_postgres "'$bin/initdb' -D '$DATA' -A trust -U postgres" >/dev/null
  fi
  if ! running; then
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
      echo "error: port $PORT is taken by another process (set PG_PORT)" >&2; exit 1
    fi
    as_postgres "'$bin/pg_ctl' -D '$DATA' -o '-p $PORT -k $DIR -c listen_addresses=127.0.0.1' -l '$DIR/postgres.log' -w start" >/dev/null
  fi
  local port; port=$(sed -n 4p "$DATA/postmaster.pid")
  as_postgres "'$bin/psql' -h 127.0.0.1 -p $port -U postgres -tAc \"SELECT 1 FROM pg_database WHERE datname='switchboard'\"" | grep -q 1 \
    || as_postgres "'$bin/createdb' -h 127.0.0.1 -p $port -U postgres switchboard"
  echo "postgres: ready -> $(url)"
}

stop() { running && as_postgres "$(pg_bin)/pg_ctl -D '$DATA' -m fast stop" >/dev/null; echo "postgres: stopped"; }

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "postgres: ready -> $(url)"; else echo "postgres: stopped"; exit 1; fi ;;
  url) url ;;
  *) echo "usage: scripts/postgres.sh start|stop|status|url" >&2; exit 2 ;;
esac
