#!/usr/bin/env bash
# Starts (or reuses) the real services the orchestrix integration tests need,
# on a machine without Docker: PostgreSQL 15 (Debian cluster "15 main") and a
# single-node Apache Kafka 4.x broker+controller (KRaft) assembled from Maven
# Central jars.
#
#   scripts/services.sh start   start/reuse both, wait until ready, print exports
#   scripts/services.sh stop    stop only what this script started
#   scripts/services.sh env     print the exports, start nothing
#
#   eval "$(scripts/services.sh start)"
#
# stdout carries ONLY `export NAME=value` lines; everything else goes to stderr.
# See docs/services.md.
set -euo pipefail

# ---------------------------------------------------------------- settings ---

DIR="${ORCHESTRIX_SERVICES_DIR:-$HOME/.cache/orchestrix/services}"

# Newest Kafka 4.x on Maven Central when this was written. Override to try
# another 4.x; the jars are re-resolved when the version changes.
KAFKA_VERSION="${ORCHESTRIX_KAFKA_VERSION:-4.4.0}"
# log4j2 version Kafka $KAFKA_VERSION itself depends on (log4j-api/-core);
# the slf4j 1.7 binding (log4j-slf4j-impl) must be the same version.
LOG4J_VERSION="${ORCHESTRIX_LOG4J_VERSION:-2.25.5}"
MAVEN_DEPENDENCY_PLUGIN_VERSION=3.6.1

KAFKA_HOST=127.0.0.1
KAFKA_PORT=19092
KAFKA_CONTROLLER_PORT=19093
KAFKA_HEAP="${ORCHESTRIX_KAFKA_HEAP:-512m}"
KAFKA_READY_TIMEOUT="${ORCHESTRIX_KAFKA_TIMEOUT:-120}"

PG_VERSION=15
PG_CLUSTER="${ORCHESTRIX_PG_CLUSTER:-main}"   # another Debian cluster of version 15
PG_HOST=127.0.0.1
PG_USER=orchestrix
PG_PASSWORD=orchestrix
PG_DB=orchestrix
PG_MIN_CONNECTIONS=200
PG_MIN_WAL_BYTES=$((4 << 30))
PG_READY_TIMEOUT="${ORCHESTRIX_PG_TIMEOUT:-60}"

LOGS="$DIR/logs"
RUN="$DIR/run"
CONF="$DIR/config"
LIBS="$DIR/kafka-libs"
DATA="$DIR/kafka-data"
MAVEN_DIR="$DIR/maven"

KAFKA_LOG="$LOGS/kafka.log"          # log4j2 output of the broker
KAFKA_OUT="$LOGS/kafka.out"          # JVM stdout/stderr (crashes, GC, etc.)
MAVEN_LOG="$LOGS/maven.log"
KAFKA_PIDFILE="$RUN/kafka.pid"
PG_STARTED_FLAG="$RUN/postgres.started-by-script"
KAFKA_PROPS="$CONF/server.properties"
KAFKA_LOG4J="$CONF/log4j2.properties"
TOOLS_LOG4J="$CONF/log4j2-tools.properties"
LIBS_MARKER="$LIBS/.complete-kafka-$KAFKA_VERSION-log4j-$LOG4J_VERSION"

# Values handed in by the caller win: such a service is not started, and the
# value is echoed back. A value equal to what this script itself exports (e.g.
# left over from an earlier `eval "$(... start)"` in the same shell) does not
# count as the caller's own service. `stop` ignores both and goes by the state
# files only.
ENV_KAFKA_BROKERS="${KAFKA_BROKERS:-}"
ENV_DATABASE_URL="${DATABASE_URL:-}"

# ----------------------------------------------------------------- helpers ---

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

# show_tail FILE [LINES]: last lines of a log, on stderr.
show_tail() {
  local f="$1" n="${2:-40}"
  if [[ -s "$f" ]]; then
    printf '[services] ---- last %s lines of %s ----\n' "$n" "$f" >&2
    tail -n "$n" "$f" >&2 || true
    printf '[services] ---- end of %s ----\n' "$f" >&2
  else
    log "($f is empty or missing)"
  fi
}

# emit_export NAME VALUE: one `export` line on the saved stdout (fd 3 while
# starting, fd 1 otherwise). Plain values are printed unquoted; anything with
# shell metacharacters is single-quoted so that eval keeps it intact.
emit_export() {
  local name="$1" value="$2"
  if [[ "$value" =~ ^[A-Za-z0-9_@%+=:,./?-]+$ ]]; then
    printf 'export %s=%s\n' "$name" "$value" >&"${OUT_FD:-1}"
  else
    printf "export %s='%s'\n" "$name" "${value//\'/\'\\\'\'}" >&"${OUT_FD:-1}"
  fi
}

default_kafka_brokers() { printf '%s:%s' "$KAFKA_HOST" "$KAFKA_PORT"; }
default_database_url() {
  printf 'postgres://%s:%s@%s:%s/%s?sslmode=disable' \
    "$PG_USER" "$PG_PASSWORD" "$PG_HOST" "$(pg_port)" "$PG_DB"
}

# Forget caller values that are just our own defaults (see above).
drop_own_env_values() {
  [[ "$ENV_KAFKA_BROKERS" == "$(default_kafka_brokers)" ]] && ENV_KAFKA_BROKERS=
  [[ "$ENV_DATABASE_URL" == "$(default_database_url)" ]] && ENV_DATABASE_URL=
  return 0
}

print_exports() {
  emit_export KAFKA_BROKERS "${ENV_KAFKA_BROKERS:-$(default_kafka_brokers)}"
  emit_export DATABASE_URL "${ENV_DATABASE_URL:-$(default_database_url)}"
}

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() {
  # shellcheck disable=SC2016 # expanded by the inner shell
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# Run a command that may leave a daemon behind without handing it our private
# descriptors: fd 3 (the caller's stdout, e.g. the pipe of "$(... start)",
# which would then never reach EOF) and fd 9 (the lock).
detached_fds() { "$@" 3>&- 9>&-; }

pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

# The pid in the Kafka pid file, if it is still our Kafka broker.
our_kafka_pid() {
  local pid
  [[ -f "$KAFKA_PIDFILE" ]] || return 1
  pid="$(cat "$KAFKA_PIDFILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  pid_alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $KAFKA_PROPS" || return 1
  printf '%s' "$pid"
}

prepare_dirs() {
  mkdir -p "$DIR" "$LOGS" "$RUN" "$CONF" "$MAVEN_DIR"
}

# Serialise concurrent invocations (e.g. two test runs starting at once).
take_lock() {
  exec 9>"$DIR/.lock"
  if ! flock -w 600 9; then
    die "another scripts/services.sh holds $DIR/.lock for more than 10 minutes"
  fi
}

# ---------------------------------------------------------------- postgres ---

# Field of `pg_lsclusters` for our cluster: 3 = port, 4 = status.
pg_field() {
  command -v pg_lsclusters >/dev/null 2>&1 || return 0
  pg_lsclusters --no-header 2>/dev/null |
    awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" -v f="$1" '$1 == v && $2 == c { print $f; exit }'
}
pg_port() {
  local p
  p="$(pg_field 3)"
  printf '%s' "${p:-5432}"
}
pg_status() { pg_field 4; }

# Run a command as the postgres OS user, from a directory it can read.
as_postgres() { (cd / && runuser -u postgres -- "$@"); }

psql_admin() {
  as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$(pg_port)" -d postgres "$@"
}

pg_wait_ready() {
  local deadline=$((SECONDS + PG_READY_TIMEOUT)) port
  port="$(pg_port)"
  until pg_isready -q -h "$PG_HOST" -p "$port" && pg_isready -q -p "$port"; do
    if ((SECONDS >= deadline)); then
      log "PostgreSQL $PG_VERSION/$PG_CLUSTER not ready on $PG_HOST:$port after ${PG_READY_TIMEOUT}s"
      show_tail "$(pg_logfile)"
      die "PostgreSQL did not become ready"
    fi
    sleep 0.5
  done
}

pg_logfile() {
  local f
  f="$(pg_field 7)"
  printf '%s' "${f:-/var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log}"
}

pg_tcp_login_ok() {
  PGPASSWORD="$PG_PASSWORD" PGCONNECT_TIMEOUT=5 psql -X -q -At \
    -h "$PG_HOST" -p "$(pg_port)" -U "$PG_USER" -d "$PG_DB" -c 'select 1' >/dev/null 2>&1
}

start_postgres() {
  if [[ -n "$ENV_DATABASE_URL" ]]; then
    log "DATABASE_URL is set by the caller; not starting PostgreSQL"
    return
  fi
  if ! command -v pg_lsclusters >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
    die "PostgreSQL client/server tools not found (expected Debian's postgresql-$PG_VERSION package)"
  fi

  local status
  status="$(pg_status)"
  if [[ -z "$status" ]]; then
    log "PostgreSQL cluster $PG_VERSION/$PG_CLUSTER does not exist; creating it"
    pg_createcluster "$PG_VERSION" "$PG_CLUSTER" >&2 ||
      die "pg_createcluster $PG_VERSION $PG_CLUSTER failed"
    status="$(pg_status)"
  fi

  case "$status" in
    online*)
      if [[ -f "$PG_STARTED_FLAG" ]]; then
        log "PostgreSQL $PG_VERSION/$PG_CLUSTER already running (started earlier by this script)"
      else
        log "PostgreSQL $PG_VERSION/$PG_CLUSTER already running (not started by this script; will not stop it)"
      fi
      ;;
    *)
      log "starting PostgreSQL $PG_VERSION/$PG_CLUSTER (status: ${status:-unknown})"
      if ! detached_fds pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start >&2; then
        show_tail "$(pg_logfile)"
        die "pg_ctlcluster $PG_VERSION $PG_CLUSTER start failed"
      fi
      date -u +%FT%TZ >"$PG_STARTED_FLAG"
      ;;
  esac
  pg_wait_ready

  # Role and database, idempotently. The role owns the database, so the tests
  # may create schemas in it; CREATEDB lets them create scratch databases;
  # CREATEROLE lets deploy/check create the least-privilege roles of
  # docs/deployment.md and run the runtimes as them.
  psql_admin >&2 <<SQL
SELECT format('CREATE ROLE %I LOGIN CREATEDB CREATEROLE', '$PG_USER')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER') \gexec
ALTER ROLE "$PG_USER" LOGIN CREATEDB CREATEROLE PASSWORD '$PG_PASSWORD';
SELECT format('CREATE DATABASE %I OWNER %I', '$PG_DB', '$PG_USER')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$PG_DB') \gexec
ALTER DATABASE "$PG_DB" OWNER TO "$PG_USER";
SQL

  # The tests run 16+ concurrent writers and several pools: the default of 100
  # connections is too tight. max_connections needs a restart.
  local max
  max="$(psql_admin -At -c 'SHOW max_connections')"
  if ((max < PG_MIN_CONNECTIONS)); then
    log "raising max_connections from $max to $PG_MIN_CONNECTIONS (ALTER SYSTEM + restart)"
    psql_admin -c "ALTER SYSTEM SET max_connections = $PG_MIN_CONNECTIONS" >&2
    if ! detached_fds pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" restart >&2; then
      show_tail "$(pg_logfile)"
      die "pg_ctlcluster $PG_VERSION $PG_CLUSTER restart failed"
    fi
    pg_wait_ready
  fi

  # The append benchmarks write WAL at ~20 MB/s: with the default max_wal_size
  # of 1 GB PostgreSQL checkpoints every ~30 s, and the burst of full-page
  # writes after each checkpoint start makes short benchmark phases differ
  # by 20%. 4 GB leaves the timed checkpoint (every 5 min). Reloadable.
  local wal
  wal="$(psql_admin -At -c "SELECT setting::bigint * 1024 * 1024 FROM pg_settings WHERE name = 'max_wal_size'")"
  if ((wal < PG_MIN_WAL_BYTES)); then
    log "raising max_wal_size to $((PG_MIN_WAL_BYTES >> 30)) GB (ALTER SYSTEM + reload)"
    psql_admin -c "ALTER SYSTEM SET max_wal_size = '$((PG_MIN_WAL_BYTES >> 20))MB'" -c 'SELECT pg_reload_conf()' >/dev/null
  fi

  # Password login over TCP on 127.0.0.1. Debian's default pg_hba.conf allows
  # it (scram-sha-256); if a local edit forbids it, add a rule for our role.
  if ! pg_tcp_login_ok; then
    local hba
    hba="$(psql_admin -At -c 'SHOW hba_file')"
    log "password login as $PG_USER over TCP failed; adding a rule to $hba"
    if ! grep -q '# orchestrix-services' "$hba"; then
      local tmp
      tmp="$(mktemp)"
      {
        printf 'host %s %s 127.0.0.1/32 scram-sha-256 # orchestrix-services\n' "$PG_DB" "$PG_USER"
        cat "$hba"
      } >"$tmp"
      cat "$tmp" >"$hba"
      rm -f "$tmp"
    fi
    psql_admin -c 'SELECT pg_reload_conf()' >/dev/null
    sleep 1
    if ! pg_tcp_login_ok; then
      PGPASSWORD="$PG_PASSWORD" psql -X -h "$PG_HOST" -p "$(pg_port)" -U "$PG_USER" \
        -d "$PG_DB" -c 'select 1' >&2 || true
      die "cannot log in as $PG_USER to $PG_HOST:$(pg_port)/$PG_DB with a password"
    fi
  fi
  log "PostgreSQL ready on $PG_HOST:$(pg_port), database $PG_DB (log: $(pg_logfile))"
}

stop_postgres() {
  if [[ ! -f "$PG_STARTED_FLAG" ]]; then
    log "PostgreSQL was not started by this script; leaving it alone"
    return
  fi
  if [[ "$(pg_status)" == online* ]]; then
    log "stopping PostgreSQL $PG_VERSION/$PG_CLUSTER"
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop >&2 ||
      die "pg_ctlcluster $PG_VERSION $PG_CLUSTER stop failed"
  else
    log "PostgreSQL $PG_VERSION/$PG_CLUSTER is not running"
  fi
  rm -f "$PG_STARTED_FLAG"
}

# ------------------------------------------------------------------- kafka ---

find_java() {
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    JAVA="$JAVA_HOME/bin/java"
  elif command -v java >/dev/null 2>&1; then
    JAVA="$(command -v java)"
  else
    die "java not found (Kafka $KAFKA_VERSION needs Java 17+)"
  fi
  local major
  major="$("$JAVA" -XshowSettings:properties -version 2>&1 |
    awk -F' = ' '/java.specification.version/ { print $2; exit }')"
  major="${major#1.}"
  if ! [[ "$major" =~ ^[0-9]+$ ]] || ((major < 17)); then
    die "Kafka $KAFKA_VERSION needs Java 17+, $JAVA is ${major:-unknown}"
  fi
}

# Resolve Kafka's jars (plus the logging binding the release tarball adds)
# with Maven, once per version: later runs find the marker and skip this.
ensure_kafka_libs() {
  if [[ -f "$LIBS_MARKER" ]]; then
    log "Kafka $KAFKA_VERSION jars cached in $LIBS"
    return
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found (needed once to fetch the Kafka jars)"

  log "resolving Kafka $KAFKA_VERSION jars from Maven Central into $LIBS (once; log: $MAVEN_LOG)"
  cat >"$MAVEN_DIR/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by scripts/services.sh: the jar set of a single-node Kafka. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.orchestrix.services</groupId>
  <artifactId>kafka-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <!-- the broker/controller (kafka.Kafka, kafka.tools.StorageTool) -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- command line tools (topics, console producer/consumer), as in the tarball -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- logging: Kafka logs through slf4j 1.7; bind it to log4j2 -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-api</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>$MAVEN_DEPENDENCY_PLUGIN_VERSION</version>
      </plugin>
    </plugins>
  </build>
</project>
EOF
  local tmp="$LIBS.tmp"
  rm -rf "$tmp"
  if ! mvn -B -ntp -f "$MAVEN_DIR/pom.xml" \
      -Dmaven.repo.local="$MAVEN_DIR/repository" \
      dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >"$MAVEN_LOG" 2>&1; then
    show_tail "$MAVEN_LOG" 60
    die "Maven could not resolve Kafka $KAFKA_VERSION (see $MAVEN_LOG)"
  fi
  compgen -G "$tmp/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null ||
    die "Maven finished but $tmp has no kafka_2.13-$KAFKA_VERSION.jar (see $MAVEN_LOG)"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  date -u +%FT%TZ >"$LIBS_MARKER"
  log "Kafka $KAFKA_VERSION: $(find "$LIBS" -name '*.jar' | wc -l) jars in $LIBS"
}

write_kafka_config() {
  cat >"$KAFKA_PROPS" <<EOF
# Written by scripts/services.sh: single-node Kafka (KRaft broker+controller)
# for tests. Rewritten on every start.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA

num.partitions=1
auto.create.topics.enable=false
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0

num.network.threads=3
num.io.threads=8
log.retention.hours=168
log.segment.bytes=1073741824
log.retention.check.interval.ms=300000
EOF

  # Broker: everything to $KAFKA_LOG (the launcher keeps JVM stdout/stderr in
  # $KAFKA_OUT). The state-change/request loggers are kept quiet.
  cat >"$KAFKA_LOG4J" <<EOF
# Written by scripts/services.sh.
status = warn
name = orchestrix-kafka
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $KAFKA_LOG
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
logger.zstd.name = org.apache.kafka.common.compress
logger.zstd.level = WARN
EOF

  # Command line tools (StorageTool, console clients): warnings to stderr.
  cat >"$TOOLS_LOG4J" <<EOF
# Written by scripts/services.sh.
status = warn
name = orchestrix-kafka-tools
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
EOF
}

kafka_tool() {
  "$JAVA" -Xmx256m -Dlog4j2.configurationFile="$TOOLS_LOG4J" -cp "$LIBS/*" "$@"
}

# Format the log dir once (standalone KRaft controller quorum of one).
ensure_kafka_formatted() {
  if [[ -f "$DATA/meta.properties" ]]; then
    log "Kafka data dir $DATA already formatted (cluster $(sed -n 's/^cluster.id=//p' "$DATA/meta.properties"))"
    return
  fi
  local cluster_id
  if [[ -s "$RUN/kafka-cluster-id" ]]; then
    cluster_id="$(cat "$RUN/kafka-cluster-id")"
  else
    cluster_id="$(kafka_tool kafka.tools.StorageTool random-uuid)" ||
      die "kafka.tools.StorageTool random-uuid failed"
    printf '%s\n' "$cluster_id" >"$RUN/kafka-cluster-id"
  fi
  rm -rf "$DATA"
  mkdir -p "$DATA"
  log "formatting Kafka data dir $DATA (cluster $cluster_id)"
  kafka_tool kafka.tools.StorageTool format --standalone \
    -t "$cluster_id" -c "$KAFKA_PROPS" >&2 ||
    die "kafka.tools.StorageTool format failed"
}

stop_pid() {
  local pid="$1" what="$2" wait_s="${3:-60}"
  kill -TERM "$pid" 2>/dev/null || return 0
  local deadline=$((SECONDS + wait_s))
  while pid_alive "$pid"; do
    if ((SECONDS >= deadline)); then
      log "$what (pid $pid) did not exit after ${wait_s}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 0.5
  done
}

start_kafka() {
  if [[ -n "$ENV_KAFKA_BROKERS" ]]; then
    log "KAFKA_BROKERS is set by the caller; not starting Kafka"
    return
  fi
  local pid
  if port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
    if pid="$(our_kafka_pid)"; then
      log "Kafka already running on $KAFKA_HOST:$KAFKA_PORT (pid $pid, started by this script)"
    else
      log "something already answers on $KAFKA_HOST:$KAFKA_PORT; reusing it as Kafka (not started by this script)"
    fi
    return
  fi
  if pid="$(our_kafka_pid)"; then
    # Launched earlier but not listening (still starting, or wedged): wait
    # for it below like for a fresh launch.
    log "Kafka (pid $pid) is running but not yet listening; waiting for it"
  else
    rm -f "$KAFKA_PIDFILE"
    find_java
    ensure_kafka_libs
    write_kafka_config
    ensure_kafka_formatted

    # Fresh log files for this run; keep the previous ones.
    [[ -f "$KAFKA_LOG" ]] && mv -f "$KAFKA_LOG" "$KAFKA_LOG.prev"
    [[ -f "$KAFKA_OUT" ]] && mv -f "$KAFKA_OUT" "$KAFKA_OUT.prev"

    log "starting Kafka $KAFKA_VERSION on $KAFKA_HOST:$KAFKA_PORT (controller $KAFKA_HOST:$KAFKA_CONTROLLER_PORT)"
    # setsid: the broker outlives the calling shell and its process group.
    # The inner shell records its own pid, then becomes java (exec).
    # shellcheck disable=SC2016 # expanded by the inner shell
    setsid nohup bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$KAFKA_PIDFILE" \
      "$JAVA" "-Xmx$KAFKA_HEAP" "-Xms$KAFKA_HEAP" \
      -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
      -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$KAFKA_LOG4J" -Dkafka.logs.dir="$LOGS" \
      -cp "$LIBS/*" kafka.Kafka "$KAFKA_PROPS" \
      >"$KAFKA_OUT" 2>&1 </dev/null 3>&- 9>&- &
    local i
    for ((i = 0; i < 50; i++)); do
      [[ -s "$KAFKA_PIDFILE" ]] && break
      sleep 0.1
    done
    pid="$(cat "$KAFKA_PIDFILE" 2>/dev/null || true)"
    [[ -n "$pid" ]] || die "Kafka launcher did not write $KAFKA_PIDFILE"
  fi

  local deadline=$((SECONDS + KAFKA_READY_TIMEOUT))
  while :; do
    if ! pid_alive "$pid"; then
      show_tail "$KAFKA_OUT"
      show_tail "$KAFKA_LOG"
      rm -f "$KAFKA_PIDFILE"
      die "Kafka (pid $pid) exited during startup"
    fi
    if grep -q 'Kafka Server started' "$KAFKA_LOG" 2>/dev/null &&
       port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
      break
    fi
    if ((SECONDS >= deadline)); then
      show_tail "$KAFKA_OUT"
      show_tail "$KAFKA_LOG"
      log "stopping the Kafka process that did not become ready (pid $pid)"
      stop_pid "$pid" Kafka 20
      rm -f "$KAFKA_PIDFILE"
      die "Kafka not ready on $KAFKA_HOST:$KAFKA_PORT after ${KAFKA_READY_TIMEOUT}s"
    fi
    sleep 0.5
  done
  log "Kafka ready on $KAFKA_HOST:$KAFKA_PORT (pid $pid)"
}

stop_kafka() {
  local pid
  if pid="$(our_kafka_pid)"; then
    log "stopping Kafka (pid $pid)"
    stop_pid "$pid" Kafka 60
    log "Kafka stopped"
  elif [[ -f "$KAFKA_PIDFILE" ]]; then
    log "Kafka pid file is stale (process gone); removing it"
  else
    log "Kafka was not started by this script; leaving it alone"
  fi
  rm -f "$KAFKA_PIDFILE"
}

# ---------------------------------------------------------------- commands ---

print_locations() {
  log "state/caches: $DIR"
  log "  Kafka log:    $KAFKA_LOG  (JVM output: $KAFKA_OUT)"
  log "  Maven log:    $MAVEN_LOG"
  log "  Kafka jars:   $LIBS"
  log "  Kafka data:   $DATA"
  log "  Postgres log: $(pg_logfile)"
}

cmd_start() {
  # Keep the real stdout for the export lines only.
  exec 3>&1 1>&2
  OUT_FD=3
  local t0=$SECONDS
  prepare_dirs
  take_lock
  drop_own_env_values
  start_postgres
  start_kafka
  print_locations
  log "services ready in $((SECONDS - t0))s"
  print_exports
}

cmd_stop() {
  exec 1>&2
  prepare_dirs
  take_lock
  # Only the state files decide: the pid file of the Kafka we launched, the
  # flag of the PostgreSQL cluster we started.
  stop_kafka
  stop_postgres
}

cmd_env() {
  print_exports
}

usage() {
  cat >&2 <<EOF
usage: $0 start|stop|env
  start  start (or reuse) PostgreSQL $PG_VERSION and Kafka $KAFKA_VERSION, print export lines
  stop   stop what this script started
  env    print the export lines without starting anything
state, logs and caches: $DIR (ORCHESTRIX_SERVICES_DIR)
EOF
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  env) cmd_env ;;
  -h | --help | help) usage ;;
  *) usage; exit 2 ;;
esac
