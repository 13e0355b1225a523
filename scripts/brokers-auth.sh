# shellcheck shell=bash
# The secured broker profile: `scripts/brokers.sh COMMAND TARGET --auth`.
# Sourced by scripts/brokers.sh (never run on its own): it uses that script's helpers
# (launch, find_our_pid, port_pids, term_and_wait, java_bin, kafka_properties, ...).
#
# One node of each broker with authentication on and per-service permissions, next to the
# open single nodes (whose default addresses docs/contract.md promises) and the clusters:
#   kafka   SASL_PLAINTEXT + SCRAM-SHA-512 on localhost:29092 (controller :29093, SASL PLAIN),
#           StandardAuthorizer, super user admin, no ACL = no access; users created when the
#           storage is formatted, ACLs applied by `python -m brokers.permissions kafka-apply`
#   rabbit  node sbauth@localhost, AMQP 5690, distribution 25690, vhost "switchboard";
#           no guest user; users and permissions loaded from definitions at boot
#   nats    127.0.0.1:24222 (monitor :28222), JetStream, `authorization { users }` with
#           per-user publish/subscribe allow lists (reloaded on SIGHUP)
# Users: admin and one per service (order, inventory, payment, notification); passwords are
# generated once into .local/auth/credentials.env (mode 600) and reused. The grants come from
# the code (brokers/permissions.py) for the empty channel namespace plus those listed in
# .local/auth/namespaces (`grant --namespace NS` adds one). State: .local/<broker>-auth/.

AU_USERS=(admin order inventory payment notification)
AU_DIR="$LOCAL/auth"
AU_CREDS="$AU_DIR/credentials.env"
AU_NAMESPACES="$AU_DIR/namespaces"
AU_VHOST=switchboard
AU_RABBIT_NODE="sbauth@localhost"
AU_WAIT_TIMEOUT="${BROKERS_WAIT_TIMEOUT:-120}"
AU_USER=admin    # url --user
AU_NAMESPACE=""  # grant --namespace

# --------------------------------------------------------------------------- tables
au_dir() { echo "$LOCAL/$1-auth"; }
au_ports() {
  case $1 in
    kafka) echo "29092 29093" ;;
    rabbit) echo "5690 25690" ;;
    nats) echo "24222 28222" ;;
  esac
}
au_pidfile() { echo "$LOCAL/$1-auth/$1.pid"; }
au_launcher() { echo "$LOCAL/$1-auth/launcher.pid"; }
au_needle() {
  case $1 in
    kafka) echo "$LOCAL/kafka-auth/server.properties" ;;
    rabbit) echo "$LOCAL/rabbit-auth/mnesia" ;;
    nats) echo "$LOCAL/nats-auth/nats.conf" ;;
  esac
}
au_logs() {
  local d
  d=$(au_dir "$1")
  case $1 in
    kafka) echo "$d/logs/server.log $d/logs/kafka.out" ;;
    rabbit) echo "$d/log/rabbit.log $d/log/startup.log" ;;
    nats) echo "$d/nats.log $d/nats.out" ;;
  esac
}
au_running_pid() {
  # shellcheck disable=SC2046 # au_ports: a list of port numbers
  find_our_pid "$(au_needle "$1")" "$(au_pidfile "$1")" "$(au_launcher "$1")" $(au_ports "$1")
}

# --------------------------------------------------------------------------- credentials
# Generate the passwords once (hex: safe in URLs and config files); later runs reuse them.
au_credentials() {
  local u
  mkdir -p "$AU_DIR"
  [[ -s $AU_CREDS ]] && return 0
  (
    umask 077
    {
      echo "# GENERATED once by scripts/brokers.sh --auth: the secured profile's broker users"
      for u in "${AU_USERS[@]}"; do
        echo "BROKER_PASSWORD_${u^^}=$(od -An -N18 -tx1 /dev/urandom | tr -d ' \n')"
      done
    } >"$AU_CREDS.tmp"
    mv -f "$AU_CREDS.tmp" "$AU_CREDS"
  )
  chmod 600 "$AU_CREDS"
  info "auth: generated passwords for ${AU_USERS[*]} in .local/auth/credentials.env" >&2  # stderr: `url` prints only the URL
}

au_password() {
  local line
  line=$(grep -m1 "^BROKER_PASSWORD_${1^^}=" "$AU_CREDS") || die "no password for user \"$1\" in .local/auth/credentials.env"
  echo "${line#*=}"
}

# au_url BROKER USER: the BROKER_URL with USER's credentials
au_url() {
  local pw
  [[ " ${AU_USERS[*]} " == *" $2 "* ]] || die "unknown user \"$2\" (users: ${AU_USERS[*]})"
  au_credentials
  pw=$(au_password "$2")
  case $1 in
    kafka) echo "$2:$pw@localhost:29092" ;;
    rabbit) echo "amqp://$2:$pw@localhost:5690/$AU_VHOST" ;;
    nats) echo "nats://$2:$pw@127.0.0.1:24222" ;;
  esac
}

au_endpoint() {
  case $1 in
    kafka) echo "localhost:29092 (SASL_PLAINTEXT SCRAM-SHA-512, ACLs)" ;;
    rabbit) echo "amqp://localhost:5690/$AU_VHOST (node $AU_RABBIT_NODE)" ;;
    nats) echo "nats://127.0.0.1:24222 (JetStream, users, monitor :28222)" ;;
  esac
}

# --namespace arguments of every granted namespace (the empty one is implied)
au_namespace_args() {
  local ns
  [[ -s $AU_NAMESPACES ]] || return 0
  while IFS= read -r ns; do [[ -n $ns ]] && printf -- '--namespace\n%s\n' "$ns"; done <"$AU_NAMESPACES"
}

# au_permissions ARGS...: python -m brokers.permissions with the granted namespaces
au_permissions() {
  local ns_args=()
  mapfile -t ns_args < <(au_namespace_args)
  au_permissions_for "$@" ${ns_args[@]+"${ns_args[@]}"}
}

# au_permissions_for ARGS...: python -m brokers.permissions ARGS (namespaces as given)
au_permissions_for() {
  (cd "$ROOT" && env -u CHANNEL_NAMESPACE "$PY" -m brokers.permissions "$@") 9>&-
}

# au_write_secret FILE: replace FILE (mode 600) with stdin if it differs
au_write_secret() {
  local tmp
  tmp=$(umask 077 && mktemp "$1.XXXXXX")
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else chmod 600 "$tmp" && mv -f "$tmp" "$1"; fi
}

# --------------------------------------------------------------------------- kafka
au_kafka_properties() {
  local d pw
  d=$(au_dir kafka)
  pw=$(au_password admin)
  kafka_properties "secured single node" 1 1@localhost:29093 29092 29093 "$d/data" 1 1
  cat <<EOF
# --- the secured profile (later keys override the ones above)
listeners=CLIENT://localhost:29092,CONTROLLER://localhost:29093
advertised.listeners=CLIENT://localhost:29092
inter.broker.listener.name=CLIENT
listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,CLIENT:SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
sasl.mechanism.controller.protocol=PLAIN
listener.name.client.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.client.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$pw";
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="$pw" user_admin="$pw";
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin
allow.everyone.if.no.acl.found=false
EOF
}

# jars, config (mode 600: it holds admin's password), storage formatted with every SCRAM user
au_kafka_prepare() {
  local d java cid u sum scram=()
  d=$(au_dir kafka)
  java=$(java_bin)
  [[ -f $KLIBS/.complete ]] || kafka_fetch_jars
  mkdir -p "$d/data" "$d/logs"
  if is_kafka3; then kafka_log4j1_properties | write_if_changed "$d/log4j.properties"
  else kafka_log4j2_xml | write_if_changed "$d/log4j2.xml"
  fi
  au_kafka_properties | au_write_secret "$d/server.properties"
  sum=$(sha256sum "$AU_CREDS" | cut -d' ' -f1)
  if [[ -f $d/data/meta.properties && $(cat "$d/credentials.sha256" 2>/dev/null) != "$sum" ]]; then
    # the SCRAM users live in the metadata log: other passwords need a new one
    info "kafka auth: .local/auth/credentials.env changed since the storage was formatted: formatting it anew"
    rm -rf "$d/data"
    mkdir -p "$d/data"
  fi
  [[ -f $d/data/meta.properties ]] && return 0
  if [[ ! -s $d/cluster.id ]]; then
    "$java" -cp "$KLIBS/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1 >"$d/cluster.id" ||
      die "kafka auth: StorageTool random-uuid failed"
  fi
  cid=$(cat "$d/cluster.id")
  for u in "${AU_USERS[@]}"; do scram+=(--add-scram "SCRAM-SHA-512=[name=$u,password=$(au_password "$u")]"); done
  info "kafka auth: formatting storage .local/kafka-auth/data with SCRAM users ${AU_USERS[*]}"
  "$java" "$(kafka_log_opt "$d")" -Dkafka.logs.dir="$d/logs" -cp "$KLIBS/*" kafka.tools.StorageTool format \
    -t "$cid" -c "$d/server.properties" -g "${scram[@]}" >"$d/logs/format.log" 2>&1 9>&- ||
    die "kafka auth: formatting storage failed: $(tail -n 1 "$d/logs/format.log") (log: .local/kafka-auth/logs/format.log)"
  echo "$sum" >"$d/credentials.sha256"
}

au_launch_kafka() {
  local d java pid
  d=$(au_dir kafka)
  java=$(java_bin)
  pid=$(launch "$d" "$d/logs/kafka.out" "$java" -Xmx512m -Xms512m "${KAFKA_JVM_OPTS[@]}" \
    -Dkafka.logs.dir="$d/logs" "$(kafka_log_opt "$d")" -cp "$KLIBS/*" kafka.Kafka "$d/server.properties")
  echo "$pid" >"$(au_pidfile kafka)"
  echo "$pid" >"$(au_launcher kafka)"
}

# --------------------------------------------------------------------------- rabbit
au_rabbit_env() {
  local d
  d=$(au_dir rabbit)
  export HOME="$d/home"
  export LC_ALL=C.UTF-8 LANG=C.UTF-8
  export RABBITMQ_NODENAME="$AU_RABBIT_NODE" RABBITMQ_USE_LONGNAME=false
  export RABBITMQ_NODE_PORT=5690 RABBITMQ_DIST_PORT=25690
  export RABBITMQ_MNESIA_BASE="$d/mnesia" RABBITMQ_LOG_BASE="$d/log"
  export RABBITMQ_LOGS="$d/log/rabbit.log"
  export RABBITMQ_PID_FILE="$d/rabbit.pid"
  export RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
  export RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf" # keeps /etc/rabbitmq/rabbitmq-env.conf out
}

au_rabbit_ctl() {
  (au_rabbit_env && timeout 120 "$RABBIT_SBIN/rabbitmqctl" -q -n "$AU_RABBIT_NODE" "$@") 9>&-
}

# config (admin instead of guest), a cookie of its own, the definitions (users, vhost, permissions)
au_rabbit_prepare() {
  local d cookie
  d=$(au_dir rabbit)
  rabbit_installed || install_rabbit
  mkdir -p "$d/home" "$d/mnesia" "$d/log"
  if [[ ! -s $d/home/.erlang.cookie ]]; then
    cookie=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n' | tr 'a-f' 'A-F')
    (umask 077 && printf '%s' "SB$cookie" >"$d/home/.erlang.cookie")
    chmod 400 "$d/home/.erlang.cookie"
  fi
  au_permissions rabbit-definitions --credentials "$AU_CREDS" --vhost "$AU_VHOST" | au_write_secret "$d/definitions.json" ||
    die "rabbit auth: rendering the definitions failed"
  au_write_secret "$d/rabbitmq.conf" <<EOF
# GENERATED by scripts/brokers.sh --auth (node $AU_RABBIT_NODE, the secured profile)
listeners.tcp.default = 5690
loopback_users.guest = true
default_user = admin
default_pass = $(au_password admin)
default_vhost = $AU_VHOST
load_definitions = $d/definitions.json
disk_free_limit.absolute = 50MB
log.console = false
log.file.level = info
EOF
  echo '[].' | write_if_changed "$d/enabled_plugins"
}

au_launch_rabbit() {
  local d pid
  d=$(au_dir rabbit)
  rm -f "$(au_pidfile rabbit)"
  pid=$(au_rabbit_env && launch "$d" "$d/log/startup.log" "$RABBIT_SBIN/rabbitmq-server")
  echo "$pid" >"$(au_launcher rabbit)"
}

# --------------------------------------------------------------------------- nats
au_nats_prepare() {
  local d
  d=$(au_dir nats)
  nats_bin >/dev/null || install_nats
  mkdir -p "$d/data"
  au_permissions nats-conf --credentials "$AU_CREDS" | au_write_secret "$d/authorization.conf" ||
    die "nats auth: rendering the authorization block failed"
  write_if_changed "$d/nats.conf" <<EOF
# GENERATED by scripts/brokers.sh --auth (NATS JetStream, the secured profile)
server_name: sbauth
listen: 127.0.0.1:24222
http: 127.0.0.1:28222
pid_file: "$d/nats.pid"
log_file: "$d/nats.log"
jetstream {
  store_dir: "$d/data"
}
include "authorization.conf"
EOF
}

au_launch_nats() {
  local d pid
  d=$(au_dir nats)
  pid=$(launch "$d" "$d/nats.out" "$(nats_bin)" -c "$d/nats.conf")
  echo "$pid" >"$(au_pidfile nats)"
  echo "$pid" >"$(au_launcher nats)"
}

# --------------------------------------------------------------------------- readiness
# One connection as admin with a real client (credentials from the environment, never argv).
AU_PROBE_PY='
import asyncio, logging, os, sys
logging.disable(logging.CRITICAL)
b, url = sys.argv[1], os.environ["AU_PROBE_URL"]

async def kafka():
    from aiokafka.client import AIOKafkaClient
    from brokers.credentials import kafka_sasl_options, without_credentials
    c = AIOKafkaClient(bootstrap_servers=without_credentials(url), request_timeout_ms=5000,
                       **kafka_sasl_options(url, "SCRAM-SHA-512"))
    try:
        await c.bootstrap()
        if not c.cluster.brokers():
            raise RuntimeError("metadata lists no brokers")
    finally:
        await c.close()

async def rabbit():
    import aio_pika
    conn = await aio_pika.connect(url, timeout=5)
    await conn.close()

async def nats_():
    import nats
    _r, w = await asyncio.open_connection("127.0.0.1", 24222)
    w.close()

    async def quiet(_e):
        pass
    nc = await nats.connect(url, connect_timeout=3, allow_reconnect=False, max_reconnect_attempts=0, error_cb=quiet)
    try:
        await nc.jetstream().account_info()
    finally:
        await nc.close()

try:
    asyncio.run(asyncio.wait_for({"kafka": kafka, "rabbit": rabbit, "nats": nats_}[b](), 12))
except BaseException as e:
    print(f"{type(e).__name__}: {e}".strip().rstrip(":").splitlines()[0][:200])
    sys.exit(1)
'
AU_PROBE_ERR=""

au_probe() {
  local out rc=0
  out=$(cd "$ROOT" && AU_PROBE_URL=$(au_url "$1" admin) timeout 20 "$PY" -c "$AU_PROBE_PY" "$1" 2>&1) || rc=$?
  ((rc == 0)) && return 0
  AU_PROBE_ERR=$(tail -n 1 <<<"$out")
  return 1
}

au_tail_logs() {
  local f
  for f in $(au_logs "$1"); do
    [[ -s $f ]] || continue
    printf -- '--- last 20 lines of %s ---\n' "${f#"$ROOT"/}" >&2
    tail -n 20 "$f" >&2
  done
}

au_wait_ready() {
  local b=$1 t0=$2 deadline
  deadline=$(($(now_ms) + AU_WAIT_TIMEOUT * 1000))
  while true; do
    if au_probe "$b"; then
      info "$b auth: ready after $(elapsed "$t0") -> $(au_endpoint "$b")"
      return 0
    fi
    if ! au_running_pid "$b" >/dev/null; then
      printf 'brokers.sh: error: %s (secured) exited during startup (%s)\n' "$b" "$AU_PROBE_ERR" >&2
      au_tail_logs "$b"
      return 1
    fi
    if (($(now_ms) >= deadline)); then
      printf 'brokers.sh: error: %s (secured) not ready after %ss (%s)\n' "$b" "$AU_WAIT_TIMEOUT" "$AU_PROBE_ERR" >&2
      au_tail_logs "$b"
      return 1
    fi
    sleep 0.5
  done
}

# --------------------------------------------------------------------------- grants
# au_kafka_acls ARGS...: kafka-apply as admin (the password in the environment, not argv)
au_kafka_acls() {
  (export BROKER=kafka BROKER_URL=localhost:29092 BROKER_USERNAME=admin KAFKA_SASL_MECHANISM=SCRAM-SHA-512 &&
    BROKER_PASSWORD=$(au_password admin) && export BROKER_PASSWORD && "$@")
}

# au_grant BROKER [revoke]: put the grants of every granted namespace in place on the running
# broker (Kafka's ACLs add up: only those of AU_NAMESPACE, when named; revoke deletes them)
au_grant() {
  local b=$1 mode=${2:-} pid d
  d=$(au_dir "$b")
  case $b in
    kafka)
      if [[ $mode == revoke ]]; then au_kafka_acls au_permissions_for kafka-apply --revoke --namespace "$AU_NAMESPACE"
      elif [[ -n $AU_NAMESPACE ]]; then au_kafka_acls au_permissions_for kafka-apply --namespace "$AU_NAMESPACE"
      else au_kafka_acls au_permissions kafka-apply
      fi || { printf 'brokers.sh: error: kafka auth: applying the ACLs failed\n' >&2; return 1; }
      ;;
    rabbit)
      au_permissions rabbit-definitions --credentials "$AU_CREDS" --vhost "$AU_VHOST" | au_write_secret "$d/definitions.json"
      au_rabbit_ctl import_definitions "$d/definitions.json" >/dev/null ||
        { printf 'brokers.sh: error: rabbit auth: importing the definitions failed\n' >&2; return 1; }
      info "rabbit auth: users and permissions of vhost $AU_VHOST in place"
      ;;
    nats)
      au_permissions nats-conf --credentials "$AU_CREDS" | au_write_secret "$d/authorization.conf"
      pid=$(au_running_pid nats) || { printf 'brokers.sh: error: nats auth: not running\n' >&2; return 1; }
      kill -HUP "$pid" # nats-server reloads its configuration
      info "nats auth: users and permissions reloaded"
      ;;
  esac
}

# --------------------------------------------------------------------------- commands
# start phase 1: configure and launch unless running
au_launch() {
  local b=$1 pid
  if pid=$(au_running_pid "$b"); then
    info "$b auth: already running (pid $pid)"
    return 0
  fi
  case $b in
    kafka) au_kafka_prepare ;;
    rabbit) au_rabbit_prepare ;;
    nats) au_nats_prepare ;;
  esac
  rm -f "$(au_pidfile "$b")" "$(au_launcher "$b")"
  local port pids
  for port in $(au_ports "$b"); do
    pids=$(port_pids "$port")
    [[ -z $pids ]] && continue
    die "$b auth: port $port is already in use by ${pids%%$'\n'*} ($(describe_pid "${pids%%$'\n'*}")), which is not ours"
  done
  case $b in
    kafka) au_launch_kafka ;;
    rabbit) au_launch_rabbit ;;
    nats) au_launch_nats ;;
  esac
  info "$b auth: started (pid $(cat "$(au_launcher "$b")"))"
}

au_stop() {
  local b=$1 pid t0
  t0=$(now_ms)
  if ! pid=$(au_running_pid "$b"); then
    rm -f "$(au_pidfile "$b")" "$(au_launcher "$b")"
    info "$b auth: not running"
    return 0
  fi
  if [[ $b == rabbit && -f $(au_pidfile rabbit) ]]; then
    au_rabbit_ctl stop "$(au_pidfile rabbit)" >/dev/null 2>&1 || true
  fi
  stop_started "$b" "$b auth" "$pid" "$(au_needle "$b")" "$(au_pidfile "$b")" "$(au_launcher "$b")" "$t0"
}

au_status() {
  local b=$1 pid
  if pid=$(au_running_pid "$b"); then
    if au_probe "$b"; then
      info "$b auth: ready (pid $pid) $(au_endpoint "$b")"
      return 0
    fi
    info "$b auth: running (pid $pid) but NOT ready: $AU_PROBE_ERR"
    return 1
  fi
  info "$b auth: stopped"
  return 1
}

auth_main() {
  local cmd=$1 t rc=0 t0 p pids=()
  shift
  [[ $AU_WAIT_TIMEOUT =~ ^[0-9]+$ ]] || die "BROKERS_WAIT_TIMEOUT must be a number of seconds"
  case $cmd in
    url)
      for t in "$@"; do au_url "$t" "$AU_USER"; done
      return 0
      ;;
    revoke)
      [[ -n $AU_NAMESPACE ]] || die "revoke needs --namespace NS"
      lock
      if [[ -f $AU_NAMESPACES ]]; then
        grep -vxF -- "$AU_NAMESPACE" "$AU_NAMESPACES" >"$AU_NAMESPACES.tmp" || true
        mv -f "$AU_NAMESPACES.tmp" "$AU_NAMESPACES"
      fi
      for t in "$@"; do
        au_running_pid "$t" >/dev/null || continue # the next start renders the grants without it
        au_grant "$t" revoke || rc=1
      done
      ;;
    start | grant)
      lock
      au_credentials
      if [[ -n $AU_NAMESPACE ]] && ! grep -qxF -- "$AU_NAMESPACE" "$AU_NAMESPACES" 2>/dev/null; then
        echo "$AU_NAMESPACE" >>"$AU_NAMESPACES"
      fi
      t0=$(now_ms)
      if [[ $cmd == start ]]; then
        for t in "$@"; do au_launch "$t"; done
        for t in "$@"; do au_wait_ready "$t" "$t0" || rc=1; done
        ((rc == 0)) || return "$rc"
      fi
      for t in "$@"; do
        if ! au_running_pid "$t" >/dev/null; then cl_error "$t auth: not running"; rc=1; continue; fi
        au_grant "$t" || rc=1
      done
      ;;
    stop)
      lock
      for t in "$@"; do au_stop "$t" & pids+=("$!"); done
      for p in "${pids[@]}"; do wait "$p" || rc=1; done
      ;;
    status)
      for t in "$@"; do au_status "$t" || rc=1; done
      ;;
    wait)
      t0=$(now_ms)
      for t in "$@"; do au_wait_ready "$t" "$t0" || rc=1; done
      ;;
  esac
  return "$rc"
}
