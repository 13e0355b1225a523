#!/usr/bin/env bash
# Builds the foreign clients of tests/foreign/ under .local/ (idempotent, cached):
#   .local/foreign/foreign-clients.jar  Spring Boot 3.5 + Spring Kafka app and the RabbitMQ Java client,
#                                       from tests/foreign/spring-kafka/ (rebuilt when its sources change)
#   .local/go/bin/nats                  the NATS CLI (go install github.com/nats-io/natscli/nats@v0.5.0)
# Needs Java 17 + Maven and Go. Maven's repository is .local/foreign/m2 (FOREIGN_MAVEN_REPO overrides it):
# not ~/.m2, which scripts/brokers.sh may be filling at the same time.
#
#   scripts/foreign-clients.sh               build what is missing; waits for a build already running
#   scripts/foreign-clients.sh --background  start that build at lowest CPU priority and return at once
#                                            (`make test` does, so it overlaps the earlier suites)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SRC="tests/foreign/spring-kafka"
OUT=".local/foreign"
JAR="$OUT/foreign-clients.jar"
NATSCLI_VERSION="v0.5.0"
GO_DIR="$ROOT/.local/go"
NATS_BIN="$GO_DIR/bin/nats"

die() { echo "foreign-clients: $*" >&2; exit 1; }

sources_hash() {
  find "$SRC" -type f \( -name pom.xml -o -path "$SRC/src/*" \) -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
}

build_jar() {
  local stamp="$OUT/.built-$(sources_hash)"
  [[ -f $stamp && -f $JAR ]] && return 0
  command -v mvn >/dev/null 2>&1 || die "mvn not found (apt-get install maven openjdk-17-jdk-headless)"
  mkdir -p "$OUT"
  # build a copy, so no target/ appears in the source tree
  rm -rf "$OUT/build"
  mkdir -p "$OUT/build"
  cp -r "$SRC/pom.xml" "$SRC/src" "$OUT/build/"
  if ! mvn -q -B "-Dmaven.repo.local=${FOREIGN_MAVEN_REPO:-$ROOT/$OUT/m2}" -f "$OUT/build/pom.xml" -DskipTests package >"$OUT/mvn.log" 2>&1; then
    die "mvn package failed: $(grep -m1 '\[ERROR\]' "$OUT/mvn.log" || tail -n 1 "$OUT/mvn.log") (log: $OUT/mvn.log)"
  fi
  mv "$OUT/build/target/foreign-clients.jar" "$JAR"
  rm -rf "$OUT/build" "$OUT"/.built-*
  touch "$stamp"
}

install_nats_cli() {
  if [[ -x $NATS_BIN ]] && [[ $("$NATS_BIN" --version 2>&1) == "$NATSCLI_VERSION" ]]; then
    return 0
  fi
  command -v go >/dev/null 2>&1 || die "go not found (apt-get install golang-go)"
  mkdir -p "$GO_DIR"
  if ! GOPATH="$GO_DIR" GOBIN="$GO_DIR/bin" GOCACHE="$GO_DIR/cache" GOMODCACHE="$GO_DIR/mod" GOFLAGS=-modcacherw \
    go install "github.com/nats-io/natscli/nats@$NATSCLI_VERSION" >"$GO_DIR/install.log" 2>&1; then
    die "go install natscli failed: $(tail -n 3 "$GO_DIR/install.log") (log: .local/go/install.log)"
  fi
}

mkdir -p "$OUT"
LOCK="$OUT/.lock"
if [[ ${1:-} == --background ]]; then
  nohup nice -n 19 "$0" >"$OUT/background.log" 2>&1 </dev/null &
  exit 0
fi
exec 9>"$LOCK"
flock 9  # one build at a time; a second caller waits for it, then finds everything cached

# both at once: Maven mostly downloads, Go mostly compiles
build_jar &
jar_pid=$!
install_nats_cli &
nats_pid=$!
status=0
wait "$jar_pid" || status=1
wait "$nats_pid" || status=1
exit "$status"
