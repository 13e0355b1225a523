#!/usr/bin/env bash
# Create .venv and install the project with its dev tools. Idempotent: a venv whose
# installed requirements match pyproject.toml (and plugins/*/pyproject.toml) is left alone.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON_BIN="${PYTHON_BIN:-python3}"

if ! command -v "$PYTHON_BIN" >/dev/null 2>&1; then
  echo "error: $PYTHON_BIN not found; install Python 3.11+ (apt-get install python3 python3-venv)" >&2
  exit 1
fi
if ! "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "error: Python 3.11+ required, found $("$PYTHON_BIN" --version 2>&1)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON_BIN" -m venv .venv || { echo "error: could not create .venv (apt-get install python3-venv?)" >&2; exit 1; }
fi
# Transport plugins (plugins/<name>/, e.g. the Redis Streams transport) are installed beside the
# project, editable; the stamp covers their pyproject.toml too, so a change re-installs them.
plugins=()
for manifest in plugins/*/pyproject.toml; do
  [ -f "$manifest" ] && plugins+=(-e "$(dirname "$manifest")")
done
stamp=".venv/.installed-$(cat pyproject.toml plugins/*/pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]" ${plugins[@]+"${plugins[@]}"}
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# Browser assets of the docs pages (/docs/asyncapi, /docs/openapi), served by each
# service so the pages work offline: `npm ci` of the pinned scripts/docs-assets/
# into .local/docs-assets/ (never committed). Without npm the pages fall back to CDNs.
docs_src="scripts/docs-assets"
docs_dir=".local/docs-assets"
docs_stamp="$docs_dir/.installed-$(cat "$docs_src/package.json" "$docs_src/package-lock.json" | sha256sum | cut -c1-16)"
if [ ! -f "$docs_stamp" ]; then
  if command -v npm >/dev/null 2>&1; then
    mkdir -p "$docs_dir"
    cp "$docs_src/package.json" "$docs_src/package-lock.json" "$docs_dir/"
    if (cd "$docs_dir" && npm ci --ignore-scripts --omit=peer --no-audit --no-fund --loglevel=error >/dev/null); then
      rm -f "$docs_dir"/.installed-*
      touch "$docs_stamp"
    else
      echo "warning: npm ci in $docs_dir failed; the docs pages load their JS/CSS from CDNs" >&2
    fi
  else
    echo "warning: npm not found (apt-get install npm); the docs pages load their JS/CSS from CDNs" >&2
  fi
fi

# Headless Chromium for tests/browser/ (which skip without it). Debian package;
# `apt-get update` only when the install fails on a stale package list.
if [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } \
      || echo "warning: could not install chromium; tests/browser/ will be skipped" >&2
  else
    echo "warning: /usr/bin/chromium missing (apt-get install chromium as root); tests/browser/ will be skipped" >&2
  fi
fi
