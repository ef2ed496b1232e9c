# Install and start functions, one pair per service. Sourced by `up`, `down` and `status`.

# ---------- PostgreSQL (identity, outbox; stores FerretDB and the schema registry too) ----------

pg_ready() { pg_isready -q -h 127.0.0.1 -p "$CHAT_PG_PORT"; }

install_postgres() { command -v pg_isready >/dev/null 2>&1 && command -v psql >/dev/null 2>&1 || ensure_apt postgresql-client; }

start_postgres() {
    if ! pg_ready; then
        compgen -G "/etc/postgresql/*/main" >/dev/null || ensure_apt postgresql
        local version conf port
        version=$(ls /etc/postgresql | sort -V | tail -n 1)
        conf="/etc/postgresql/$version/main"
        port=$(sed -n 's/^port[[:space:]]*=[[:space:]]*\([0-9]*\).*/\1/p' "$conf/postgresql.conf")
        [ "$port" = "$CHAT_PG_PORT" ] || die "postgres: nothing answers on port $CHAT_PG_PORT and the system cluster ($version/main) is configured for port $port"
        # Debian's cluster asks loopback clients for a password (whether the package came with
        # the machine or was installed here); this single-user dev machine trusts loopback, as
        # the machines this project targets are set up. Done whenever the stack starts it.
        if grep -qE '^host[[:space:]]+all[[:space:]]+all[[:space:]]+(127\.0\.0\.1/32|::1/128)[[:space:]]+(md5|scram-sha-256|password)' "$conf/pg_hba.conf"; then
            log "postgres: trusting loopback clients in $conf/pg_hba.conf"
            as_root sed -i -E 's/^(host[[:space:]]+all[[:space:]]+all[[:space:]]+(127\.0\.0\.1\/32|::1\/128)[[:space:]]+)[a-z0-9-]+/\1trust/' "$conf/pg_hba.conf"
        fi
        log "postgres: starting the system cluster $version/main"
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
        mkdir -p "$RUN_DIR" && echo "$version" >"$RUN_DIR/postgres.started"
        wait_until postgres 60 pg_ready
    fi
    ensure_pg_database "$CHAT_PG_DATABASE"
}

# Creates database $1 unless it exists (concurrent creators race harmlessly), then opens it.
ensure_pg_database() {
    if ! psql -h 127.0.0.1 -p "$CHAT_PG_PORT" -U postgres -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$1'" | grep -q 1; then
        psql -q -h 127.0.0.1 -p "$CHAT_PG_PORT" -U postgres -d postgres \
            -c "CREATE DATABASE \"$1\"" 2>/dev/null || true
    fi
    psql -h 127.0.0.1 -p "$CHAT_PG_PORT" -U postgres -d "$1" -tAc "SELECT 1" >/dev/null \
        || die "postgres: cannot open database $1 as user postgres on port $CHAT_PG_PORT"
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

# ---------- Apache Kafka (KRaft) from Maven Central ----------
#
# The broker's jars are resolved once by Maven (deploy/local/kafka/pom.xml) into
# $CHAT_CACHE_DIR/kafka/<pom hash>/lib and run on the machine's JDK: no tarball, nothing built.
# One combined broker+controller by default; CHAT_KAFKA_NODES=3 starts a three-node KRaft
# cluster on loopback (node n: client port kafka_port n, controller port kafka_controller_port n),
# whose topics get replication factor 3 and min.insync.replicas 2. Each node is its own service
# process `broker-<n>` (pid file, log file), so a test can kill exactly one.

kafka_home() { echo "$CHAT_CACHE_DIR/kafka/$(sha256sum "$DEPLOY_DIR/kafka/pom.xml" | cut -c1-12)"; }
kafka_version() { sed -n 's|.*<kafka.version>\(.*\)</kafka.version>.*|\1|p' "$DEPLOY_DIR/kafka/pom.xml"; }
kafka_nodes() { seq 1 "$CHAT_KAFKA_NODES"; }
kafka_port() { local ports=($CHAT_KAFKA_PORTS); echo "${ports[$(($1 - 1))]}"; }
kafka_controller_port() { local ports=($CHAT_KAFKA_CONTROLLER_PORTS); echo "${ports[$(($1 - 1))]}"; }

install_broker() {
    command -v java >/dev/null 2>&1 || ensure_apt openjdk-17-jre-headless
    maven_resolve kafka "Apache Kafka $(kafka_version)" "$(kafka_home)" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=@HOME@/lib
}

# maven_resolve NAME WHAT HOME GOAL [ARGS...]: runs the Maven GOAL on deploy/local/NAME/pom.xml
# once, into HOME (@HOME@ in ARGS stands for the directory being filled), with the project's own
# directory for Maven's download cache (nothing lands in ~/.m2). HOME/.complete marks it done.
maven_resolve() {
    local name=$1 what=$2 home=$3 arg args=()
    shift 3
    [ -f "$home/.complete" ] && return 0
    command -v mvn >/dev/null 2>&1 || ensure_apt maven
    log "resolving $what from Maven Central into $home (once)"
    rm -rf "$home.partial"
    mkdir -p "$home.partial"
    for arg in "$@"; do args+=("${arg//@HOME@/$home.partial}"); done
    (cd "$home.partial" && mvn -q -B -f "$DEPLOY_DIR/$name/pom.xml" \
        -Dmaven.repo.local="$CHAT_CACHE_DIR/maven" "${args[@]}") \
        >"$CHAT_CACHE_DIR/$name-resolve.log" 2>&1 \
        || die "resolving $what failed; see $CHAT_CACHE_DIR/$name-resolve.log"
    touch "$home.partial/.complete"
    rm -rf "$home"
    mv "$home.partial" "$home"
}

kafka_java() { java -cp "$(kafka_home)/lib/*" "$@"; }

# The server.properties of node N.
kafka_properties() {
    local n=$1 voters="" m nodes=$CHAT_KAFKA_NODES
    for m in $(kafka_nodes); do voters+="${voters:+,}$m@127.0.0.1:$(kafka_controller_port "$m")"; done
    local min_isr=1
    [ "$nodes" -ge 3 ] && min_isr=2
    cat <<PROPS
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$(kafka_port "$n"),CONTROLLER://127.0.0.1:$(kafka_controller_port "$n")
advertised.listeners=PLAINTEXT://127.0.0.1:$(kafka_port "$n")
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA_DIR/kafka/node-$n/data
# Topics are created explicitly (replay-tools topics ensure) with their own settings.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=$nodes
min.insync.replicas=$min_isr
unclean.leader.election.enable=false
offsets.topic.replication.factor=$nodes
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=$nodes
transaction.state.log.min.isr=$min_isr
transaction.state.log.num.partitions=12
share.coordinator.state.topic.replication.factor=$nodes
share.coordinator.state.topic.min.isr=$min_isr
# Tests start many groups; the 3 s default delays every first join.
group.initial.rebalance.delay.ms=0
# A dead node is noticed in seconds, not the default 9 s (broker-loss tests).
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=4000
num.network.threads=2
num.io.threads=4
PROPS
}

kafka_ready() {
    local n
    for n in $(kafka_nodes); do port_open "$(kafka_port "$n")" || return 1; done
}

start_broker() {
    local dir=$DATA_DIR/kafka n heap
    mkdir -p "$dir"
    [ -s "$dir/cluster-id" ] || kafka_java kafka.tools.StorageTool random-uuid | tail -n 1 >"$dir/cluster-id"
    heap=$CHAT_KAFKA_HEAP
    for n in $(kafka_nodes); do
        running_pid "broker-$n" >/dev/null && continue
        wait_port_free "broker-$n" "$(kafka_port "$n")" CHAT_KAFKA_PORTS
        wait_port_free "broker-$n" "$(kafka_controller_port "$n")" CHAT_KAFKA_CONTROLLER_PORTS
        mkdir -p "$dir/node-$n"
        kafka_properties "$n" >"$dir/node-$n/server.properties"
        if [ ! -f "$dir/node-$n/data/meta.properties" ]; then
            kafka_java kafka.tools.StorageTool format --ignore-formatted -t "$(cat "$dir/cluster-id")" \
                -c "$dir/node-$n/server.properties" >>"$LOG_DIR/broker-$n.log" 2>&1 \
                || die "broker-$n: formatting its storage failed; see $LOG_DIR/broker-$n.log"
        fi
        # Kafka's own JVM settings (G1, short pauses), with a heap fit for this machine.
        start_bg "broker-$n" "$dir/node-$n" java -Xms256m "-Xmx$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
            -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
            "-Dlog4j2.configurationFile=$DEPLOY_DIR/kafka/log4j2.yaml" \
            -cp "$(kafka_home)/lib/*" kafka.Kafka "$dir/node-$n/server.properties"
    done
    for n in $(kafka_nodes); do
        wait_until "broker-$n" 120 port_open "$(kafka_port "$n")"
    done
    # Creating topics also proves the cluster answers (a controller quorum, a leader per
    # partition); the broker does not create them by itself.
    wait_until broker-1 120 "$(bin_dir)/replay-tools" --brokers "$CHAT_KAFKA_BROKERS" --timeout-secs 10 \
        topics ensure --room-partitions "$CHAT_ROOM_PARTITIONS" --replication-factor "$CHAT_KAFKA_REPLICATION"
}

# Every node at once: a node waiting for its peers' controlled shutdown would otherwise sit out
# the whole grace period of each.
stop_broker() {
    local n pids=() pid
    for n in $(kafka_nodes); do
        pid=$(running_pid "broker-$n") && { kill -TERM "$pid" 2>/dev/null || true; pids+=("$n:$pid"); }
    done
    for entry in "${pids[@]}"; do
        n=${entry%%:*}; pid=${entry#*:}
        for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.2; done
        if alive "$pid"; then log "broker-$n did not stop on SIGTERM; killing"; kill -KILL "$pid" 2>/dev/null || true; fi
        log "stopped broker-$n (pid $pid)"
        rm -f "$(pid_file "broker-$n")"
    done
}

# ---------- Schema registry: Apicurio Registry 3 (Confluent-compatible API) on PostgreSQL ----------
#
# Its Quarkus distribution is resolved once by Maven (deploy/local/apicurio/pom.xml) and unpacked
# into $CHAT_CACHE_DIR/apicurio/<pom hash>; it runs on a JDK >= 21 (Apicurio 3 is built for
# Java 21; the machines carry a second, newer JDK beside the system's 17) and stores in a
# PostgreSQL database of its own, $CHAT_REGISTRY_PG_DATABASE. Clients use its Confluent API,
# CHAT_REGISTRY_URL = http://127.0.0.1:$CHAT_REGISTRY_PORT/apis/ccompat/v7.

registry_home() { echo "$CHAT_CACHE_DIR/apicurio/$(sha256sum "$DEPLOY_DIR/apicurio/pom.xml" | cut -c1-12)"; }
registry_version() { sed -n 's|.*<apicurio.version>\(.*\)</apicurio.version>.*|\1|p' "$DEPLOY_DIR/apicurio/pom.xml"; }
registry_ready() { curl -fsS -o /dev/null "$CHAT_REGISTRY_URL/subjects"; }

java_major() { "$1" -version 2>&1 | sed -n '1s/.*version "\([0-9]*\).*/\1/p'; }

# The first java of major version >= 21: CHAT_REGISTRY_JAVA, JAVA_HOME, the PATH, /usr/lib/jvm.
registry_java() {
    local candidate major
    for candidate in ${CHAT_REGISTRY_JAVA:-} ${JAVA_HOME:+$JAVA_HOME/bin/java} "$(command -v java || true)" \
        $(ls -d /usr/lib/jvm/*/bin/java 2>/dev/null | sort -rV); do
        [ -x "$candidate" ] || continue
        major=$(java_major "$candidate")
        [ -n "$major" ] && [ "$major" -ge 21 ] && { echo "$candidate"; return 0; }
    done
    return 1
}

install_registry() {
    # Debian 12 packages no JDK 21; the machines come with a Temurin JDK beside it.
    registry_java >/dev/null \
        || die "registry: Apicurio Registry 3 needs a JDK >= 21 and none was found (set CHAT_REGISTRY_JAVA to its java)"
    maven_resolve apicurio "Apicurio Registry $(registry_version)" "$(registry_home)" \
        dependency:unpack-dependencies -DexcludeTransitive=true -DoutputDirectory=@HOME@ \
        -DmarkersDirectory=@HOME@/.markers
    [ -f "$(registry_home)/quarkus-run.jar" ] || die "registry: no quarkus-run.jar in $(registry_home)"
}

start_registry() {
    if ! running_pid registry >/dev/null; then
        pg_ready || die "registry: Apicurio stores in PostgreSQL, which does not answer on port $CHAT_PG_PORT (start postgres first)"
        ensure_pg_database "$CHAT_REGISTRY_PG_DATABASE"
        wait_port_free registry "$CHAT_REGISTRY_PORT" CHAT_REGISTRY_PORT
        mkdir -p "$DATA_DIR/registry"
        # Registrations are rare; a small heap and pool leave the machine to the platform. Its
        # management interface (health, metrics; enabled at build time) would take port 9000,
        # ClickHouse's: it gets a free loopback port instead.
        start_bg registry "$DATA_DIR/registry" env \
            APICURIO_STORAGE_KIND=sql APICURIO_STORAGE_SQL_KIND=postgresql \
            APICURIO_DATASOURCE_URL="jdbc:postgresql://127.0.0.1:$CHAT_PG_PORT/$CHAT_REGISTRY_PG_DATABASE" \
            APICURIO_DATASOURCE_USERNAME=postgres APICURIO_DATASOURCE_PASSWORD=unused \
            APICURIO_DATASOURCE_JDBC_INITIAL_SIZE=1 APICURIO_DATASOURCE_JDBC_MIN_SIZE=1 \
            APICURIO_DATASOURCE_JDBC_MAX_SIZE=5 \
            QUARKUS_HTTP_HOST=127.0.0.1 QUARKUS_HTTP_PORT="$CHAT_REGISTRY_PORT" \
            QUARKUS_MANAGEMENT_HOST=127.0.0.1 QUARKUS_MANAGEMENT_PORT=0 \
            "$(registry_java)" -Xms64m -Xmx384m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
            -jar "$(registry_home)/quarkus-run.jar"
    fi
    wait_until registry 90 registry_ready
    # Confluent's default rule, which our schema evolution is checked against (Apicurio's
    # default is no rule at all).
    curl -fsS -o /dev/null -X PUT -H 'content-type: application/json' \
        -d '{"compatibility":"BACKWARD"}' "$CHAT_REGISTRY_URL/config" \
        || die "registry: cannot set the global BACKWARD compatibility rule"
}

# ---------- MongoDB wire protocol: FerretDB 1.24 on PostgreSQL ----------
#
# Built once from the Go module proxy: a small main around FerretDB's embeddable package
# (deploy/local/ferretdb; the plain `go install` binary panics at start), into
# $CHAT_CACHE_DIR/ferretdb/<source hash>/ferretdb. It stores in its own PostgreSQL database,
# $CHAT_FERRETDB_PG_DATABASE, where equality-indexes.sql makes MongoDB indexes serve FerretDB's
# pushed-down equality filters.

ferretdb_bin() {
    local hash
    hash=$(cat "$DEPLOY_DIR"/ferretdb/go.mod "$DEPLOY_DIR"/ferretdb/go.sum "$DEPLOY_DIR"/ferretdb/main.go | sha256sum | cut -c1-12)
    echo "$CHAT_CACHE_DIR/ferretdb/$hash/ferretdb"
}

install_mongo() {
    local bin; bin=$(ferretdb_bin)
    [ -x "$bin" ] && return 0
    # Debian's golang-go is too old for FerretDB (Go >= 1.24); the machines come with Go.
    command -v go >/dev/null 2>&1 || die "mongo: building FerretDB needs Go >= 1.24 on the PATH"
    log "building FerretDB (Go module proxy) into $(dirname "$bin") (once, about two minutes)"
    mkdir -p "$(dirname "$bin")"
    (cd "$DEPLOY_DIR/ferretdb" && GOTOOLCHAIN=local GOFLAGS=-mod=readonly \
        GOMODCACHE="$CHAT_CACHE_DIR/go/mod" GOCACHE="$CHAT_CACHE_DIR/go/build" \
        go build -trimpath -o "$bin.partial" .) >"$CHAT_CACHE_DIR/ferretdb-build.log" 2>&1 \
        || die "building FerretDB failed; see $CHAT_CACHE_DIR/ferretdb-build.log"
    mv "$bin.partial" "$bin"
}

start_mongo() {
    if ! running_pid mongo >/dev/null; then
        pg_ready || die "mongo: FerretDB stores in PostgreSQL, which does not answer on port $CHAT_PG_PORT (start postgres first)"
        ensure_pg_database "$CHAT_FERRETDB_PG_DATABASE"
        # The read models are rebuilt from the log at will, so their store need not wait for
        # each commit's WAL flush (an OS crash may lose the last moment of writes, data and
        # checkpoints together, which the projectors re-apply; a process crash loses nothing).
        # FerretDB asks `WHERE _jsonb->$1 @> $2` as a prepared statement. A generic plan cannot
        # match the index expression `_jsonb->'_id'`, and on a small table the planner prefers
        # a scan, not knowing that each row's key is read out of a TOASTed document: a lookup
        # by _id in a 200-document collection of 50 KB documents took 6-10 ms in PostgreSQL
        # (seq scan) and 0.2 ms with its index. So: custom plans always, and operators priced
        # as what they are here (reading a jsonb value), which makes the indexes win.
        psql -q -h 127.0.0.1 -p "$CHAT_PG_PORT" -U postgres -d postgres \
            -c "ALTER DATABASE \"$CHAT_FERRETDB_PG_DATABASE\" SET synchronous_commit = off" \
            -c "ALTER DATABASE \"$CHAT_FERRETDB_PG_DATABASE\" SET plan_cache_mode = force_custom_plan" \
            -c "ALTER DATABASE \"$CHAT_FERRETDB_PG_DATABASE\" SET cpu_operator_cost = 0.05" >/dev/null \
            || die "mongo: cannot configure database $CHAT_FERRETDB_PG_DATABASE"
        psql -q -h 127.0.0.1 -p "$CHAT_PG_PORT" -U postgres -d "$CHAT_FERRETDB_PG_DATABASE" \
            -v ON_ERROR_STOP=1 -f "$DEPLOY_DIR/ferretdb/equality-indexes.sql" >/dev/null 2>&1 \
            || die "mongo: cannot install equality-indexes.sql into $CHAT_FERRETDB_PG_DATABASE"
        wait_port_free mongo "$CHAT_MONGO_PORT" CHAT_MONGO_PORT
        # FerretDB's CPU under a projector's inserts goes largely to Go's garbage collector
        # (a quarter of its samples in `perf`); a higher GOGC trades some memory for it.
        start_bg mongo "$DATA_DIR/mongo" env GOGC="$CHAT_FERRETDB_GOGC" "$(ferretdb_bin)" -listen "127.0.0.1:$CHAT_MONGO_PORT" \
            -postgresql-url "postgres://postgres@127.0.0.1:$CHAT_PG_PORT/$CHAT_FERRETDB_PG_DATABASE?pool_max_conns=$CHAT_FERRETDB_POOL"
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
    ensure_internal_secret
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
    write_openapi "$DATA_DIR/openapi.json"
    start_workspace_service query-api query-api CHAT_QUERY_LISTEN "$CHAT_QUERY_PORT" "$CHAT_QUERY_URL"
}

# ---------- ws-fanout (sockets) ----------

start_ws-fanout() {
    start_workspace_service ws-fanout ws-fanout CHAT_WS_LISTEN "$CHAT_WS_PORT" "$CHAT_WS_URL"
}

# ---------- nginx (the single entry point) ----------

install_nginx() { command -v nginx >/dev/null 2>&1 || ensure_apt nginx; }

# ---------- coturn (TURN for calls) ----------
# Debian's coturn with REST-API credentials: the secret is shared with the signaling tier only
# (a file of this stack's, made once); listens and relays on loopback, no TLS here.

install_coturn() { command -v turnserver >/dev/null 2>&1 || ensure_apt coturn; }

# A random secret in a file of its own (mode 600), made once per stack: <file> <what it is>.
ensure_secret() {
    [ -s "$1" ] && return 0
    command -v openssl >/dev/null 2>&1 || ensure_apt openssl
    mkdir -p "$(dirname "$1")"
    (umask 077 && openssl rand -hex 32 >"$1") || die "cannot make the $2"
    log "generated the $2 at $1"
}

ensure_turn_secret() {
    ensure_secret "$CHAT_TURN_SECRET_FILE" "TURN secret"
}

# Admits the tiers' requests to each other on the platform's own behalf (platform::internal).
ensure_internal_secret() {
    ensure_secret "$CHAT_INTERNAL_SECRET_FILE" "internal secret"
}

start_coturn() {
    ensure_turn_secret
    running_pid coturn >/dev/null && return 0
    local dir=$DATA_DIR/coturn
    mkdir -p "$dir"
    # `allow-loopback-peers` (peers on this machine, as every test's are) needs `no-cli`.
    (umask 077 && cat >"$dir/turnserver.conf" <<EOF
listening-ip=127.0.0.1
relay-ip=127.0.0.1
listening-port=$CHAT_TURN_PORT
min-port=$CHAT_TURN_MIN_PORT
max-port=$CHAT_TURN_MAX_PORT
use-auth-secret
static-auth-secret=$(cat "$CHAT_TURN_SECRET_FILE")
realm=chat.local
fingerprint
no-tls
no-dtls
no-cli
allow-loopback-peers
no-multicast-peers
simple-log
log-file=stdout
pidfile=$dir/turnserver.pid
EOF
    )
    wait_port_free coturn "$CHAT_TURN_PORT" CHAT_TURN_PORT
    start_bg coturn "$dir" "$(command -v turnserver || echo /usr/bin/turnserver)" -c "$dir/turnserver.conf"
    wait_until coturn 30 port_open "$CHAT_TURN_PORT"
}

# ---------- Janus (the SFU of group calls) ----------
# Debian's janus with only what the platform uses: the VideoRoom plugin and the HTTP transport,
# on loopback at a port of our choosing (Janus's 8088 collides with other defaults). Every
# request needs the API secret (a file of this stack's, shared with signaling only), which is
# also VideoRoom's admin key: rooms exist only when signaling makes them. Media on
# CHAT_JANUS_MIN_PORT..MAX_PORT, gathered on every interface but loopback (Janus skips it), or
# only on those CHAT_JANUS_ICE_ENFORCE names.

install_janus() { command -v janus >/dev/null 2>&1 || ensure_apt janus; }

# Where Debian put Janus's plugins (a multiarch path).
janus_lib() {
    local so
    so=$(dpkg -L janus 2>/dev/null | grep '/plugins/libjanus_videoroom.so$' | head -1)
    [ -n "$so" ] || die "janus is installed without its VideoRoom plugin"
    dirname "$(dirname "$so")"
}

# The modules of a Janus folder except <keep>, comma-separated (what Janus's `disable` takes).
janus_all_but() {
    local folder=$1 keep=$2
    (cd "$folder" && ls -1 -- *.so 2>/dev/null) | grep -vx "$keep" | paste -sd, -
}

ensure_janus_secret() {
    ensure_secret "$CHAT_JANUS_SECRET_FILE" "Janus API secret"
}

start_janus() {
    ensure_janus_secret
    running_pid janus >/dev/null && return 0
    local dir=$DATA_DIR/janus lib secret enforce=""
    lib=$(janus_lib) || exit 1
    secret=$(cat "$CHAT_JANUS_SECRET_FILE")
    [ -n "$CHAT_JANUS_ICE_ENFORCE" ] && enforce="ice_enforce_list = \"$CHAT_JANUS_ICE_ENFORCE\""
    mkdir -p "$dir"
    (umask 077
    cat >"$dir/janus.jcfg" <<JCFG
general: {
	configs_folder = "$dir"
	plugins_folder = "$lib/plugins"
	transports_folder = "$lib/transports"
	events_folder = "$lib/events"
	loggers_folder = "$lib/loggers"
	debug_level = 4
	api_secret = "$secret"
	admin_secret = "$secret"
	# Sessions belong to signaling, which ends them when a participant leaves or a call ends.
	session_timeout = 0
	server_name = "chat-sfu"
}
media: {
	rtp_port_range = "$CHAT_JANUS_MIN_PORT-$CHAT_JANUS_MAX_PORT"
}
nat: {
	$enforce
	ice_ignore_list = "vmnet"
}
plugins: {
	disable = "$(janus_all_but "$lib/plugins" libjanus_videoroom.so)"
}
transports: {
	disable = "$(janus_all_but "$lib/transports" libjanus_http.so)"
}
loggers: {
	disable = "$(janus_all_but "$lib/loggers" none)"
}
events: {
	broadcast = false
	disable = "$(janus_all_but "$lib/events" none)"
}
JCFG
    cat >"$dir/janus.transport.http.jcfg" <<JCFG
general: {
	json = "compact"
	base_path = "/janus"
	http = true
	port = $CHAT_JANUS_PORT
	ip = "127.0.0.1"
	https = false
}
admin: {
	admin_http = false
}
JCFG
    cat >"$dir/janus.plugin.videoroom.jcfg" <<JCFG
general: {
	admin_key = "$secret"
	string_ids = true
}
JCFG
    )
    wait_port_free janus "$CHAT_JANUS_PORT" CHAT_JANUS_PORT
    start_bg janus "$dir" "$(command -v janus || echo /usr/bin/janus)" \
        -C "$dir/janus.jcfg" -F "$dir" --disable-colors
    wait_until janus 30 janus_ready
}

janus_ready() {
    curl -fsS -m 2 -X POST "$CHAT_JANUS_URL" \
        -d '{"janus":"info","transaction":"ready"}' 2>/dev/null | grep -q '"server_info"'
}

start_signaling() {
    ensure_turn_secret
    ensure_internal_secret
    ensure_janus_secret
    start_workspace_service signaling signaling CHAT_SIGNALING_LISTEN "$CHAT_SIGNALING_PORT" "$CHAT_SIGNALING_URL"
}

nginx_bin() { command -v nginx 2>/dev/null || echo /usr/sbin/nginx; }

# ---------- the web client (web/) ----------
# Its npm packages are installed once per lock file outside the repository
# ($CHAT_CACHE_DIR/web/modules-<lock hash>; web/node_modules links there unless a developer made
# a directory of their own), and it is built once per state of its sources into
# $CHAT_CACHE_DIR/web/dist-<sources hash>, which nginx serves at /.

web_dir() { echo "$REPO_ROOT/web"; }

# Hash of what the bundle is made from (not the tests or screenshots).
web_sources_hash() {
    local dir; dir=$(web_dir)
    (cd "$dir" && find index.html package.json package-lock.json tsconfig.json vite.config.ts src \
        -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16
}

install_web() {
    local dir lock modules; dir=$(web_dir)
    command -v npm >/dev/null 2>&1 || ensure_apt nodejs npm
    lock=$(sha256sum "$dir/package-lock.json" | cut -c1-12)
    modules="$CHAT_CACHE_DIR/web/modules-$lock"
    if [ ! -f "$modules/.installed" ]; then
        log "installing the web client's npm packages into $modules"
        rm -rf "$modules"
        mkdir -p "$modules"
        cp "$dir/package.json" "$dir/package-lock.json" "$modules/"
        (cd "$modules" && npm ci --no-audit --no-fund --silent) || die "npm ci failed for web/"
        touch "$modules/.installed"
    fi
    if [ -d "$dir/node_modules" ] && [ ! -L "$dir/node_modules" ]; then
        return 0 # a developer's own install
    fi
    ln -sfn "$modules/node_modules" "$dir/node_modules"
}

# Prints the directory of the built client, building it when its sources changed.
web_root() {
    local dir out; dir=$(web_dir)
    out="$CHAT_CACHE_DIR/web/dist-$(web_sources_hash)"
    if [ ! -f "$out/index.html" ]; then
        log "building the web client into $out"
        (cd "$dir" && ./node_modules/.bin/tsc --noEmit \
            && CHAT_WEB_OUT="$out" ./node_modules/.bin/vite build --logLevel warn >&2) \
            || die "the web client does not build (see above)"
        # Builds of earlier sources go after a day (another stack may still serve one today).
        find "$CHAT_CACHE_DIR/web" -maxdepth 1 -name 'dist-*' ! -path "$out" -mtime +0 \
            -exec rm -rf {} + 2>/dev/null || true
    fi
    echo "$out"
}

# Renders deploy/local/nginx.conf.template for this stack's ports. More ws-fanout nodes join the
# sticky upstream through CHAT_WS_EXTRA_PORTS (space-separated ports of nodes started by hand).
render_nginx_conf() {
    local dir=$DATA_DIR/nginx servers="" port
    mkdir -p "$dir"
    for port in $CHAT_WS_PORT $CHAT_WS_EXTRA_PORTS; do
        servers+="        server 127.0.0.1:$port;"$'\n'
    done
    # `user` means something only to a master started as root (else nginx warns).
    local user_line=""
    [ "$(id -u)" -eq 0 ] && user_line="user root;"
    render_template "$DEPLOY_DIR/nginx.conf.template" "$dir/nginx.conf" \
        STATE "$dir" LOGS "$LOG_DIR" ENTRY_PORT "$CHAT_ENTRY_PORT" \
        COMMANDS_PORT "$CHAT_COMMANDS_PORT" QUERY_PORT "$CHAT_QUERY_PORT" \
        SIGNALING_PORT "$CHAT_SIGNALING_PORT" WS_SERVERS "${servers%$'\n'}" \
        WEB_ROOT "$WEB_ROOT" USER_LINE "$user_line"
}

# render_template TEMPLATE OUTPUT [NAME VALUE]...: the template with every @NAME@ replaced.
render_template() {
    local text out=$2
    text=$(<"$1")
    shift 2
    while [ $# -ge 2 ]; do
        text=${text//@$1@/$2}
        shift 2
    done
    printf '%s\n' "$text" >"$out"
}

# The platform's OpenAPI document, served by query-api at /v1/openapi.json (CHAT_OPENAPI_FILE):
# each tier prints its part (derived from its routes), the read tier's binary merges the other
# two into its own.
write_openapi() {
    local out=$1 bin; bin=$(bin_dir)
    "$bin/commands" --openapi >"$out.commands" \
        && "$bin/ws-fanout" --openapi >"$out.ws-fanout" \
        && "$bin/signaling" --openapi >"$out.signaling" \
        && "$bin/query-api" --openapi "$out.commands" "$out.ws-fanout" "$out.signaling" >"$out.tmp" \
        || die "cannot write the OpenAPI document (are the workspace binaries built?)"
    mv "$out.tmp" "$out"
    rm -f "$out.commands" "$out.ws-fanout" "$out.signaling"
}

start_nginx() {
    install_web
    WEB_ROOT=$(web_root) || exit 1
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

# ---------- monitoring: Prometheus, Alertmanager, the node and lag exporters ----------
# Debian's prometheus, prometheus-alertmanager and prometheus-node-exporter, each run here under
# this stack's state directory and ports (the packages' own services are not used); the lag
# exporter is `replay-tools serve-lag` (consumer groups' lag, seen from outside the consumers).
# Rules, Alertmanager's routes and the Grafana dashboards: deploy/monitoring.

MONITORING_DIR="$REPO_ROOT/deploy/monitoring"

install_prometheus() { ensure_apt prometheus; }
install_alertmanager() { ensure_apt prometheus-alertmanager; }
install_node-exporter() { ensure_apt prometheus-node-exporter; }

start_node-exporter() {
    running_pid node-exporter >/dev/null && return 0
    wait_port_free node-exporter "$CHAT_NODE_EXPORTER_PORT" CHAT_NODE_EXPORTER_PORT
    # The machine's memory, CPU, disks and network; nothing that needs root.
    start_bg node-exporter "$DATA_DIR/node-exporter" /usr/bin/prometheus-node-exporter \
        "--web.listen-address=127.0.0.1:$CHAT_NODE_EXPORTER_PORT" \
        --collector.disable-defaults --collector.cpu --collector.meminfo --collector.loadavg \
        --collector.filesystem --collector.netdev --collector.diskstats
    wait_until node-exporter 30 http_ready "http://127.0.0.1:$CHAT_NODE_EXPORTER_PORT/metrics"
}

start_lag-exporter() {
    local binary; binary="$(bin_dir)/replay-tools"
    restart_if_rebuilt lag-exporter "$binary"
    if ! running_pid lag-exporter >/dev/null; then
        wait_port_free lag-exporter "$CHAT_LAG_EXPORTER_PORT" CHAT_LAG_EXPORTER_PORT
        start_bg lag-exporter "$DATA_DIR/lag-exporter" "$binary" --brokers "$CHAT_KAFKA_BROKERS" \
            serve-lag --listen "127.0.0.1:$CHAT_LAG_EXPORTER_PORT"
        record_binary lag-exporter
    fi
    wait_until lag-exporter 60 http_ready "$CHAT_LAG_EXPORTER_URL/metrics"
}

start_alertmanager() {
    running_pid alertmanager >/dev/null && return 0
    wait_port_free alertmanager "$CHAT_ALERTMANAGER_PORT" CHAT_ALERTMANAGER_PORT
    # One instance: no cluster port (the default would take 9094 on every interface).
    start_bg alertmanager "$DATA_DIR/alertmanager" /usr/bin/prometheus-alertmanager \
        "--config.file=$MONITORING_DIR/alertmanager.yml" \
        "--storage.path=$DATA_DIR/alertmanager" \
        "--web.listen-address=127.0.0.1:$CHAT_ALERTMANAGER_PORT" \
        --cluster.listen-address=
    wait_until alertmanager 30 http_ready "$CHAT_ALERTMANAGER_URL/-/ready"
}

# Renders deploy/monitoring/prometheus.yml.template for this stack's ports.
render_prometheus_conf() {
    local dir=$DATA_DIR/prometheus targets="" port
    mkdir -p "$dir"
    for port in $CHAT_WS_PORT $CHAT_WS_EXTRA_PORTS; do
        targets+="${targets:+, }'127.0.0.1:$port'"
    done
    render_template "$MONITORING_DIR/prometheus.yml.template" "$dir/prometheus.yml" \
        SCRAPE_INTERVAL "$CHAT_SCRAPE_INTERVAL" STACK "$(basename "$CHAT_STATE_DIR")" \
        RULES "$MONITORING_DIR/rules.yml" ALERTMANAGER_PORT "$CHAT_ALERTMANAGER_PORT" \
        PROMETHEUS_PORT "$CHAT_PROMETHEUS_PORT" NODE_EXPORTER_PORT "$CHAT_NODE_EXPORTER_PORT" \
        LAG_EXPORTER_PORT "$CHAT_LAG_EXPORTER_PORT" COMMANDS_PORT "$CHAT_COMMANDS_PORT" \
        QUERY_PORT "$CHAT_QUERY_PORT" PROJECTIONS_PORT "$CHAT_PROJECTIONS_PORT" \
        SIGNALING_PORT "$CHAT_SIGNALING_PORT" WS_TARGETS "$targets"
}

start_prometheus() {
    render_prometheus_conf
    local conf=$DATA_DIR/prometheus/prometheus.yml
    promtool check config "$conf" >>"$LOG_DIR/prometheus.log" 2>&1 \
        || die "Prometheus rejects $conf; see $LOG_DIR/prometheus.log"
    if running_pid prometheus >/dev/null; then
        # Picks up changed targets and rules.
        kill -HUP "$(running_pid prometheus)"
    else
        wait_port_free prometheus "$CHAT_PROMETHEUS_PORT" CHAT_PROMETHEUS_PORT
        # Two days of samples are plenty on a development machine.
        start_bg prometheus "$DATA_DIR/prometheus" /usr/bin/prometheus \
            "--config.file=$conf" "--storage.tsdb.path=$DATA_DIR/prometheus/data" \
            --storage.tsdb.retention.time=2d \
            "--web.listen-address=127.0.0.1:$CHAT_PROMETHEUS_PORT"
    fi
    wait_until prometheus 60 http_ready "$CHAT_PROMETHEUS_URL/-/ready"
}

# ---------- dispatch ----------

endpoint_of() {
    case $1 in
        postgres) echo "$CHAT_PG_URL" ;;
        redis) echo "$CHAT_REDIS_URL" ;;
        broker) echo "$CHAT_KAFKA_BROKERS (Apache Kafka $(kafka_version), $CHAT_KAFKA_NODES node(s))" ;;
        registry) echo "$CHAT_REGISTRY_URL (Apicurio Registry $(registry_version), PostgreSQL database $CHAT_REGISTRY_PG_DATABASE)" ;;
        mongo) echo "$CHAT_MONGO_URL (FerretDB on PostgreSQL database $CHAT_FERRETDB_PG_DATABASE)" ;;
        clickhouse) echo "$CHAT_CLICKHOUSE_URL (native 127.0.0.1:$CHAT_CLICKHOUSE_TCP_PORT)" ;;
        commands) echo "$CHAT_COMMANDS_URL" ;;
        projections) echo "$CHAT_PROJECTIONS_URL (ops only)" ;;
        query-api) echo "$CHAT_QUERY_URL" ;;
        ws-fanout) echo "${CHAT_WS_URL/http/ws}/v1/ws" ;;
        coturn) echo "turn:127.0.0.1:$CHAT_TURN_PORT (coturn $(turnserver --version 2>/dev/null | head -1), relays $CHAT_TURN_MIN_PORT-$CHAT_TURN_MAX_PORT)" ;;
        janus) echo "$CHAT_JANUS_URL (Janus $(dpkg-query -W -f='${Version}' janus 2>/dev/null), VideoRoom; media $CHAT_JANUS_MIN_PORT-$CHAT_JANUS_MAX_PORT${CHAT_JANUS_ICE_ENFORCE:+ on $CHAT_JANUS_ICE_ENFORCE})" ;;
        signaling) echo "$CHAT_SIGNALING_URL" ;;
        nginx) echo "$CHAT_ENTRY_URL (the single entry: open it in a browser for the app; /v1/ws, reads, writes)" ;;
        node-exporter) echo "http://127.0.0.1:$CHAT_NODE_EXPORTER_PORT/metrics (the machine)" ;;
        lag-exporter) echo "$CHAT_LAG_EXPORTER_URL/metrics (consumer groups' lag)" ;;
        alertmanager) echo "$CHAT_ALERTMANAGER_URL (alerts: open it in a browser)" ;;
        prometheus) echo "$CHAT_PROMETHEUS_URL (metrics, rules, targets: open it in a browser)" ;;
    esac
}

ready_check() {
    case $1 in
        postgres) pg_ready ;;
        redis) redis_ping 2>/dev/null ;;
        broker) kafka_ready ;;
        registry) registry_ready 2>/dev/null ;;
        mongo) port_open "$CHAT_MONGO_PORT" ;;
        clickhouse) clickhouse_ready 2>/dev/null ;;
        commands) http_ready "$CHAT_COMMANDS_URL/healthz" 2>/dev/null ;;
        projections) http_ready "$CHAT_PROJECTIONS_URL/healthz" 2>/dev/null ;;
        query-api) http_ready "$CHAT_QUERY_URL/healthz" 2>/dev/null ;;
        ws-fanout) http_ready "$CHAT_WS_URL/healthz" 2>/dev/null ;;
        coturn) port_open "$CHAT_TURN_PORT" ;;
        janus) janus_ready ;;
        signaling) http_ready "$CHAT_SIGNALING_URL/healthz" 2>/dev/null ;;
        nginx) http_ready "$CHAT_ENTRY_URL/healthz" 2>/dev/null ;;
        node-exporter) http_ready "http://127.0.0.1:$CHAT_NODE_EXPORTER_PORT/metrics" 2>/dev/null ;;
        lag-exporter) http_ready "$CHAT_LAG_EXPORTER_URL/metrics" 2>/dev/null ;;
        alertmanager) http_ready "$CHAT_ALERTMANAGER_URL/-/ready" 2>/dev/null ;;
        prometheus) http_ready "$CHAT_PROMETHEUS_URL/-/ready" 2>/dev/null ;;
    esac
}
