# Install and start functions, one pair per service. Sourced by `up`, `down` and `status`.

# ---------- PostgreSQL (identity, outbox, schema registry store) ----------

pg_ready() { pg_isready -q -h 127.0.0.1 -p "$CHAT_PG_PORT"; }

install_postgres() { command -v pg_isready >/dev/null 2>&1 && command -v psql >/dev/null 2>&1 || ensure_apt postgresql-client; }

start_postgres() {
    if ! pg_ready; then
        local fresh=0
        if ! compgen -G "/etc/postgresql/*/main" >/dev/null; then
            ensure_apt postgresql
            fresh=1
        fi
        local version conf port
        version=$(ls /etc/postgresql | sort -V | tail -n 1)
        conf="/etc/postgresql/$version/main"
        port=$(sed -n 's/^port[[:space:]]*=[[:space:]]*\([0-9]*\).*/\1/p' "$conf/postgresql.conf")
        [ "$port" = "$CHAT_PG_PORT" ] || die "postgres: nothing answers on port $CHAT_PG_PORT and the system cluster ($version/main) is configured for port $port"
        if [ "$fresh" -eq 1 ]; then
            # A fresh Debian cluster asks loopback clients for a password; this single-user dev
            # machine trusts loopback, as the machines this project targets are set up.
            as_root sed -i -E 's/^(host[[:space:]]+all[[:space:]]+all[[:space:]]+(127\.0\.0\.1\/32|::1\/128)[[:space:]]+)[a-z0-9-]+/\1trust/' "$conf/pg_hba.conf"
        fi
        log "postgres: starting the system cluster $version/main"
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
        mkdir -p "$RUN_DIR" && echo "$version" >"$RUN_DIR/postgres.started"
        wait_until postgres 60 pg_ready
    fi
    if ! psql -h 127.0.0.1 -p "$CHAT_PG_PORT" -U postgres -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$CHAT_PG_DATABASE'" | grep -q 1; then
        psql -q -h 127.0.0.1 -p "$CHAT_PG_PORT" -U postgres -d postgres \
            -c "CREATE DATABASE \"$CHAT_PG_DATABASE\"" 2>/dev/null || true
    fi
    psql -h 127.0.0.1 -p "$CHAT_PG_PORT" -U postgres -d "$CHAT_PG_DATABASE" -tAc "SELECT 1" >/dev/null \
        || die "postgres: cannot open database $CHAT_PG_DATABASE as user postgres on port $CHAT_PG_PORT"
}

stop_postgres() {
    if [ -f "$RUN_DIR/postgres.started" ]; then
        as_root pg_ctlcluster --skip-systemctl-redirect "$(cat "$RUN_DIR/postgres.started")" main stop || true
        rm -f "$RUN_DIR/postgres.started"
        log "stopped postgres"
    fi
}

# ---------- Redis (presence, sessions, pub/sub fast channel) ----------

redis_ping() {
    local line
    exec 3<>"/dev/tcp/127.0.0.1/$CHAT_REDIS_PORT" || return 1
    printf 'PING\r\n' >&3
    read -r -t 2 line <&3 || { exec 3>&-; return 1; }
    exec 3>&-
    [[ $line == +PONG* ]]
}

install_redis() {
    redis_ping 2>/dev/null && return 0
    command -v redis-server >/dev/null 2>&1 || ensure_apt redis-server
}

start_redis() {
    if running_pid redis >/dev/null || redis_ping 2>/dev/null; then return 0; fi
    start_bg redis "$DATA_DIR/redis" redis-server --bind 127.0.0.1 --port "$CHAT_REDIS_PORT" \
        --save "" --appendonly no --dir "$DATA_DIR/redis"
    wait_until redis 30 redis_ping
}

# ---------- Kafka-compatible broker: tansu with SQLite storage ----------

install_broker() {
    [ -x "$TANSU_BIN" ] && return 0
    ensure_apt build-essential pkg-config clang libclang-dev cmake
    log "building the tansu broker $TANSU_VERSION (about 20-25 minutes on 2 cores, once; cached in $CHAT_CACHE_DIR/tansu)"
    cargo install tansu --version "$TANSU_VERSION" --features libsql --root "$CHAT_CACHE_DIR/tansu" \
        >"$CHAT_CACHE_DIR/tansu-build.log" 2>&1 \
        || die "tansu build failed; see $CHAT_CACHE_DIR/tansu-build.log"
}

start_broker() {
    if ! running_pid broker >/dev/null; then
        wait_port_free broker "$CHAT_KAFKA_PORT" CHAT_KAFKA_PORT
        # The SQLite path is relative to the working directory.
        start_bg broker "$DATA_DIR/tansu" "$TANSU_BIN" broker \
            --listener-url "tcp://127.0.0.1:$CHAT_KAFKA_PORT" \
            --advertised-listener-url "tcp://127.0.0.1:$CHAT_KAFKA_PORT" \
            --storage-engine "sqlite://tansu.db"
        wait_until broker 30 port_open "$CHAT_KAFKA_PORT"
    fi
    # The broker does not auto-create topics, and producing to a missing one hangs.
    wait_until broker 60 "$(bin_dir)/replay-tools" --brokers "$CHAT_KAFKA_BROKERS" --timeout-secs 5 \
        topics ensure --room-partitions "$CHAT_ROOM_PARTITIONS"
}

# ---------- Schema registry (ours, Confluent-compatible, stored in PostgreSQL) ----------

registry_ready() { curl -fsS -o /dev/null "$CHAT_REGISTRY_URL/subjects"; }

start_registry() {
    local binary; binary="$(bin_dir)/schema-registry"
    restart_if_rebuilt registry "$binary"
    if ! running_pid registry >/dev/null; then
        wait_port_free registry "$CHAT_REGISTRY_PORT" CHAT_REGISTRY_PORT
        start_bg registry "$DATA_DIR/registry" env \
            CHAT_REGISTRY_LISTEN="127.0.0.1:$CHAT_REGISTRY_PORT" \
            CHAT_REGISTRY_DATABASE_URL="$CHAT_PG_URL" \
            "$binary"
        record_binary registry
    fi
    wait_until registry 30 registry_ready
}

# ---------- MongoDB-compatible server: briskdb ----------

install_mongo() {
    "$BRISKDB_VENV/bin/python" -c "import briskdb" 2>/dev/null && return 0
    python3 -m venv --help >/dev/null 2>&1 || ensure_apt python3-venv
    log "installing briskdb $BRISKDB_VERSION into $BRISKDB_VENV"
    python3 -m venv "$BRISKDB_VENV"
    "$BRISKDB_VENV/bin/pip" install -q --disable-pip-version-check --only-binary=:all: "briskdb==$BRISKDB_VERSION"
}

start_mongo() {
    if ! running_pid mongo >/dev/null; then
        wait_port_free mongo "$CHAT_MONGO_PORT" CHAT_MONGO_PORT
        start_bg mongo "$DATA_DIR/mongo" "$BRISKDB_VENV/bin/python" "$DEPLOY_DIR/briskdb_server.py" \
            --data "$DATA_DIR/mongo/db" --port "$CHAT_MONGO_PORT"
    fi
    wait_until mongo 30 port_open "$CHAT_MONGO_PORT"
}

# ---------- ClickHouse 18.16 (Debian) ----------

clickhouse_ready() { curl -fsS "$CHAT_CLICKHOUSE_URL/ping" | grep -q Ok; }

install_clickhouse() { ensure_apt clickhouse-server clickhouse-client; }

start_clickhouse() {
    if ! running_pid clickhouse >/dev/null; then
        wait_port_free clickhouse "$CHAT_CLICKHOUSE_HTTP_PORT" CHAT_CLICKHOUSE_HTTP_PORT
        local home="$DATA_DIR/clickhouse"
        mkdir -p "$home/etc" "$home/data/tmp" "$home/data/user_files" "$home/data/format_schemas" "$home/log"
        # The Debian config with data, logs and ports moved into this stack's state directory.
        sed -e "s|/var/lib/clickhouse/|$home/data/|g" \
            -e "s|/var/log/clickhouse-server/|$home/log/|g" \
            -e '/<listen_host>::1<\/listen_host>/d' \
            -e "s|<http_port>8123</http_port>|<http_port>$CHAT_CLICKHOUSE_HTTP_PORT</http_port>|" \
            -e "0,/<tcp_port>9000<\/tcp_port>/s|<tcp_port>9000</tcp_port>|<tcp_port>$CHAT_CLICKHOUSE_TCP_PORT</tcp_port>|" \
            -e "s|<interserver_http_port>9009</interserver_http_port>|<interserver_http_port>$CHAT_CLICKHOUSE_INTERSERVER_PORT</interserver_http_port>|" \
            -e "s|<users_config>users.xml</users_config>|<users_config>$home/etc/users.xml</users_config>|" \
            /etc/clickhouse-server/config.xml >"$home/etc/config.xml"
        cp /etc/clickhouse-server/users.xml "$home/etc/users.xml"
        # Analysts' dates and minutes are UTC whatever the machine's zone (config.d overrides).
        mkdir -p "$home/etc/config.d"
        echo '<yandex><timezone>UTC</timezone></yandex>' >"$home/etc/config.d/timezone.xml"
        start_bg clickhouse "$home" clickhouse-server --config-file="$home/etc/config.xml"
    fi
    wait_until clickhouse 90 clickhouse_ready
}

# ---------- commands (write API; single writer per room partition) ----------

http_ready() { curl -fsS -o /dev/null "$1"; }

# A development RSA key for signing access tokens, created once per state directory.
ensure_jwt_key() {
    [ -s "$CHAT_JWT_PRIVATE_KEY_FILE" ] && return 0
    command -v openssl >/dev/null 2>&1 || ensure_apt openssl
    mkdir -p "$(dirname "$CHAT_JWT_PRIVATE_KEY_FILE")"
    (umask 077 && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 \
        -out "$CHAT_JWT_PRIVATE_KEY_FILE" 2>/dev/null) || die "cannot generate the JWT signing key"
    log "generated a JWT signing key at $CHAT_JWT_PRIVATE_KEY_FILE"
}

start_commands() {
    ensure_jwt_key
    local binary; binary="$(bin_dir)/commands"
    restart_if_rebuilt commands "$binary"
    if ! running_pid commands >/dev/null; then
        wait_port_free commands "$CHAT_COMMANDS_PORT" CHAT_COMMANDS_PORT
        start_bg commands "$DATA_DIR/commands" env \
            CHAT_COMMANDS_LISTEN="127.0.0.1:$CHAT_COMMANDS_PORT" \
            "$binary"
        record_binary commands
    fi
    # Ready means every assigned partition caught up with the log, which takes a while on a
    # long log.
    wait_until commands 600 http_ready "$CHAT_COMMANDS_URL/readyz"
}

# ---------- projections (read models) and query-api (read API) ----------

# start_workspace_service NAME BINARY LISTEN_VAR PORT URL: one of our binaries, restarted when
# rebuilt, waited for until /readyz answers.
start_workspace_service() {
    local name=$1 binary_name=$2 listen_var=$3 port=$4 url=$5
    local binary; binary="$(bin_dir)/$binary_name"
    restart_if_rebuilt "$name" "$binary"
    if ! running_pid "$name" >/dev/null; then
        wait_port_free "$name" "$port" "${listen_var/LISTEN/PORT}"
        start_bg "$name" "$DATA_DIR/$name" env "$listen_var=127.0.0.1:$port" "$binary"
        record_binary "$name"
    fi
    wait_until "$name" 120 http_ready "$url/readyz"
}

start_projections() {
    start_workspace_service projections projections CHAT_PROJECTIONS_LISTEN "$CHAT_PROJECTIONS_PORT" "$CHAT_PROJECTIONS_URL"
}

start_query-api() {
    start_workspace_service query-api query-api CHAT_QUERY_LISTEN "$CHAT_QUERY_PORT" "$CHAT_QUERY_URL"
}

# ---------- ws-fanout (sockets) ----------

start_ws-fanout() {
    start_workspace_service ws-fanout ws-fanout CHAT_WS_LISTEN "$CHAT_WS_PORT" "$CHAT_WS_URL"
}

# ---------- nginx (the single entry point) ----------

install_nginx() { command -v nginx >/dev/null 2>&1 || ensure_apt nginx; }

nginx_bin() { command -v nginx 2>/dev/null || echo /usr/sbin/nginx; }

# Renders deploy/local/nginx.conf.template for this stack's ports. More ws-fanout nodes join the
# sticky upstream through CHAT_WS_EXTRA_PORTS (space-separated ports of nodes started by hand).
render_nginx_conf() {
    local dir=$DATA_DIR/nginx servers="" port
    mkdir -p "$dir"
    for port in $CHAT_WS_PORT $CHAT_WS_EXTRA_PORTS; do
        servers+="        server 127.0.0.1:$port;"$'\n'
    done
    local template; template=$(<"$DEPLOY_DIR/nginx.conf.template")
    template=${template//@STATE@/$dir}
    template=${template//@LOGS@/$LOG_DIR}
    template=${template//@ENTRY_PORT@/$CHAT_ENTRY_PORT}
    template=${template//@COMMANDS_PORT@/$CHAT_COMMANDS_PORT}
    template=${template//@QUERY_PORT@/$CHAT_QUERY_PORT}
    template=${template//@WS_SERVERS@/${servers%$'\n'}}
    printf '%s\n' "$template" >"$dir/nginx.conf"
}

start_nginx() {
    render_nginx_conf
    local conf=$DATA_DIR/nginx/nginx.conf
    "$(nginx_bin)" -t -q -c "$conf" -p "$DATA_DIR/nginx" -g 'daemon off;' >>"$LOG_DIR/nginx.log" 2>&1 \
        || die "nginx rejects $conf; see $LOG_DIR/nginx.log"
    if running_pid nginx >/dev/null; then
        # Picks up a changed configuration (ports, extra nodes) without dropping sockets.
        kill -HUP "$(running_pid nginx)"
    else
        wait_port_free nginx "$CHAT_ENTRY_PORT" CHAT_ENTRY_PORT
        start_bg nginx "$DATA_DIR/nginx" "$(nginx_bin)" -c "$conf" -p "$DATA_DIR/nginx" -g 'daemon off;'
    fi
    wait_until nginx 30 http_ready "$CHAT_ENTRY_URL/healthz"
}

# ---------- dispatch ----------

endpoint_of() {
    case $1 in
        postgres) echo "$CHAT_PG_URL" ;;
        redis) echo "$CHAT_REDIS_URL" ;;
        broker) echo "$CHAT_KAFKA_BROKERS" ;;
        registry) echo "$CHAT_REGISTRY_URL" ;;
        mongo) echo "$CHAT_MONGO_URL" ;;
        clickhouse) echo "$CHAT_CLICKHOUSE_URL (native 127.0.0.1:$CHAT_CLICKHOUSE_TCP_PORT)" ;;
        commands) echo "$CHAT_COMMANDS_URL" ;;
        projections) echo "$CHAT_PROJECTIONS_URL (ops only)" ;;
        query-api) echo "$CHAT_QUERY_URL" ;;
        ws-fanout) echo "${CHAT_WS_URL/http/ws}/v1/ws" ;;
        nginx) echo "$CHAT_ENTRY_URL (the single entry: /v1/ws, reads, writes)" ;;
    esac
}

ready_check() {
    case $1 in
        postgres) pg_ready ;;
        redis) redis_ping 2>/dev/null ;;
        broker) port_open "$CHAT_KAFKA_PORT" ;;
        registry) registry_ready 2>/dev/null ;;
        mongo) port_open "$CHAT_MONGO_PORT" ;;
        clickhouse) clickhouse_ready 2>/dev/null ;;
        commands) http_ready "$CHAT_COMMANDS_URL/healthz" 2>/dev/null ;;
        projections) http_ready "$CHAT_PROJECTIONS_URL/healthz" 2>/dev/null ;;
        query-api) http_ready "$CHAT_QUERY_URL/healthz" 2>/dev/null ;;
        ws-fanout) http_ready "$CHAT_WS_URL/healthz" 2>/dev/null ;;
        nginx) http_ready "$CHAT_ENTRY_URL/healthz" 2>/dev/null ;;
    esac
}
