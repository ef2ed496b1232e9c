# Shared settings and helpers of the local stack scripts. Sourced, never run.
#
# Every setting can be overridden from the environment; the defaults are what README.md lists.
# Installs are idempotent and cached under CHAT_CACHE_DIR (outside the repository); runtime
# state (data, logs, pid files) lives under CHAT_STATE_DIR, so a second stack with other ports
# and another state directory can run beside the first (the broker durability test does this).

set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEPLOY_DIR="$REPO_ROOT/deploy/local"

: "${CHAT_CACHE_DIR:=$HOME/.cache/chat-platform}"
: "${CHAT_STATE_DIR:=$HOME/.local/state/chat-platform}"
: "${CHAT_CARGO_PROFILE:=release}"          # dev or release: how `up` builds the workspace binaries
: "${CHAT_BIN_DIR:=}"                       # prebuilt binaries; when set, `up` does not run cargo

: "${CHAT_KAFKA_NODES:=1}"                  # 1, or 3: a KRaft cluster on loopback (replication 3)
: "${CHAT_KAFKA_PORT:=9092}"                # node 1's client port
: "${CHAT_KAFKA_CONTROLLER_PORT:=$((CHAT_KAFKA_PORT + 1))}"
# Node n's client and controller ports (space-separated, one per node); by default node n
# takes CHAT_KAFKA_PORT + 2(n-1) and CHAT_KAFKA_CONTROLLER_PORT + 2(n-1).
if [ -z "${CHAT_KAFKA_PORTS:-}" ] || [ -z "${CHAT_KAFKA_CONTROLLER_PORTS:-}" ]; then
    _ports="" _controllers=""
    for ((_n = 0; _n < CHAT_KAFKA_NODES; _n++)); do
        _ports+="${_ports:+ }$((CHAT_KAFKA_PORT + 2 * _n))"
        _controllers+="${_controllers:+ }$((CHAT_KAFKA_CONTROLLER_PORT + 2 * _n))"
    done
    : "${CHAT_KAFKA_PORTS:=$_ports}" "${CHAT_KAFKA_CONTROLLER_PORTS:=$_controllers}"
    unset _ports _controllers _n
fi
: "${CHAT_KAFKA_REPLICATION:=$((CHAT_KAFKA_NODES >= 3 ? 3 : CHAT_KAFKA_NODES))}"
# Broker heap: Kafka lives on the page cache, not its heap; three nodes share this machine.
: "${CHAT_KAFKA_HEAP:=$((CHAT_KAFKA_NODES > 1 ? 512 : 1024))m}"
: "${CHAT_REGISTRY_PORT:=8081}"
: "${CHAT_PG_PORT:=5432}"
: "${CHAT_PG_DATABASE:=chat}"
: "${CHAT_REDIS_PORT:=6379}"
: "${CHAT_MONGO_PORT:=27017}"
: "${CHAT_FERRETDB_PG_DATABASE:=${CHAT_PG_DATABASE}_ferretdb}"   # FerretDB's own database
: "${CHAT_FERRETDB_POOL:=40}"                # FerretDB's PostgreSQL connections
: "${CHAT_FERRETDB_GOGC:=400}"              # FerretDB's Go GC target (Go's default: 100)
: "${CHAT_REGISTRY_PG_DATABASE:=${CHAT_PG_DATABASE}_registry}"   # Apicurio's own database
: "${CHAT_CLICKHOUSE_HTTP_PORT:=8123}"
: "${CHAT_CLICKHOUSE_TCP_PORT:=9000}"
: "${CHAT_CLICKHOUSE_INTERSERVER_PORT:=9009}"
: "${CHAT_ROOM_PARTITIONS:=12}"
: "${CHAT_COMMANDS_PORT:=8090}"
: "${CHAT_QUERY_PORT:=8091}"
: "${CHAT_PROJECTIONS_PORT:=8094}"
: "${CHAT_WS_PORT:=8092}"
: "${CHAT_WS_EXTRA_PORTS:=}"                # more ws-fanout nodes behind nginx (ports)
: "${CHAT_ENTRY_PORT:=8080}"                # nginx: the single entry point
: "${CHAT_SIGNALING_PORT:=8093}"            # signaling (calls): TURN credentials, call signaling
: "${CHAT_TURN_PORT:=3478}"                 # coturn, UDP and TCP
: "${CHAT_TURN_MIN_PORT:=49160}"            # coturn's relayed addresses
: "${CHAT_TURN_MAX_PORT:=49260}"
: "${CHAT_TURN_SECRET_FILE:=$CHAT_STATE_DIR/keys/turn-secret}"
: "${CHAT_JANUS_PORT:=8095}"                # Janus's HTTP API (loopback; signaling only)
: "${CHAT_JANUS_MIN_PORT:=49500}"           # Janus's media (RTP/RTCP, one port per connection)
: "${CHAT_JANUS_MAX_PORT:=49699}"
: "${CHAT_JANUS_ICE_ENFORCE:=}"             # interfaces/addresses Janus gathers on (empty: all but loopback)
: "${CHAT_JANUS_SECRET_FILE:=$CHAT_STATE_DIR/keys/janus-secret}"
: "${CHAT_INTERNAL_SECRET_FILE:=$CHAT_STATE_DIR/keys/internal-secret}"   # tier-to-tier requests
: "${CHAT_JWT_PRIVATE_KEY_FILE:=$CHAT_STATE_DIR/keys/jwt-private.pem}"
# Monitoring (deploy/monitoring). Not Debian's default ports: a machine whose init system
# started the packaged daemons keeps them apart from the stack's own.
: "${CHAT_PROMETHEUS_PORT:=9190}"
: "${CHAT_ALERTMANAGER_PORT:=9193}"
: "${CHAT_NODE_EXPORTER_PORT:=9199}"
: "${CHAT_LAG_EXPORTER_PORT:=9198}"         # replay-tools serve-lag: consumer groups' lag
: "${CHAT_SCRAPE_INTERVAL:=15s}"            # Prometheus's scrape and rule evaluation interval

RUN_DIR="$CHAT_STATE_DIR/run"
LOG_DIR="$CHAT_STATE_DIR/logs"
DATA_DIR="$CHAT_STATE_DIR/data"

# What clients of this stack connect to (tests and services read the same variables).
CHAT_KAFKA_BROKERS=""
for _port in $CHAT_KAFKA_PORTS; do CHAT_KAFKA_BROKERS+="${CHAT_KAFKA_BROKERS:+,}127.0.0.1:$_port"; done
unset _port
# Not CHAT_KAFKA_REPLICATION: a private stack a test starts must derive it from its own nodes.
export CHAT_KAFKA_BROKERS
export CHAT_REGISTRY_URL="http://127.0.0.1:$CHAT_REGISTRY_PORT/apis/ccompat/v7"
export CHAT_PG_URL="postgres://postgres@127.0.0.1:$CHAT_PG_PORT/$CHAT_PG_DATABASE"
export CHAT_REDIS_URL="redis://127.0.0.1:$CHAT_REDIS_PORT"
export CHAT_MONGO_URL="mongodb://127.0.0.1:$CHAT_MONGO_PORT/?directConnection=true"
export CHAT_CLICKHOUSE_URL="http://127.0.0.1:$CHAT_CLICKHOUSE_HTTP_PORT"
export CHAT_COMMANDS_URL="http://127.0.0.1:$CHAT_COMMANDS_PORT"
export CHAT_QUERY_URL="http://127.0.0.1:$CHAT_QUERY_PORT"
export CHAT_PROJECTIONS_URL="http://127.0.0.1:$CHAT_PROJECTIONS_PORT"
export CHAT_WS_URL="http://127.0.0.1:$CHAT_WS_PORT"
export CHAT_ENTRY_URL="http://127.0.0.1:$CHAT_ENTRY_PORT"
export CHAT_SIGNALING_URL="http://127.0.0.1:$CHAT_SIGNALING_PORT"
export CHAT_JANUS_URL="http://127.0.0.1:$CHAT_JANUS_PORT/janus"
export CHAT_TURN_SECRET_FILE CHAT_INTERNAL_SECRET_FILE CHAT_JANUS_SECRET_FILE CHAT_JANUS_ICE_ENFORCE
export CHAT_TURN_URLS="turn:127.0.0.1:$CHAT_TURN_PORT?transport=udp,turn:127.0.0.1:$CHAT_TURN_PORT?transport=tcp"
export CHAT_JWKS_URL="$CHAT_COMMANDS_URL/v1/auth/jwks"
export CHAT_JWT_PRIVATE_KEY_FILE
export CHAT_PROMETHEUS_URL="http://127.0.0.1:$CHAT_PROMETHEUS_PORT"
export CHAT_ALERTMANAGER_URL="http://127.0.0.1:$CHAT_ALERTMANAGER_PORT"
export CHAT_LAG_EXPORTER_URL="http://127.0.0.1:$CHAT_LAG_EXPORTER_PORT"

# The infrastructure services, in start order.
ALL_SERVICES=(postgres redis broker registry mongo clickhouse coturn janus commands projections query-api ws-fanout signaling nginx)
# Monitoring last (it watches the rest); CHAT_MONITORING=0 leaves it out (the benchmarks do: the
# peer they measure against has none).
: "${CHAT_MONITORING:=1}"
[ "$CHAT_MONITORING" = 0 ] || ALL_SERVICES+=(node-exporter lag-exporter alertmanager prometheus)

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root (or sudo) to run: $*"; fi
}

# Installs the Debian packages that are not installed yet.
APT_UPDATED=0
ensure_apt() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    if [ "$APT_UPDATED" -eq 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_file() { echo "$RUN_DIR/$1.pid"; }

# Whether a process runs. A killed process whose parent has not reaped it yet is a zombie:
# `kill -0` still succeeds on it, but it is gone for every purpose here.
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != [ZX] ]]
}

# The pid of a service this stack started, if that process is still alive.
running_pid() {
    local f; f=$(pid_file "$1")
    [ -f "$f" ] || return 1
    local pid; pid=$(cat "$f")
    if [ -n "$pid" ] && alive "$pid"; then echo "$pid"; return 0; fi
    return 1
}

# start_bg NAME WORKDIR CMD... : starts CMD detached (own session), logging to LOG_DIR/NAME.log.
start_bg() {
    local name=$1 workdir=$2; shift 2
    mkdir -p "$RUN_DIR" "$LOG_DIR" "$workdir"
    local logfile="$LOG_DIR/$name.log"
    (cd "$workdir" && exec setsid "$@" >>"$logfile" 2>&1 </dev/null) &
    echo $! >"$(pid_file "$name")"
}

# For services built from this workspace: when the running process was started from another
# binary (another checkout, or a rebuild since), stop it so `up` starts the current one.
# Without this a stale service keeps answering and tests run against old code.
restart_if_rebuilt() {
    local name=$1 binary=$2 stamp
    stamp="$binary $(stat -c %Y "$binary" 2>/dev/null || echo missing)"
    if running_pid "$name" >/dev/null && [ "$(cat "$RUN_DIR/$name.binary" 2>/dev/null)" != "$stamp" ]; then
        log "$name: binary changed since it started; restarting it"
        stop_service "$name"
    fi
    mkdir -p "$RUN_DIR"
    echo "$stamp" >"$RUN_DIR/$name.binary.next"
}

# Records which binary a workspace service was started from (see restart_if_rebuilt).
record_binary() { mv -f "$RUN_DIR/$1.binary.next" "$RUN_DIR/$1.binary"; }

# wait_port_free NAME PORT VARIABLE: a port this stack is about to listen on must be free; a
# process that was just stopped may hold it for a moment.
wait_port_free() {
    local name=$1 port=$2 variable=$3
    for _ in $(seq 1 25); do port_open "$port" || return 0; sleep 0.2; done
    die "$name: port $port is taken by a process this stack did not start; set $variable"
}

# wait_until NAME SECONDS CMD... : polls CMD until it succeeds; fails naming the service's log.
wait_until() {
    local name=$1 seconds=$2; shift 2
    local deadline=$((SECONDS + seconds))
    while ! "$@" >/dev/null 2>&1; do
        if [ -f "$(pid_file "$name")" ] && ! running_pid "$name" >/dev/null; then
            die "$name exited during start-up; see $LOG_DIR/$name.log:
$(tail -n 20 "$LOG_DIR/$name.log" 2>/dev/null)"
        fi
        if [ $SECONDS -ge $deadline ]; then
            die "$name did not come up within ${seconds}s; see ${LOG_DIR}/$name.log:
$(tail -n 20 "$LOG_DIR/$name.log" 2>/dev/null)"
        fi
        sleep 0.2
    done
}

# stop_service NAME: SIGTERM, then SIGKILL after 20 s, for a process this stack started.
stop_service() {
    local name=$1 pid
    if pid=$(running_pid "$name"); then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.2; done
        if alive "$pid"; then
            log "$name did not stop on SIGTERM; killing"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        log "stopped $name (pid $pid)"
    fi
    rm -f "$(pid_file "$name")"
}

# Directory holding the workspace binaries (replay-tools, commands, ...).
bin_dir() {
    if [ -n "$CHAT_BIN_DIR" ]; then echo "$CHAT_BIN_DIR"; return; fi
    local target="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
    if [ "$CHAT_CARGO_PROFILE" = dev ]; then echo "$target/debug"; else echo "$target/$CHAT_CARGO_PROFILE"; fi
}

# Deletes every Redis key under CHAT_REDIS_PREFIX (a fresh test or bench stack; Redis may be
# shared with another stack on the same port, so it outlives their data directories).
clear_redis_prefix() {
    [ -n "$CHAT_REDIS_PREFIX" ] || die "refusing to clear Redis without a key prefix"
    redis-cli -h 127.0.0.1 -p "$CHAT_REDIS_PORT" --scan --pattern "${CHAT_REDIS_PREFIX}*" \
        | xargs -r -n 500 redis-cli -h 127.0.0.1 -p "$CHAT_REDIS_PORT" DEL >/dev/null
}
