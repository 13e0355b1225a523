# shellcheck shell=bash
# Local 3-node broker clusters: `scripts/brokers.sh COMMAND TARGET --nodes 3`.
# Sourced by scripts/brokers.sh (never run on its own): it uses that script's helpers
# (launch, find_our_pid, port_pids, term_and_wait, java_bin, kafka_*, stop_our_epmd, ...).
#
#   kafka   3 combined broker+controller KRaft nodes, node.id 1..3; clients
#           localhost:19092/19094/19096, controllers 19093/19095/19097, one cluster id
#   rabbit  Erlang nodes sb1..sb3@localhost (one cookie in .local/rabbit-cluster/home),
#           AMQP 5681..5683, distribution 25681..25683, epmd 4369 shared with the single
#           node; sb2 and sb3 join sb1 once, a restarted node rejoins by itself
#   nats    servers n1..n3 of cluster "switchboard": clients 127.0.0.1:14222..14224,
#           routes 16222..16224, monitoring 18222..18224, one JetStream store each
# State: .local/<broker>-cluster/node<i>/; node<i>/<broker>.pid holds the server's pid
# (SIGKILL it to take exactly one node down; `start ... --nodes 3` brings it back).

CL_NODES=(1 2 3)
CL_WAIT_TIMEOUT="${BROKERS_WAIT_TIMEOUT:-180}"
declare -A CL_LAUNCHED=() # broker -> the nodes this run launched
CL_STATE=()               # node -> "up DETAIL" | "down REASON" (set by cl_probe)
CL_PROBE_ERR=""

# --------------------------------------------------------------------------- cluster tables
cl_dir() { echo "$LOCAL/$1-cluster/node$2"; }
cl_pidfile() { echo "$LOCAL/$1-cluster/node$2/$1.pid"; }        # the server's pid
cl_launcher() { echo "$LOCAL/$1-cluster/node$2/launcher.pid"; } # the process we spawned
# cl_ports BROKER I: the ports of node I, client port first
cl_ports() {
  local i=$2
  case $1 in
    kafka) echo "$((19090 + 2 * i)) $((19091 + 2 * i))" ;;
    rabbit) echo "$((5680 + i)) $((25680 + i))" ;;
    nats) echo "$((14221 + i)) $((16221 + i)) $((18221 + i))" ;;
  esac
}
cl_client_port() {
  local p
  p=$(cl_ports "$1" "$2")
  echo "${p%% *}"
}
# A string only node I of our cluster has in its command line or environment.
cl_needle() {
  case $1 in
    kafka) echo "$(cl_dir kafka "$2")/server.properties" ;;
    rabbit) echo "$(cl_dir rabbit "$2")/mnesia" ;;
    nats) echo "$(cl_dir nats "$2")/nats.conf" ;;
  esac
}
cl_logs() { # main log first
  local d
  d=$(cl_dir "$1" "$2")
  case $1 in
    kafka) echo "$d/logs/server.log $d/logs/kafka.out" ;;
    rabbit) echo "$d/log/rabbit.log $d/log/startup.log" ;;
    nats) echo "$d/nats.log $d/nats.out" ;;
  esac
}
cl_node_url() {
  local port
  port=$(cl_client_port "$1" "$2")
  case $1 in
    kafka) echo "localhost:$port" ;;
    rabbit) echo "amqp://guest:guest@localhost:$port/" ;;
    nats) echo "nats://127.0.0.1:$port" ;;
  esac
}
# cl_url BROKER: the cluster's BROKER_URL, a comma-separated list of every node
cl_url() {
  local i urls=()
  for i in "${CL_NODES[@]}"; do urls+=("$(cl_node_url "$1" "$i")"); done
  (IFS=, && echo "${urls[*]}")
}

cl_running_pid() {
  local b=$1 i=$2
  # shellcheck disable=SC2046 # cl_ports: a list of port numbers
  find_our_pid "$(cl_needle "$b" "$i")" "$(cl_pidfile "$b" "$i")" "$(cl_launcher "$b" "$i")" $(cl_ports "$b" "$i")
}

cl_ensure_ports_free() {
  local b=$1 i=$2 port pids pid
  for port in $(cl_ports "$b" "$i"); do
    pids=$(port_pids "$port")
    [[ -z $pids ]] && continue
    pid=${pids%%$'\n'*}
    [[ $pid == "?" ]] &&
      die "$b node$i: port $port is already in use by another process (owner not visible; check: ss -ltnp 'sport = :$port')"
    die "$b node$i: port $port is already in use by pid $pid ($(describe_pid "$pid")), which is not ours; stop it or free the port"
  done
}

cl_tail_logs() {
  local f
  for f in $(cl_logs "$1" "$2"); do
    [[ -s $f ]] || continue
    printf -- '--- last 20 lines of %s ---\n' "${f#"$ROOT"/}" >&2
    tail -n 20 "$f" >&2
  done
}

cl_error() { printf 'brokers.sh: error: %s\n' "$*" >&2; }

# --------------------------------------------------------------------------- kafka cluster
KCL="$LOCAL/kafka-cluster"
KCL_VOTERS="1@localhost:19093,2@localhost:19095,3@localhost:19097"

kafka_cluster_properties() {
  local i=$1 client ctl
  read -r client ctl <<<"$(cl_ports kafka "$i")"
  kafka_properties "node $i of a 3-node cluster" "$i" "$KCL_VOTERS" "$client" "$ctl" "$(cl_dir kafka "$i")/data" 3 6
}

# jars, log config, one cluster id, per-node config; formats the nodes that have no data yet
kafka_cluster_prepare() {
  local java i d cid p pids=() nodes=()
  java=$(java_bin)
  [[ -f $KLIBS/.complete ]] || kafka_fetch_jars
  mkdir -p "$KCL"
  if is_kafka3; then kafka_log4j1_properties | write_if_changed "$KCL/log4j.properties"
  else kafka_log4j2_xml | write_if_changed "$KCL/log4j2.xml"
  fi
  if [[ ! -s $KCL/cluster.id ]]; then
    "$java" -cp "$KLIBS/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1 >"$KCL/cluster.id" ||
      die "kafka cluster: StorageTool random-uuid failed"
  fi
  cid=$(cat "$KCL/cluster.id")
  for i in "${CL_NODES[@]}"; do
    d=$(cl_dir kafka "$i")
    mkdir -p "$d/data" "$d/logs"
    kafka_cluster_properties "$i" | write_if_changed "$d/server.properties"
    [[ -f $d/data/meta.properties ]] && continue
    info "kafka node$i: formatting storage .local/kafka-cluster/node$i/data (cluster id $cid)"
    "$java" "$(kafka_log_opt "$KCL")" -Dkafka.logs.dir="$d/logs" -cp "$KLIBS/*" kafka.tools.StorageTool format \
      -t "$cid" -c "$d/server.properties" -g >"$d/logs/format.log" 2>&1 9>&- &
    pids+=("$!")
    nodes+=("$i")
  done
  for p in "${!pids[@]}"; do
    wait "${pids[p]}" ||
      die "kafka node${nodes[p]}: formatting storage failed: $(tail -n 1 "$(cl_dir kafka "${nodes[p]}")/logs/format.log") (log: .local/kafka-cluster/node${nodes[p]}/logs/format.log)"
  done
  for i in "${nodes[@]}"; do echo "$KAFKA_VERSION" >"$(cl_dir kafka "$i")/data.version"; done
}

launch_kafka_node() {
  local i=$1 d java pid
  d=$(cl_dir kafka "$i")
  java=$(java_bin)
  pid=$(launch "$d" "$d/logs/kafka.out" "$java" -Xmx512m -Xms512m "${KAFKA_JVM_OPTS[@]}" \
    -Dkafka.logs.dir="$d/logs" "$(kafka_log_opt "$KCL")" -cp "$KLIBS/*" kafka.Kafka "$d/server.properties")
  echo "$pid" >"$(cl_pidfile kafka "$i")"
  echo "$pid" >"$(cl_launcher kafka "$i")"
}

# --------------------------------------------------------------------------- rabbit cluster
RCL="$LOCAL/rabbit-cluster"

# Environment of node I (server and rabbitmqctl); the shared HOME holds the one erlang cookie.
rabbit_cluster_env() {
  local i=$1 d
  d=$(cl_dir rabbit "$i")
  export HOME="$RCL/home"
  export LC_ALL=C.UTF-8 LANG=C.UTF-8
  export RABBITMQ_NODENAME="sb$i@localhost" RABBITMQ_USE_LONGNAME=false
  export RABBITMQ_NODE_PORT=$((5680 + i)) RABBITMQ_DIST_PORT=$((25680 + i))
  export RABBITMQ_MNESIA_BASE="$d/mnesia" RABBITMQ_LOG_BASE="$d/log"
  export RABBITMQ_LOGS="$d/log/rabbit.log"
  export RABBITMQ_PID_FILE="$d/rabbit.pid"
  export RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
  export RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf" # keeps /etc/rabbitmq/rabbitmq-env.conf out
}

# rabbit_cl_ctl I ARGS...: rabbitmqctl against node sbI@localhost
rabbit_cl_ctl() {
  local i=$1
  shift
  (rabbit_cluster_env "$i" && timeout 120 "$RABBIT_SBIN/rabbitmqctl" -q -n "sb$i@localhost" "$@") 9>&-
}

rabbit_cluster_prepare() {
  local i d cookie
  mkdir -p "$RCL/home"
  if [[ ! -s $RCL/home/.erlang.cookie ]]; then
    cookie=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n' | tr 'a-f' 'A-F')
    (umask 077 && printf '%s' "SB$cookie" >"$RCL/home/.erlang.cookie")
    chmod 400 "$RCL/home/.erlang.cookie"
  fi
  for i in "${CL_NODES[@]}"; do
    d=$(cl_dir rabbit "$i")
    mkdir -p "$d/mnesia" "$d/log"
    write_if_changed "$d/rabbitmq.conf" <<EOF
# GENERATED by scripts/brokers.sh (node sb$i@localhost of a 3-node cluster)
listeners.tcp.default = $((5680 + i))
loopback_users.guest = true
default_user = guest
default_pass = guest
disk_free_limit.absolute = 50MB
cluster_name = switchboard
# a node that sees only a minority of the cluster pauses (the other two carry on)
cluster_partition_handling = pause_minority
log.console = false
log.file.level = info
EOF
    echo '[].' | write_if_changed "$d/enabled_plugins"
  done
}

launch_rabbit_node() {
  local i=$1 d pid
  d=$(cl_dir rabbit "$i")
  rm -f "$(cl_pidfile rabbit "$i")" # written by the server itself (RABBITMQ_PID_FILE)
  pid=$(rabbit_cluster_env "$i" && launch "$d" "$d/log/startup.log" "$RABBIT_SBIN/rabbitmq-server")
  echo "$pid" >"$(cl_launcher rabbit "$i")"
}

# rabbit_cl_nodes I KEY: the nodes listed under KEY (disk_nodes, running_nodes) by node I
rabbit_cl_nodes() {
  local out
  out=$(rabbit_cl_ctl "$1" cluster_status --formatter json 2>/dev/null) || return 1
  out=$(grep -o "\"$2\":\[[^]]*\]" <<<"$out") || return 1
  grep -o '"[^"]*@[^"]*"' <<<"${out#*:}" | tr -d '"' | tr '\n' ' '
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# After a start: wait until every node has booted, then let sb2 and sb3 join sb1
# unless sb1 already lists them (a restarted node rejoins by itself).
rabbit_cluster_form() {
  local deadline=$1 i port members log joined=""
  for i in "${CL_NODES[@]}"; do
    port=$(cl_client_port rabbit "$i")
    until port_open "$port"; do
      if ! cl_running_pid rabbit "$i" >/dev/null; then
        cl_error "rabbit node$i (sb$i@localhost) exited during startup"
        cl_tail_logs rabbit "$i"
        return 1
      fi
      if (($(now_ms) >= deadline)); then
        cl_error "rabbit node$i (sb$i@localhost) did not open AMQP port $port within ${CL_WAIT_TIMEOUT}s"
        cl_tail_logs rabbit "$i"
        return 1
      fi
      sleep 0.5
    done
  done
  members=$(rabbit_cl_nodes 1 disk_nodes) || {
    cl_error "rabbit: rabbitmqctl -n sb1@localhost cluster_status failed"
    return 1
  }
  for i in "${CL_NODES[@]:1}"; do
    [[ " $members " == *" sb$i@localhost "* ]] && continue
    info "rabbit node$i: joining sb$i@localhost to the cluster of sb1@localhost"
    log="$(cl_dir rabbit "$i")/log/join.log"
    if ! { rabbit_cl_ctl "$i" stop_app && rabbit_cl_ctl "$i" reset &&
      rabbit_cl_ctl "$i" join_cluster sb1@localhost && rabbit_cl_ctl "$i" start_app; } >"$log" 2>&1; then
      cl_error "rabbit node$i: joining sb1@localhost failed (log: ${log#"$ROOT"/})"
      tail -n 20 "$log" >&2
      cl_tail_logs rabbit "$i"
      return 1
    fi
    joined=1
  done
  if [[ -n $joined ]]; then # (feature flags: a fresh node enables all of them; make sure)
    rabbit_cl_ctl 1 enable_feature_flag all >>"$RCL/form.log" 2>&1 ||
      cl_error "rabbit: enable_feature_flag all failed (log: .local/rabbit-cluster/form.log)"
  fi
  return 0
}

# --------------------------------------------------------------------------- nats cluster

nats_cluster_conf() {
  local i=$1 d client route mon j
  d=$(cl_dir nats "$i")
  read -r client route mon <<<"$(cl_ports nats "$i")"
  cat <<EOF
# GENERATED by scripts/brokers.sh (NATS JetStream, server n$i of the 3-node cluster "switchboard")
server_name: n$i
listen: 127.0.0.1:$client
client_advertise: "127.0.0.1:$client"
http: 127.0.0.1:$mon
pid_file: "$d/nats.pid"
log_file: "$d/nats.log"
jetstream {
  store_dir: "$d/data"
}
cluster {
  name: switchboard
  listen: 127.0.0.1:$route
  routes: [
EOF
  for j in "${CL_NODES[@]}"; do
    [[ $j == "$i" ]] || echo "    nats-route://127.0.0.1:$((16221 + j))"
  done
  cat <<EOF
  ]
}
EOF
}

nats_cluster_prepare() {
  local i d
  for i in "${CL_NODES[@]}"; do
    d=$(cl_dir nats "$i")
    mkdir -p "$d/data"
    nats_cluster_conf "$i" | write_if_changed "$d/nats.conf"
  done
}

launch_nats_node() {
  local i=$1 d pid
  d=$(cl_dir nats "$i")
  pid=$(launch "$d" "$d/nats.out" "$(nats_bin)" -c "$d/nats.conf")
  echo "$pid" >"$(cl_pidfile nats "$i")"
  echo "$pid" >"$(cl_launcher nats "$i")"
}

# --------------------------------------------------------------------------- readiness
# One look at every node with a real client, then at the cluster as a whole. Prints
# "nodeI up DETAIL" / "nodeI down REASON" per node, then "cluster ok" or "cluster REASON";
# exit 0 only for "cluster ok", 3 = client library missing.
CL_PROBE_PY='
import asyncio, json, logging, sys, urllib.request, uuid
logging.disable(logging.CRITICAL)
b, urls = sys.argv[1], sys.argv[2].split(",")
monitors = sys.argv[3].split(",") if len(sys.argv) > 3 else []
try:
    if b == "kafka":
        from aiokafka.client import AIOKafkaClient
    elif b == "rabbit":
        import aio_pika
    else:
        import nats
        from nats.js.api import StorageType, StreamConfig
except ImportError:
    sys.exit(3)


def short(e):
    text = f"{type(e).__name__}: {e}".strip().rstrip(":")
    return text.splitlines()[0][:200] if text else type(e).__name__


async def kafka_node(i, url):
    c = AIOKafkaClient(bootstrap_servers=url, request_timeout_ms=5000)
    try:
        await c.bootstrap()
        n = len(c.cluster.brokers())
    finally:
        await c.close()
    return n, f"(metadata lists {n} brokers)"


async def kafka_cluster(res):
    seen = min(n for n, _ in res)
    if seen < len(urls):
        return f"a node lists only {seen} of {len(urls)} brokers in its metadata"
    # a restarted node is back in every ISR (so the next node may go down safely)
    c = AIOKafkaClient(bootstrap_servers=",".join(urls), request_timeout_ms=5000)
    try:
        await c.bootstrap()
        md = await c.fetch_all_metadata()
    finally:
        await c.close()
    behind = sorted(f"{t}-{p}" for t, parts in getattr(md, "_partitions", {}).items()
                    for p, m in parts.items() if m.leader == -1 or set(m.isr) != set(m.replicas))
    if behind:
        return f"{len(behind)} partitions under-replicated (e.g. {behind[0]})"


async def rabbit_node(i, url):
    conn = await aio_pika.connect(url, timeout=5)
    await conn.close()
    return None, ""


async def rabbit_cluster(res):
    return None  # the running nodes: rabbitmqctl cluster_status, in the script


async def quiet(_e):
    pass


async def nats_connect(url):
    # nats-py retries a refused initial connect forever; fail fast instead
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    _r, w = await asyncio.open_connection(host, int(port))
    w.close()
    return await nats.connect(url, connect_timeout=3, allow_reconnect=False,
                              max_reconnect_attempts=0, error_cb=quiet)


def get_json(url):
    with urllib.request.urlopen(url, timeout=3) as r:
        return json.load(r)


async def nats_node(i, url):
    nc = await nats_connect(url)
    try:
        await nc.jetstream(timeout=2).account_info()
    except Exception as e:
        raise RuntimeError("connects, but JetStream does not answer: " + short(e)) from None
    finally:
        await nc.close()
    leader = ""
    if monitors:
        jsz = await asyncio.to_thread(get_json, f"http://127.0.0.1:{monitors[i]}/jsz")
        leader = (jsz.get("meta_cluster") or {}).get("leader") or ""
    shown = leader or "-"
    return leader, f"(JetStream meta leader {shown})"


async def nats_cluster(res):
    leaders = {leader for leader, _ in res}
    if "" in leaders or len(leaders) != 1:
        return "no agreed JetStream meta leader yet"
    nc = await nats_connect(urls[0])
    name = "SB_CLUSTER_PROBE_" + uuid.uuid4().hex[:10]
    try:
        js = nc.jetstream(timeout=5)
        await js.add_stream(StreamConfig(name=name, subjects=[f"_sb_probe.{name}"],
                                         num_replicas=len(urls), storage=StorageType.MEMORY))
        await js.delete_stream(name)
    finally:
        await nc.close()
    # every replica of every clustered stream is current, as its leader sees it
    behind = set()
    for i, port in enumerate(monitors, 1):
        jsz = await asyncio.to_thread(get_json, f"http://127.0.0.1:{port}/jsz?accounts=true&streams=true")
        for account in jsz.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                cl, sname = stream.get("cluster") or {}, stream.get("name")
                if not cl.get("replicas"):
                    continue
                if not cl.get("leader"):
                    behind.add(f"{sname} (no leader)")
                elif cl["leader"] == f"n{i}":
                    behind.update(f"{sname} on " + r.get("name", "?") for r in cl["replicas"] if not r.get("current"))
    if behind:
        return "stream replicas not current yet: " + ", ".join(sorted(behind)[:3])


async def main():
    node, cluster = {"kafka": (kafka_node, kafka_cluster), "rabbit": (rabbit_node, rabbit_cluster),
                     "nats": (nats_node, nats_cluster)}[b]
    res = await asyncio.gather(*(asyncio.wait_for(node(i, u), 12) for i, u in enumerate(urls)),
                               return_exceptions=True)
    up, down = [], []
    for i, r in enumerate(res, 1):
        if isinstance(r, BaseException):
            print(f"node{i} down {short(r)}")
            down.append(f"node{i}")
        else:
            print(f"node{i} up {r[1]}".rstrip())
            up.append(r)
    if down:
        print("cluster " + " and ".join(down) + " down")
        return 1
    try:
        why = await asyncio.wait_for(cluster(up), 15)
    except BaseException as e:
        why = short(e)
    if why:
        print(f"cluster {why}")
        return 1
    print("cluster ok")
    return 0

sys.exit(asyncio.run(main()))
'
CL_FALLBACK_NOTED=""

# cl_probe BROKER: 0 when every node answers a real client and the cluster is usable;
# fills CL_STATE (per node) and CL_PROBE_ERR
cl_probe() {
  local b=$1 out rc=0 line i extra=() running n
  CL_STATE=()
  CL_PROBE_ERR=""
  [[ $b == nats ]] && extra=("18222,18223,18224")
  if [[ -x $PY ]]; then
    out=$(timeout 45 "$PY" -c "$CL_PROBE_PY" "$b" "$(cl_url "$b")" "${extra[@]}" 2>&1) || rc=$?
  else
    rc=127
  fi
  if [[ $rc -eq 3 || $rc -eq 126 || $rc -eq 127 ]]; then
    if [[ -z $CL_FALLBACK_NOTED ]]; then
      info "note: no client library in ${PY} for $b; readiness is a TCP port check per node" >&2
      CL_FALLBACK_NOTED=1
    fi
    rc=0
    for i in "${CL_NODES[@]}"; do
      if port_open "$(cl_client_port "$b" "$i")"; then CL_STATE[i]="up"
      else CL_STATE[i]="down connection refused"; rc=1
      fi
    done
    ((rc == 0)) || CL_PROBE_ERR="not every node accepts connections"
  else
    while IFS= read -r line; do
      case $line in
        node[0-9]" "*) i=${line:4:1} && CL_STATE[i]=${line:6} ;;
        "cluster ok") ;;
        "cluster "*) CL_PROBE_ERR=${line#cluster } ;;
      esac
    done <<<"$out"
    if ((rc == 124)); then CL_PROBE_ERR="the client probe timed out"
    elif ((rc != 0)) && [[ -z $CL_PROBE_ERR ]]; then CL_PROBE_ERR=$(tail -n 1 <<<"$out")
    fi
  fi
  ((rc == 0)) || return 1
  if [[ $b == rabbit ]]; then
    running=$(rabbit_cl_nodes 1 running_nodes) || running=""
    n=$(wc -w <<<"$running")
    if ((n < ${#CL_NODES[@]})); then
      CL_PROBE_ERR="rabbitmqctl cluster_status lists ${n} of ${#CL_NODES[@]} nodes running${running:+ (${running% })}"
      return 1
    fi
  fi
  return 0
}

cl_up_count() {
  local i n=0
  for i in "${CL_NODES[@]}"; do [[ ${CL_STATE[i]:-} == up* ]] && n=$((n + 1)); done
  echo "$n"
}

# cl_wait_ready BROKER START_MS MODE: until the cluster is usable; MODE start also forms
# the RabbitMQ cluster and fails fast when a node launched by this run exits
cl_wait_ready() {
  local b=$1 t0=$2 mode=$3 deadline i
  deadline=$(($(now_ms) + CL_WAIT_TIMEOUT * 1000))
  if [[ $b == rabbit && $mode == start ]]; then
    rabbit_cluster_form "$deadline" || return 1
  fi
  while true; do
    if cl_probe "$b"; then
      info "$b cluster: ready after $(elapsed "$t0") -> BROKER_URL=$(cl_url "$b")"
      return 0
    fi
    if [[ $mode == start ]]; then
      for i in ${CL_LAUNCHED[$b]:-}; do
        cl_running_pid "$b" "$i" >/dev/null && continue
        cl_error "$b node$i exited during startup ($CL_PROBE_ERR)"
        cl_tail_logs "$b" "$i"
        return 1
      done
    fi
    if (($(now_ms) >= deadline)); then
      cl_error "$b cluster not ready after ${CL_WAIT_TIMEOUT}s ($CL_PROBE_ERR)"
      for i in "${CL_NODES[@]}"; do
        [[ ${CL_STATE[i]:-down} == up* ]] && continue
        printf '%s node%s: %s\n' "$b" "$i" "${CL_STATE[i]:-down}" >&2
        cl_tail_logs "$b" "$i"
      done
      return 1
    fi
    sleep 1
  done
}

# --------------------------------------------------------------------------- commands
# start phase 1: install if needed, write the configs, launch every node that is not running
cl_launch() {
  local b=$1 i pid
  CL_LAUNCHED[$b]=""
  case $b in
    kafka) kafka_cluster_prepare ;;
    rabbit) rabbit_installed || install_rabbit; rabbit_cluster_prepare ;;
    nats) nats_bin >/dev/null || install_nats; nats_cluster_prepare ;;
  esac
  for i in "${CL_NODES[@]}"; do
    if pid=$(cl_running_pid "$b" "$i"); then
      info "$b node$i: already running (pid $pid)"
      continue
    fi
    rm -f "$(cl_pidfile "$b" "$i")" "$(cl_launcher "$b" "$i")"
    cl_ensure_ports_free "$b" "$i"
    case $b in
      kafka) launch_kafka_node "$i" ;;
      rabbit) launch_rabbit_node "$i" ;;
      nats) launch_nats_node "$i" ;;
    esac
    CL_LAUNCHED[$b]+=" $i"
    info "$b node$i: started (pid $(cat "$(cl_launcher "$b" "$i")"))"
  done
}

cl_stop() {
  local b=$1 i pid p f pids=() nodes=() t0 grace
  t0=$(now_ms)
  for i in "${CL_NODES[@]}"; do
    cl_running_pid "$b" "$i" >/dev/null && nodes+=("$i")
  done
  if ((${#nodes[@]} == 0)); then
    for i in "${CL_NODES[@]}"; do rm -f "$(cl_pidfile "$b" "$i")" "$(cl_launcher "$b" "$i")"; done
    info "$b cluster: not running"
    return 0
  fi
  if [[ $b == rabbit ]]; then # one by one, sb1 last: it is the first to come back
    for ((p = ${#nodes[@]} - 1; p >= 0; p--)); do
      i=${nodes[p]}
      [[ -f $(cl_pidfile rabbit "$i") ]] || continue
      rabbit_cl_ctl "$i" stop "$(cl_pidfile rabbit "$i")" >/dev/null 2>&1 || true
    done
  fi
  # every node at once: Kafka's brokers shut down in a controlled way while the
  # controller quorum is still there
  for i in "${nodes[@]}"; do
    for f in "$(cl_pidfile "$b" "$i")" "$(cl_launcher "$b" "$i")"; do
      p=$(cat "$f" 2>/dev/null) || continue
      if alive "$p" && pid_has "$p" "$(cl_needle "$b" "$i")"; then pids+=("$p"); fi
    done
    if pid=$(cl_running_pid "$b" "$i") && [[ " ${pids[*]} " != *" $pid "* ]]; then pids+=("$pid"); fi
  done
  grace=60
  if [[ $b == kafka ]] && ((${#nodes[@]} < 2)); then
    # no controller quorum: a broker's controlled shutdown would wait for it forever
    info "kafka cluster: only ${#nodes[@]} of ${#CL_NODES[@]} nodes running (no controller quorum); killing after 10s"
    grace=10
  fi
  ((${#pids[@]})) && term_and_wait "$grace" "${pids[@]}"
  [[ $b == rabbit ]] && stop_our_epmd
  for i in "${CL_NODES[@]}"; do rm -f "$(cl_pidfile "$b" "$i")" "$(cl_launcher "$b" "$i")"; done
  info "$b cluster: stopped (${#nodes[@]} node$( ((${#nodes[@]} == 1)) || echo s)) in $(elapsed "$t0")"
}

cl_status() {
  local b=$1 i pid st ok=0 n
  cl_probe "$b" && ok=1
  for i in "${CL_NODES[@]}"; do
    st=${CL_STATE[i]:-down}
    if pid=$(cl_running_pid "$b" "$i"); then
      if [[ $st == up* ]]; then info "$b node$i: up (pid $pid) $(cl_node_url "$b" "$i")${st#up}"
      else info "$b node$i: running (pid $pid) but NOT answering: ${st#down }"
      fi
    elif [[ $st == up* ]]; then
      info "$b node$i: up (not started by this script) $(cl_node_url "$b" "$i")"
    else
      info "$b node$i: down"
    fi
  done
  n=$(cl_up_count)
  if ((ok)); then
    info "$b cluster: ready ($n/${#CL_NODES[@]} nodes) BROKER_URL=$(cl_url "$b")"
    return 0
  fi
  info "$b cluster: NOT ready ($n/${#CL_NODES[@]} nodes up): $CL_PROBE_ERR; BROKER_URL=$(cl_url "$b")"
  return 1
}

cluster_main() {
  local cmd=$1 t rc=0 t0 p pids=()
  shift
  [[ $CL_WAIT_TIMEOUT =~ ^[0-9]+$ ]] || die "BROKERS_WAIT_TIMEOUT must be a number of seconds"
  case $cmd in
    start)
      lock
      t0=$(now_ms)
      for t in "$@"; do cl_launch "$t"; done
      for t in "$@"; do cl_wait_ready "$t" "$t0" start || rc=1; done
      ;;
    stop)
      lock
      for t in "$@"; do cl_stop "$t" & pids+=("$!"); done # in parallel
      for p in "${pids[@]}"; do wait "$p" || rc=1; done
      ;;
    status)
      for t in "$@"; do cl_status "$t" || rc=1; done
      ;;
    wait)
      t0=$(now_ms)
      for t in "$@"; do cl_wait_ready "$t" "$t0" wait || rc=1; done
      ;;
  esac
  return "$rc"
}
