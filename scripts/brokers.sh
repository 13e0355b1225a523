#!/usr/bin/env bash
# Install, start, stop and check Switchboard's local message brokers without Docker:
#   Kafka (KRaft, single combined node, jars from Maven Central), RabbitMQ and
#   NATS JetStream (Debian packages, run as our own processes, not as services), and Redis
#   (Debian redis-server, our own process; the transport is the plugin in plugins/redis/).
# Everything (jars, data, logs, pid files) lives under <repo>/.local/<broker>/.
# `--nodes 3` runs a local 3-node cluster instead (scripts/brokers-cluster.sh),
# under <repo>/.local/<broker>-cluster/node<i>/, next to the single nodes.
# `--auth` runs the secured profile instead (scripts/brokers-auth.sh): authentication and
# per-service permissions on ports of its own, under <repo>/.local/<broker>-auth/.
# Run `scripts/brokers.sh help` for usage.
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true

# Kafka broker version: the newest line verified with aiokafka 0.14 (acks=all
# produce + group consume/commit + restart). 3.9.x also works (reload4j logging).
KAFKA_VERSION="${BROKERS_KAFKA_VERSION:-4.4.0}"
# log4j2 backend for Kafka 4.x; declared directly in the pom, so every log4j jar
# on the classpath gets this one version (4.4.0 itself ships 2.25.5).
LOG4J_VERSION="${BROKERS_LOG4J_VERSION:-2.25.5}"
WAIT_TIMEOUT="${BROKERS_WAIT_TIMEOUT:-90}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
LOCAL="$ROOT/.local"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ $PY == */* ]] || PY=$(command -v "$PY" 2>/dev/null) || PY="${PYTHON:-}"
KAFKA_POM="$ROOT/scripts/kafka/pom.xml"
RABBIT_SBIN="/usr/lib/rabbitmq/bin"   # the real scripts; /usr/sbin/* would `su rabbitmq`
RABBIT_NODE="switchboard@localhost"
PROG="scripts/brokers.sh"

BROKERS=(kafka rabbit nats)
# Single-node brokers only: Redis has no --nodes 3 or --auth profile. `all` of the single-node
# profile includes them (`make test` starts `all`, the contract suite runs on redis too).
SINGLE_ONLY=(redis)

usage() {
  cat <<EOF
Usage: $PROG COMMAND [TARGET...] [--nodes 1|3 | --auth [--user USER] [--namespace NS]]

  install [kafka|rabbit|nats|redis|prometheus|all]  install jars/packages only
  start   [kafka|rabbit|nats|redis|all]   install if missing, start if not running, wait until ready
  stop    [kafka|rabbit|nats|redis|all]   stop (data is kept; a restart is quick)
  status  [kafka|rabbit|nats|redis|all]   exit 0 only if every named broker is ready
  wait    [kafka|rabbit|nats|redis|all]   wait up to ${WAIT_TIMEOUT}s until a real client connects
  url     [kafka|rabbit|nats|redis|all]   print the BROKER_URL to use, one line per target

TARGET defaults to all = kafka rabbit nats redis (with --nodes 3 or --auth: kafka rabbit nats;
redis has neither profile). prometheus is only ever installed.
Endpoints: kafka localhost:9092 | amqp://guest:guest@localhost:5672/ | nats://127.0.0.1:4222 |
redis://localhost:6379 (AOF appendfsync always: an XADD answered is on disk)
State: .local/<broker>/  Env: PYTHON (probe interpreter, default .venv/bin/python),
BROKERS_WAIT_TIMEOUT (seconds), BROKERS_KAFKA_VERSION (default ${KAFKA_VERSION%%-*}).

--nodes 3: a local 3-node cluster of each TARGET instead of the single node (both
can run at once). start (re)starts every node that is not running (a killed node
comes back) and waits for the whole cluster; status reports each node and exits 0
only when all 3 are up and the cluster is usable; stop stops the cluster only.
  kafka   localhost:19092,localhost:19094,localhost:19096 (controllers :19093/:19095/:19097)
  rabbit  amqp://guest:guest@localhost:5681/ (and :5682, :5683; nodes sb1..sb3@localhost)
  nats    nats://127.0.0.1:14222,nats://127.0.0.1:14223,nats://127.0.0.1:14224
          (routes :16222-16224, monitor :18222-18224, cluster "switchboard")
State: .local/<broker>-cluster/node<i>/, server pid in node<i>/<broker>.pid.
Cluster waits default to ${CL_WAIT_TIMEOUT}s (BROKERS_WAIT_TIMEOUT overrides).

--auth: the secured profile, one node of each TARGET with authentication on and
per-service permissions (next to the open single nodes, whose addresses stay as they are).
Users admin, order, inventory, payment, notification; passwords generated once into
.local/auth/credentials.env (mode 600). start also puts the grants in place.
  kafka   localhost:29092 SASL_PLAINTEXT SCRAM-SHA-512, ACLs (controller :29093)
  rabbit  amqp://localhost:5690/switchboard (node sbauth@localhost, distribution :25690)
  nats    nats://127.0.0.1:24222 (monitor :28222), per-user subject permissions
  url TARGET --auth [--user USER]   the BROKER_URL with USER's credentials (default admin)
  grant TARGET --auth [--namespace NS]   grant NS too (CHANNEL_NAMESPACE) and re-apply the grants
  revoke TARGET --auth --namespace NS    withdraw the grants of NS
State: .local/<broker>-auth/ (pid in <broker>.pid), .local/auth/ (credentials, namespaces).
EOF
}

die() { printf 'brokers.sh: error: %s\n' "$*" >&2; exit 1; }
info() { printf '%s\n' "$*"; }
now_ms() { local t; t=$(date +%s%N); echo $((t / 1000000)); }
elapsed() { local ms=$(($(now_ms) - $1)); printf '%d.%01ds' $((ms / 1000)) $((ms % 1000 / 100)); }

# --------------------------------------------------------------------------- broker tables
bk_dir() { echo "$LOCAL/$1"; }
bk_ports() {
  case $1 in
    kafka) echo "9092 9093" ;;
    rabbit) echo "5672 25672" ;;
    nats) echo "4222 8222" ;;
    redis) echo "6379" ;;
  esac
}
bk_pidfile() { echo "$LOCAL/$1/$1.pid"; }        # written by the server (rabbit) or by us
bk_launcher() { echo "$LOCAL/$1/launcher.pid"; } # the process we spawned
# A string only our own instance has in its command line or environment.
bk_needle() {
  case $1 in
    kafka) echo "$LOCAL/kafka/server.properties" ;;
    rabbit) echo "$LOCAL/rabbit/mnesia" ;;
    nats) echo "$LOCAL/nats/data" ;;
    redis) echo "$LOCAL/redis/redis.conf" ;;
  esac
}
bk_logs() { # main log first
  case $1 in
    kafka) echo "$LOCAL/kafka/logs/server.log $LOCAL/kafka/logs/kafka.out" ;;
    rabbit) echo "$LOCAL/rabbit/log/rabbit.log $LOCAL/rabbit/log/startup.log" ;;
    nats) echo "$LOCAL/nats/nats.log $LOCAL/nats/nats.out" ;;
    redis) echo "$LOCAL/redis/redis.log $LOCAL/redis/redis.out" ;;
  esac
}
bk_endpoint() {
  case $1 in
    kafka) echo "localhost:9092 (Kafka $KAFKA_VERSION, KRaft)" ;;
    rabbit) echo "amqp://guest:guest@localhost:5672/ (node $RABBIT_NODE)" ;;
    nats) echo "nats://127.0.0.1:4222 (JetStream, monitor :8222)" ;;
    redis) echo "redis://localhost:6379 (AOF, appendfsync always)" ;;
  esac
}

# --------------------------------------------------------------------------- processes, ports
alive() { [[ "${1:-}" =~ ^[0-9]+$ ]] && kill -0 "$1" 2>/dev/null; }

# pid_has PID NEEDLE: the process's command line or environment contains NEEDLE
pid_has() {
  local pid=$1 needle=$2 text
  text=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
  [[ $text == *"$needle"* ]] && return 0
  text=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/environ") || return 1
  [[ $text == *"$needle"* ]]
}

describe_pid() {
  local d
  d=$(ps -o user=,args= -p "$1" 2>/dev/null | tr -s " ") || d="?"
  printf '%s' "${d:0:120}"
}

# port_pids PORT: pids listening on TCP PORT; "?" when busy but the owner is not visible
port_pids() {
  local out pids
  if command -v ss >/dev/null 2>&1; then
    out=$(ss -H -ltnp "sport = :$1" 2>/dev/null) || out=""
    [[ -z $out ]] && return 0
    pids=$(grep -o 'pid=[0-9]*' <<<"$out" | cut -d= -f2 | sort -u) || pids=""
    echo "${pids:-?}"
  elif (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    echo "?"
  fi
}

# running_pid BROKER: print the pid of our running instance (adopting one whose pid file was lost)
running_pid() {
  local b=$1
  # shellcheck disable=SC2046 # bk_ports: a list of port numbers
  find_our_pid "$(bk_needle "$b")" "$(bk_pidfile "$b")" "$(bk_launcher "$b")" $(bk_ports "$b")
}

# find_our_pid NEEDLE PIDFILE LAUNCHERFILE PORT...: the pid in either file, or the one
# listening on a PORT, whose command line or environment has NEEDLE (written to PIDFILE)
find_our_pid() {
  local needle=$1 pidfile=$2 launcher=$3 f pid port
  shift 3
  for f in "$pidfile" "$launcher"; do
    pid=$(cat "$f" 2>/dev/null) || continue
    if alive "$pid" && pid_has "$pid" "$needle"; then echo "$pid"; return 0; fi
  done
  for port in "$@"; do
    for pid in $(port_pids "$port"); do
      [[ $pid == "?" ]] && continue
      if pid_has "$pid" "$needle"; then
        mkdir -p "$(dirname "$pidfile")"
        echo "$pid" >"$pidfile"
        echo "$pid"
        return 0
      fi
    done
  done
  return 1
}

# (9>&- everywhere a daemon may be spawned: it must not inherit our lock descriptor)
as_root() {
  if [[ $EUID -eq 0 ]]; then "$@" 9>&-
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@" 9>&-
  else die "need root (or passwordless sudo) to run: $*"
  fi
}

# Stop a distro service (systemd or sysvinit) that the package postinst may have started.
stop_system_service() {
  local svc=$1
  info "$svc: stopping the system service the package started (we run our own instance)"
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    as_root systemctl stop "$svc" >/dev/null 2>&1 || true
  elif command -v service >/dev/null 2>&1; then
    as_root service "$svc" stop >/dev/null 2>&1 || true
  elif [[ -x /etc/init.d/$svc ]]; then
    as_root "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
  fi
  sleep 1
}

# Is PID a system-service instance of BROKER (rabbit/prometheus) rather than ours?
is_system_instance() {
  local pid=$1 svc=$2 user
  user=$(ps -o user= -p "$pid" 2>/dev/null | tr -d ' ') || user=""
  case $svc in
    rabbitmq-server) [[ $user == rabbitmq ]] || pid_has "$pid" "/var/lib/rabbitmq" ;;
    prometheus) [[ $user == prometheus ]] || pid_has "$pid" "/etc/prometheus" ;;
    *) return 1 ;;
  esac
}

# ensure_ports_free BROKER: die unless every port of BROKER is free
ensure_ports_free() {
  local b=$1 port pid pids retried=""
  for port in $(bk_ports "$b"); do
    pids=$(port_pids "$port")
    [[ -z $pids ]] && continue
    if [[ $b == rabbit && -z $retried && $pids != "?" ]]; then
      for pid in $pids; do
        if is_system_instance "$pid" rabbitmq-server; then
          stop_system_service rabbitmq-server
          retried=1
          pids=$(port_pids "$port")
          break
        fi
      done
      [[ -z $pids ]] && continue
    fi
    pid=${pids%%$'\n'*}
    if [[ $pid == "?" ]]; then
      die "$b: port $port is already in use by another process (owner not visible; check: sudo ss -ltnp 'sport = :$port')"
    fi
    die "$b: port $port is already in use by pid $pid ($(describe_pid "$pid")), which is not ours; stop it or free the port"
  done
}

# term_and_wait SECONDS PID...: SIGTERM, wait, then SIGKILL
term_and_wait() {
  local secs=$1 pid deadline
  shift
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  deadline=$(($(now_ms) + secs * 1000))
  for pid in "$@"; do
    while alive "$pid" && (($(now_ms) < deadline)); do sleep 0.1; done
    if alive "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
      while alive "$pid"; do sleep 0.1; done
    fi
  done
}

# launch DIR OUTFILE CMD...: start CMD detached (own session, no stdin), print its pid
launch() {
  local dir=$1 out=$2
  shift 2
  local setsid=()
  command -v setsid >/dev/null 2>&1 && setsid=(setsid)
  # 9>&- : the broker must not inherit (and so hold) our lock file descriptor
  (cd "$dir" && exec "${setsid[@]}" nohup "$@" >>"$out" 2>&1 </dev/null 9>&-) &
  echo $!
}

tail_logs() {
  local f
  for f in $(bk_logs "$1"); do
    [[ -s $f ]] || continue
    printf -- '--- last 20 lines of %s ---\n' "${f#"$ROOT"/}" >&2
    tail -n 20 "$f" >&2
  done
}

# --------------------------------------------------------------------------- apt
apt_install() { # apt_install PACKAGE...
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* with your package manager"
  local log="$LOCAL/apt.log"
  mkdir -p "$LOCAL"
  info "apt: installing $*"
  export DEBIAN_FRONTEND=noninteractive
  if ! as_root apt-get install -y -q --no-install-recommends "$@" >"$log" 2>&1; then
    info "apt: install failed, running apt-get update and retrying"
    as_root apt-get update -q >>"$log" 2>&1 || true
    as_root apt-get install -y -q --no-install-recommends "$@" >>"$log" 2>&1 ||
      die "apt-get install $* failed: $(tail -n 1 "$log") (full log: .local/apt.log)"
  fi
}

# --------------------------------------------------------------------------- kafka
KDIR="$LOCAL/kafka"
KLIBS="$KDIR/libs-$KAFKA_VERSION"
KDATA="$KDIR/data"
KLOGS="$KDIR/logs"
KCONF="$KDIR/server.properties"
# JVM options of every broker JVM (the heap is set per launch)
KAFKA_JVM_OPTS=(-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
  -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true)
is_kafka3() { [[ $KAFKA_VERSION == 3.* ]]; }

java_bin() {
  if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then echo "$JAVA_HOME/bin/java"
  elif command -v java >/dev/null 2>&1; then command -v java
  else die "java not found: install a JDK/JRE 17+ (e.g. apt-get install openjdk-17-jre-headless)"
  fi
}

# write_if_changed FILE: replace FILE with stdin only if the content differs
write_if_changed() {
  local tmp
  tmp=$(mktemp "$1.XXXXXX")
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else chmod 644 "$tmp" && mv -f "$tmp" "$1"; fi
}

kafka_pom() {
  local logdeps
  if is_kafka3; then
    logdeps='    <!-- 3.9: reload4j is compileOnly in core; the tarball gets it via kafka-tools -->
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>1.7.36</version></dependency>
    <dependency><groupId>ch.qos.reload4j</groupId><artifactId>reload4j</artifactId><version>1.2.25</version></dependency>'
  else
    # shellcheck disable=SC2016 # ${log4j2.version} is a Maven property
    logdeps='    <!-- 4.x uses slf4j 1.7, so the binding is log4j-slf4j-impl (not -slf4j2-).
         Declared directly so all log4j jars share ${log4j2.version}. -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>${log4j2.version}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>${log4j2.version}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>${log4j2.version}</version></dependency>'
  fi
  cat <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- GENERATED by scripts/brokers.sh from KAFKA_VERSION; edit the script, not this file.
     Fetches the jars of a Kafka KRaft broker (kafka.Kafka, kafka.tools.StorageTool):
     mvn -B -q -f scripts/kafka/pom.xml dependency:copy-dependencies -DoutputDirectory=libs -DincludeScope=runtime -->
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 http://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.switchboard</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>

  <properties>
    <kafka.version>$KAFKA_VERSION</kafka.version>
    <log4j2.version>$LOG4J_VERSION</log4j2.version>
  </properties>

  <dependencies>
    <!-- core: kafka.Kafka + StorageTool; pulls clients, server, storage, raft, metadata, ... -->
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>\${kafka.version}</version></dependency>
$logdeps
  </dependencies>

  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>3.6.1</version>
      </plugin>
    </plugins>
  </build>
</project>
EOF
}

# kafka_properties WHAT NODE_ID VOTERS CLIENT_PORT CONTROLLER_PORT DATA_DIR REPLICAS PARTITIONS:
# a KRaft combined broker+controller node; REPLICAS is the replication of internal (and
# auto-created) topics: with 3 (min ISR 2) one node may be lost
kafka_properties() {
  local what=$1 id=$2 voters=$3 client=$4 ctl=$5 data=$6 replicas=$7 partitions=$8 min_isr=1
  ((replicas > 1)) && min_isr=$((replicas - 1))
  cat <<EOF
# GENERATED by scripts/brokers.sh (Kafka $KAFKA_VERSION, $what, KRaft combined mode)
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
listeners=PLAINTEXT://localhost:$client,CONTROLLER://localhost:$ctl
advertised.listeners=PLAINTEXT://localhost:$client
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$data
num.partitions=$partitions
default.replication.factor=$replicas
min.insync.replicas=$min_isr
unclean.leader.election.enable=false
auto.create.topics.enable=true
offsets.topic.replication.factor=$replicas
offsets.topic.num.partitions=$partitions
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$min_isr
transaction.state.log.num.partitions=$partitions
group.initial.rebalance.delay.ms=0
# a killed node is fenced within seconds, and a restarted one may register again soon
# (its old session must expire first: 9 s by default)
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=4000
EOF
  is_kafka3 || cat <<EOF
share.coordinator.state.topic.replication.factor=$replicas
share.coordinator.state.topic.min.isr=$min_isr
EOF
}

kafka_server_properties() {
  kafka_properties "single node" 1 1@localhost:9093 9092 9093 "$KDATA" 1 1
}

kafka_log4j2_xml() {
  cat <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<!-- GENERATED by scripts/brokers.sh: broker logs go to ${sys:kafka.logs.dir} (.local/kafka/logs) -->
<Configuration status="WARN">
  <Properties>
    <Property name="dir">${sys:kafka.logs.dir}</Property>
    <Property name="pattern">[%d] %p %m (%c)%n</Property>
  </Properties>
  <Appenders>
    <RollingFile name="server" fileName="${dir}/server.log" filePattern="${dir}/server.log.%i">
      <PatternLayout pattern="${pattern}"/>
      <Policies><SizeBasedTriggeringPolicy size="50 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
    <RollingFile name="stateChange" fileName="${dir}/state-change.log" filePattern="${dir}/state-change.log.%i">
      <PatternLayout pattern="${pattern}"/>
      <Policies><SizeBasedTriggeringPolicy size="50 MB"/></Policies>
      <DefaultRolloverStrategy max="2"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="server"/></Root>
    <Logger name="state.change.logger" level="INFO" additivity="false"><AppenderRef ref="stateChange"/></Logger>
    <Logger name="kafka.request.logger" level="WARN"/>
  </Loggers>
</Configuration>
EOF
}

kafka_log4j1_properties() {
  cat <<'EOF'
# GENERATED by scripts/brokers.sh: broker logs go to ${kafka.logs.dir} (.local/kafka/logs)
log4j.rootLogger=INFO, server
log4j.appender.server=org.apache.log4j.RollingFileAppender
log4j.appender.server.File=${kafka.logs.dir}/server.log
log4j.appender.server.MaxFileSize=50MB
log4j.appender.server.MaxBackupIndex=3
log4j.appender.server.layout=org.apache.log4j.PatternLayout
log4j.appender.server.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.appender.stateChange=org.apache.log4j.RollingFileAppender
log4j.appender.stateChange.File=${kafka.logs.dir}/state-change.log
log4j.appender.stateChange.MaxFileSize=50MB
log4j.appender.stateChange.MaxBackupIndex=2
log4j.appender.stateChange.layout=org.apache.log4j.PatternLayout
log4j.appender.stateChange.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.state.change.logger=INFO, stateChange
log4j.additivity.state.change.logger=false
log4j.logger.kafka.request.logger=WARN
EOF
}

kafka_installed() { [[ -f $KLIBS/.complete && -f $KDATA/meta.properties ]]; }

install_kafka() {
  local java log cid
  java=$(java_bin)
  mkdir -p "$KDIR" "$KLOGS"
  kafka_fetch_jars
  kafka_write_config
  if [[ ! -f $KDATA/meta.properties ]]; then
    log="$KLOGS/format.log"
    if [[ ! -s $KDIR/cluster.id ]]; then
      "$java" -cp "$KLIBS/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1 >"$KDIR/cluster.id" ||
        die "kafka: StorageTool random-uuid failed"
    fi
    cid=$(cat "$KDIR/cluster.id")
    info "kafka: formatting storage .local/kafka/data (cluster id $cid)"
    "$java" -Dlog4j2.configurationFile="$KDIR/log4j2.xml" -Dlog4j.configuration="file:$KDIR/log4j.properties" \
      -Dkafka.logs.dir="$KLOGS" -cp "$KLIBS/*" kafka.tools.StorageTool format \
      -t "$cid" -c "$KCONF" -g >"$log" 2>&1 ||
      die "kafka: formatting storage failed: $(tail -n 1 "$log") (log: .local/kafka/logs/format.log)"
    echo "$KAFKA_VERSION" >"$KDIR/data.version"
  fi
}

# kafka_fetch_jars: the Kafka jars in $KLIBS (shared by the single node and the cluster)
kafka_fetch_jars() {
  local java log
  java=$(java_bin)
  mkdir -p "$KDIR" "$(dirname "$KAFKA_POM")"
  kafka_pom | write_if_changed "$KAFKA_POM"
  if [[ ! -f $KLIBS/.complete ]]; then
    command -v mvn >/dev/null 2>&1 || die "mvn not found: install Maven (apt-get install maven) to fetch the Kafka jars"
    if ! is_kafka3; then
      local spec
      spec=$("$java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
      [[ ${spec%%.*} =~ ^[0-9]+$ && ${spec%%.*} -ge 17 ]] || die "Kafka $KAFKA_VERSION needs Java 17+, but $java is Java ${spec:-unknown}"
    fi
    info "kafka: fetching Kafka $KAFKA_VERSION jars from Maven Central (scripts/kafka/pom.xml)"
    log="$KDIR/mvn.log"
    rm -rf "$KLIBS.tmp"
    if ! mvn -B -q -f "$KAFKA_POM" dependency:copy-dependencies \
      -DoutputDirectory="$KLIBS.tmp" -DincludeScope=runtime >"$log" 2>&1; then
      die "kafka: mvn could not fetch Kafka $KAFKA_VERSION: $(grep -m1 '\[ERROR\]' "$log" || tail -n 1 "$log") (log: .local/kafka/mvn.log)"
    fi
    rm -rf "$KLIBS"
    mv "$KLIBS.tmp" "$KLIBS"
    touch "$KLIBS/.complete"
  fi
}

# kafka_log_opt DIR: the JVM option naming the log config that kafka_write_config wrote in DIR
kafka_log_opt() {
  if is_kafka3; then echo "-Dlog4j.configuration=file:$1/log4j.properties"
  else echo "-Dlog4j2.configurationFile=$1/log4j2.xml"
  fi
}

kafka_write_config() {
  mkdir -p "$KDIR" "$KLOGS" "$KDATA"
  kafka_server_properties | write_if_changed "$KCONF"
  if is_kafka3; then kafka_log4j1_properties | write_if_changed "$KDIR/log4j.properties"
  else kafka_log4j2_xml | write_if_changed "$KDIR/log4j2.xml"
  fi
}

launch_kafka() {
  local java pid logopt fmt
  java=$(java_bin)
  kafka_write_config
  fmt=$(cat "$KDIR/data.version" 2>/dev/null) || fmt=""
  if [[ -n $fmt && $fmt != "$KAFKA_VERSION" ]]; then
    info "kafka: note: data was formatted by Kafka $fmt, running $KAFKA_VERSION (on failure: rm -rf .local/kafka/data)"
  fi
  logopt=$(kafka_log_opt "$KDIR")
  pid=$(launch "$KDIR" "$KLOGS/kafka.out" "$java" -Xmx768m -Xms768m "${KAFKA_JVM_OPTS[@]}" \
    -Dkafka.logs.dir="$KLOGS" "$logopt" -cp "$KLIBS/*" kafka.Kafka "$KCONF")
  echo "$pid" >"$(bk_pidfile kafka)"
  echo "$pid" >"$(bk_launcher kafka)"
}

# --------------------------------------------------------------------------- rabbit
RDIR="$LOCAL/rabbit"

# Environment for our own node; HOME holds the erlang cookie used by server and rabbitmqctl.
rabbit_env() {
  export HOME="$RDIR/home"
  export LC_ALL=C.UTF-8 LANG=C.UTF-8
  export RABBITMQ_NODENAME="$RABBIT_NODE" RABBITMQ_USE_LONGNAME=false
  export RABBITMQ_NODE_PORT=5672 RABBITMQ_DIST_PORT=25672
  export RABBITMQ_MNESIA_BASE="$RDIR/mnesia" RABBITMQ_LOG_BASE="$RDIR/log"
  export RABBITMQ_LOGS="$RDIR/log/rabbit.log"
  export RABBITMQ_PID_FILE="$RDIR/rabbit.pid"
  export RABBITMQ_CONFIG_FILE="$RDIR/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$RDIR/advanced.config"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$RDIR/enabled_plugins"
  export RABBITMQ_CONF_ENV_FILE="$RDIR/rabbitmq-env.conf" # keeps /etc/rabbitmq/rabbitmq-env.conf out
}

rabbit_installed() { [[ -x $RABBIT_SBIN/rabbitmq-server && -x $RABBIT_SBIN/rabbitmqctl ]]; }

install_rabbit() {
  local pid
  if ! rabbit_installed; then
    apt_install rabbitmq-server
    rabbit_installed || die "rabbitmq-server installed but $RABBIT_SBIN/rabbitmq-server is missing"
  fi
  # The package postinst may have started the system service on 5672/25672.
  for pid in $(port_pids 5672) $(port_pids 25672); do
    if [[ $pid != "?" ]] && is_system_instance "$pid" rabbitmq-server; then
      stop_system_service rabbitmq-server
      break
    fi
  done
  rabbit_write_config
}

rabbit_write_config() {
  local cookie
  mkdir -p "$RDIR/home" "$RDIR/mnesia" "$RDIR/log"
  write_if_changed "$RDIR/rabbitmq.conf" <<'EOF'
# GENERATED by scripts/brokers.sh
listeners.tcp.default = 5672
loopback_users.guest = true
default_user = guest
default_pass = guest
disk_free_limit.absolute = 50MB
log.console = false
log.file.level = info
EOF
  echo '[].' | write_if_changed "$RDIR/enabled_plugins"
  if [[ ! -s $RDIR/home/.erlang.cookie ]]; then
    cookie=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n' | tr 'a-f' 'A-F')
    (umask 077 && printf '%s' "SB$cookie" >"$RDIR/home/.erlang.cookie")
    chmod 400 "$RDIR/home/.erlang.cookie"
  fi
}

launch_rabbit() {
  local pid
  rabbit_write_config
  rm -f "$(bk_pidfile rabbit)"
  pid=$(rabbit_env && launch "$RDIR" "$RDIR/log/startup.log" "$RABBIT_SBIN/rabbitmq-server")
  echo "$pid" >"$(bk_launcher rabbit)"
}

# The first of our nodes to start (single node or a cluster node: they share one epmd)
# started epmd, which inherits its environment; stop it once no node is registered.
stop_our_epmd() {
  local pid exe names
  for pid in $(port_pids 4369); do
    [[ $pid == "?" ]] && continue
    pid_has "$pid" "$(bk_needle rabbit)" || pid_has "$pid" "$LOCAL/rabbit-cluster/" ||
      pid_has "$pid" "$LOCAL/rabbit-auth/" || continue
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || exe=epmd
    names=$("$exe" -names 2>/dev/null) || names=""
    [[ $names == *"name "* ]] && continue
    term_and_wait 5 "$pid"
  done
}

# --------------------------------------------------------------------------- nats
NDIR="$LOCAL/nats"
nats_bin() {
  if command -v nats-server >/dev/null 2>&1; then command -v nats-server
  elif [[ -x /usr/sbin/nats-server ]]; then echo /usr/sbin/nats-server
  else return 1
  fi
}

install_nats() {
  if ! nats_bin >/dev/null; then apt_install nats-server; fi
  nats_bin >/dev/null || die "nats-server installed but not found in PATH or /usr/sbin"
  mkdir -p "$NDIR/data"
}

launch_nats() {
  local pid
  mkdir -p "$NDIR/data"
  pid=$(launch "$NDIR" "$NDIR/nats.out" "$(nats_bin)" -js -sd "$NDIR/data" -a 127.0.0.1 -p 4222 -m 8222 \
    -P "$(bk_pidfile nats)" -l "$NDIR/nats.log")
  echo "$pid" >"$(bk_pidfile nats)"
  echo "$pid" >"$(bk_launcher nats)"
}

# --------------------------------------------------------------------------- redis
RSDIR="$LOCAL/redis"
redis_bin() {
  if command -v redis-server >/dev/null 2>&1; then command -v redis-server
  elif [[ -x /usr/bin/redis-server ]]; then echo /usr/bin/redis-server
  else return 1
  fi
}

# The package postinst may start the system service on 6379: stop it (we run our own instance).
is_system_redis() { # PID
  local user
  user=$(ps -o user= -p "$1" 2>/dev/null | tr -d ' ') || user=""
  [[ $user == redis ]] || pid_has "$1" "/etc/redis/"
}

install_redis() {
  local pid
  if ! redis_bin >/dev/null; then apt_install redis-server; fi
  redis_bin >/dev/null || die "redis-server installed but not found in PATH or /usr/bin"
  for pid in $(port_pids 6379); do
    if [[ $pid != "?" ]] && is_system_redis "$pid"; then
      stop_system_service redis-server
      break
    fi
  done
  redis_write_config
}

redis_write_config() {
  mkdir -p "$RSDIR/data"
  write_if_changed "$RSDIR/redis.conf" <<EOF
# GENERATED by scripts/brokers.sh
bind 127.0.0.1
port 6379
protected-mode yes
daemonize no
# keep the command line (it names this file): how this script recognises its own instance
set-proc-title no
pidfile $RSDIR/redis.pid
logfile $RSDIR/redis.log
dir $RSDIR/data
appendonly yes
appendfsync always
save ""
EOF
}

launch_redis() {
  local pid
  redis_write_config
  pid=$(launch "$RSDIR" "$RSDIR/redis.out" "$(redis_bin)" "$RSDIR/redis.conf")
  echo "$pid" >"$(bk_pidfile redis)"
  echo "$pid" >"$(bk_launcher redis)"
}

# --------------------------------------------------------------------------- prometheus
install_prometheus() {
  local pid
  if ! command -v prometheus >/dev/null 2>&1; then apt_install prometheus; fi
  command -v prometheus >/dev/null 2>&1 || die "prometheus installed but not found in PATH"
  for pid in $(port_pids 9090); do
    if [[ $pid != "?" ]] && is_system_instance "$pid" prometheus; then
      stop_system_service prometheus
      break
    fi
  done
  info "prometheus: installed ($(command -v prometheus)); not started by this script"
}

# --------------------------------------------------------------------------- readiness
# One connection attempt with a real client; exit 3 = client library missing.
PROBE_PY='
import asyncio, logging, sys
logging.disable(logging.CRITICAL)
b = sys.argv[1]
try:
    if b == "kafka":
        from aiokafka.client import AIOKafkaClient
    elif b == "rabbit":
        import aio_pika
    elif b == "redis":
        import redis.asyncio as redis_
    else:
        import nats
except ImportError:
    sys.exit(3)

async def kafka():
    c = AIOKafkaClient(bootstrap_servers="localhost:9092", request_timeout_ms=5000)
    try:
        await c.bootstrap()
        if not c.cluster.brokers():
            raise RuntimeError("metadata lists no brokers")
    finally:
        await c.close()

async def rabbit():
    conn = await aio_pika.connect("amqp://guest:guest@localhost:5672/", timeout=5)
    await conn.close()

async def nats_():
    # nats-py retries a refused initial connect forever; fail fast instead
    _r, w = await asyncio.open_connection("127.0.0.1", 4222)
    w.close()

    async def quiet(_e):
        pass
    nc = await nats.connect("nats://127.0.0.1:4222", connect_timeout=3, allow_reconnect=False,
                            max_reconnect_attempts=0, error_cb=quiet)
    try:
        await nc.jetstream().account_info()
    finally:
        await nc.close()

async def redis():
    c = redis_.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=3, decode_responses=True)
    try:
        if (await c.config_get("appendfsync")).get("appendfsync") != "always":
            raise RuntimeError("the redis on :6379 does not run with appendfsync always (not ours?)")
    finally:
        await c.aclose()

try:
    asyncio.run(asyncio.wait_for({"kafka": kafka, "rabbit": rabbit, "nats": nats_, "redis": redis}[b](), 12))
except BaseException as e:
    print(f"{type(e).__name__}: {e}".strip().rstrip(":"))
    sys.exit(1)
'
PROBE_ERR=""
FALLBACK_NOTED=""

probe() {
  local b=$1 out rc=0 port
  if [[ -x $PY ]]; then
    out=$(timeout 20 "$PY" -c "$PROBE_PY" "$b" 2>&1) || rc=$?
    [[ $rc -eq 0 ]] && return 0
    if [[ $rc -ne 3 && $rc -ne 126 && $rc -ne 127 ]]; then
      PROBE_ERR=$(tail -n 1 <<<"$out")
      return 1
    fi
  fi
  if [[ -z $FALLBACK_NOTED ]]; then
    info "note: no client library in ${PY} for $b; readiness is a TCP port check" >&2
    FALLBACK_NOTED=1
  fi
  port=$(bk_ports "$b")
  port=${port%% *}
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
  PROBE_ERR="connection to 127.0.0.1:$port refused"
  return 1
}

# wait_ready BROKER START_MS: until a client connects; fail fast if our process died
wait_ready() {
  local b=$1 t0=$2 deadline launched=""
  deadline=$(($(now_ms) + WAIT_TIMEOUT * 1000))
  [[ -f $(bk_launcher "$b") ]] && launched=1
  while true; do
    if probe "$b"; then
      info "$b: ready after $(elapsed "$t0") -> $(bk_endpoint "$b")"
      return 0
    fi
    if [[ -n $launched ]] && ! running_pid "$b" >/dev/null; then
      printf 'brokers.sh: error: %s exited during startup (%s)\n' "$b" "$PROBE_ERR" >&2
      tail_logs "$b"
      return 1
    fi
    if (($(now_ms) >= deadline)); then
      printf 'brokers.sh: error: %s not ready after %ss (%s)\n' "$b" "$WAIT_TIMEOUT" "$PROBE_ERR" >&2
      tail_logs "$b"
      return 1
    fi
    sleep 0.5
  done
}

# --------------------------------------------------------------------------- commands
install_one() {
  case $1 in
    kafka) install_kafka ;;
    rabbit) install_rabbit ;;
    nats) install_nats ;;
    redis) install_redis ;;
    prometheus) install_prometheus ;;
  esac
}

is_installed() {
  case $1 in
    kafka) kafka_installed ;;
    rabbit) rabbit_installed ;;
    nats) nats_bin >/dev/null ;;
    redis) redis_bin >/dev/null ;;
  esac
}

# start phase 1: launch without waiting
launch_one() {
  local b=$1 pid
  if ! is_installed "$b"; then install_one "$b"; fi
  if pid=$(running_pid "$b"); then
    info "$b: already running (pid $pid)"
    return 0
  fi
  rm -f "$(bk_pidfile "$b")" "$(bk_launcher "$b")"
  ensure_ports_free "$b"
  case $b in
    kafka) launch_kafka ;;
    rabbit) launch_rabbit ;;
    nats) launch_nats ;;
    redis) launch_redis ;;
  esac
  info "$b: started (pid $(cat "$(bk_launcher "$b")"))"
}

stop_one() {
  local b=$1 pid t0
  t0=$(now_ms)
  if ! pid=$(running_pid "$b"); then
    rm -f "$(bk_pidfile "$b")" "$(bk_launcher "$b")"
    info "$b: not running"
    return 0
  fi
  if [[ $b == rabbit ]] && [[ -f $(bk_pidfile rabbit) ]]; then
    (rabbit_env && timeout 60 "$RABBIT_SBIN/rabbitmqctl" -q -n "$RABBIT_NODE" stop "$(bk_pidfile rabbit)") \
      >/dev/null 2>&1 9>&- || true
  fi
  stop_started "$b" "$b" "$pid" "$(bk_needle "$b")" "$(bk_pidfile "$b")" "$(bk_launcher "$b")" "$t0"
}

# stop_started BROKER LABEL PID NEEDLE PIDFILE LAUNCHER T0: SIGTERM (then SIGKILL) PID and the
# processes its pid files name that are still ours (NEEDLE in their command line), then remove
# the files. Shared by every profile (single node, --auth) so they stop the same way.
stop_started() {
  local b=$1 label=$2 pid=$3 needle=$4 pidfile=$5 launcher=$6 t0=$7 pids=() f p
  for f in "$pidfile" "$launcher"; do
    p=$(cat "$f" 2>/dev/null) || continue
    if alive "$p" && pid_has "$p" "$needle"; then pids+=("$p"); fi
  done
  alive "$pid" && [[ " ${pids[*]} " != *" $pid "* ]] && pids+=("$pid")
  ((${#pids[@]})) && term_and_wait 60 "${pids[@]}"
  [[ $b == rabbit ]] && stop_our_epmd
  rm -f "$pidfile" "$launcher"
  info "$label: stopped in $(elapsed "$t0")"
}

status_one() {
  local b=$1 pid
  if pid=$(running_pid "$b"); then
    if probe "$b"; then
      info "$b: ready (pid $pid) $(bk_endpoint "$b")"
      return 0
    fi
    info "$b: running (pid $pid) but NOT ready: $PROBE_ERR"
    return 1
  fi
  if probe "$b"; then
    info "$b: ready (not started by this script) $(bk_endpoint "$b")"
    return 0
  fi
  info "$b: stopped"
  return 1
}

lock() {
  mkdir -p "$LOCAL"
  command -v flock >/dev/null 2>&1 || return 0
  exec 9>"$LOCAL/.brokers.lock"
  flock -w 300 9 || die "another $PROG is still running (lock .local/.brokers.lock)"
}

# bk_url BROKER: the BROKER_URL of the single node
bk_url() {
  case $1 in
    kafka) echo "localhost:9092" ;;
    rabbit) echo "amqp://guest:guest@localhost:5672/" ;;
    nats) echo "nats://127.0.0.1:4222" ;;
    redis) echo "redis://localhost:6379" ;;
  esac
}

main() {
  local cmd=${1:-} targets=() t rc=0 t0 nodes=1 args=() auth=""
  [[ $# -gt 0 ]] && shift
  case $cmd in
    install | start | stop | status | wait | url | grant | revoke) ;;
    -h | --help | help) usage; return 0 ;;
    "") usage >&2; return 2 ;;
    *) printf 'brokers.sh: error: unknown command "%s"\n\n' "$cmd" >&2; usage >&2; return 2 ;;
  esac
  while [[ $# -gt 0 ]]; do
    case $1 in
      --nodes) [[ $# -ge 2 ]] || die "--nodes needs a value (1 or 3)"; nodes=$2; shift 2 ;;
      --nodes=*) nodes=${1#--nodes=}; shift ;;
      --auth) auth=1; shift ;;
      --user) [[ $# -ge 2 ]] || die "--user needs a value"; AU_USER=$2; shift 2 ;;
      --namespace) [[ $# -ge 2 ]] || die "--namespace needs a value"; AU_NAMESPACE=$2; shift 2 ;;
      *) args+=("$1"); shift ;;
    esac
  done
  [[ $nodes == 1 || $nodes == 3 ]] || die "--nodes must be 1 or 3, not \"$nodes\""
  [[ -n $auth && $nodes == 3 ]] && die "--auth and --nodes 3 cannot be combined"
  [[ ($cmd == grant || $cmd == revoke) && -z $auth ]] && die "$cmd is a command of the secured profile: add --auth"
  [[ $AU_NAMESPACE =~ ^[A-Za-z0-9_-]*$ ]] || die "--namespace must be letters, digits, - and _ only"
  set -- ${args[@]+"${args[@]}"}
  [[ $# -eq 0 ]] && set -- all
  for t in "$@"; do
    case $t in
      all)
        targets+=("${BROKERS[@]}")
        [[ $nodes == 1 && -z $auth ]] && targets+=("${SINGLE_ONLY[@]}")
        ;;
      kafka | rabbit | nats) targets+=("$t") ;;
      redis)
        [[ $nodes == 3 ]] && die "redis has no --nodes 3 profile (a single node only)"
        [[ -n $auth ]] && die "redis has no secured (--auth) profile"
        targets+=("$t")
        ;;
      rabbitmq) targets+=(rabbit) ;;
      prometheus)
        [[ $cmd == install ]] || die "prometheus can only be installed (it is never started by $PROG)"
        targets+=(prometheus)
        ;;
      *)
        local expected="kafka, rabbit, nats, redis, all"
        [[ $cmd == install ]] && expected+=", prometheus"
        die "unknown target \"$t\" (expected $expected)"
        ;;
    esac
  done
  [[ $WAIT_TIMEOUT =~ ^[0-9]+$ ]] || die "BROKERS_WAIT_TIMEOUT must be a number of seconds"
  if [[ -n $auth && $cmd != install ]]; then # install: the same jars/packages
    auth_main "$cmd" "${targets[@]}"
    return
  fi
  if [[ $cmd == url ]]; then
    for t in "${targets[@]}"; do
      if [[ $nodes == 3 ]]; then cl_url "$t"; else bk_url "$t"; fi
    done
    return 0
  fi
  if [[ $nodes == 3 && $cmd != install ]]; then # install: the same jars/packages
    cluster_main "$cmd" "${targets[@]}"
    return
  fi

  case $cmd in
    install)
      lock
      for t in "${targets[@]}"; do
        t0=$(now_ms)
        install_one "$t"
        [[ $t == prometheus ]] || info "$t: installed ($(elapsed "$t0"))"
      done
      ;;
    start)
      lock
      t0=$(now_ms)
      for t in "${targets[@]}"; do launch_one "$t"; done
      for t in "${targets[@]}"; do wait_ready "$t" "$t0" || rc=1; done
      ;;
    stop)
      lock
      local pids=() p
      for t in "${targets[@]}"; do stop_one "$t" & pids+=("$!"); done # in parallel
      for p in "${pids[@]}"; do wait "$p" || rc=1; done
      ;;
    status)
      for t in "${targets[@]}"; do status_one "$t" || rc=1; done
      ;;
    wait)
      t0=$(now_ms)
      for t in "${targets[@]}"; do wait_ready "$t" "$t0" || rc=1; done
      ;;
  esac
  return "$rc"
}

# shellcheck source=scripts/brokers-cluster.sh
source "$ROOT/scripts/brokers-cluster.sh"
# shellcheck source=scripts/brokers-auth.sh
source "$ROOT/scripts/brokers-auth.sh"

main "$@"
