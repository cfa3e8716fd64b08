#!/usr/bin/env bash
# A real Flower 1.41 deployment on this machine: one SuperLink and N SuperNodes as separate
# processes on 127.0.0.1, optionally with TLS and SuperNode authentication.
#
#   tools/deploy/deploy.sh start  [--nodes N] [--tls] [--auth] [--dir DIR] [--port PORT]
#   tools/deploy/deploy.sh stop   [--dir DIR]
#   tools/deploy/deploy.sh status [--dir DIR]
#   tools/deploy/deploy.sh certs  [--dir DIR] [--san "IP:10.0.0.5,DNS:host-a"]   (TLS files only)
#   tools/deploy/deploy.sh keys   [--dir DIR] [--nodes N]                         (auth keys only)
#
# start   launches `flower-superlink` (working directory DIR, state in memory as is
#         Flower's default, no per-run `uv sync`) on 127.0.0.1:PORT (default 8000), waits
#         until it answers, then N `flower-supernode`s (default 2), node i with
#         `--port 9100+i` (SUPERNODE_PORT_BASE replaces 9100) and `--node-config
#         "partition-id=i num-partitions=N link-down-mbps=D link-up-mbps=U
#         link-latency-ms=L num-threads=T"` (T = CPU cores // N, at least 1: the ClientApp's
#         torch threads, so N nodes on one host do not oversubscribe it), and waits until
#         each one has joined. Insecure by default.
#   --tls   a self-signed CA and a server certificate for 127.0.0.1/localhost (openssl) in
#           DIR/certs; the SuperLink serves HTTPS with them, SuperNodes and `flwr` verify it
#           with DIR/certs/ca.crt.
#   --auth  SuperNode authentication (implies --tls, which Flower requires for it): an ECDSA
#           P-384 key pair per SuperNode in DIR/keys (ssh-keygen), the SuperLink started with
#           `--enable-supernode-auth`, each public key registered with
#           `flwr supernode register`, each SuperNode started with its private key. A
#           SuperNode whose key is not registered is refused.
#   LINKS   per-node link profiles "down-Mbit/s:up-Mbit/s:latency-ms", node i takes entry
#           i mod count. Default: "100:20:20 20:5:50 10:2:100 4:1:200" (fibre, cable, DSL,
#           mobile); e.g. LINKS="10:10:50 1:0.5:200" tools/deploy/deploy.sh start.
#
# It writes DIR/flwr-home/config.toml with a connection `[superlink.local-deployment]` and
# prints the `flwr run` command to use. Every PID it starts (and the children those have
# spawned once up, e.g. flower-superexec) is recorded in DIR/pids; `stop` ends exactly those
# processes and their descendants, never anything found by name.
#
# DIR defaults to <project>/.flwr/deployment (git-ignored, hence also kept out of the app
# bundle that `flwr run` packs). The processes inherit this shell's environment (e.g.
# FEDVIT_CACHE, OMP_NUM_THREADS). Timeouts: START_TIMEOUT (s, default 90), STOP_TIMEOUT (15).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CONNECTION=local-deployment
NODE_PORT_BASE=${SUPERNODE_PORT_BASE:-9100}
DEFAULT_LINKS="100:20:20 20:5:50 10:2:100 4:1:200"
START_TIMEOUT=${START_TIMEOUT:-90}
STOP_TIMEOUT=${STOP_TIMEOUT:-15}

# Flower's executables: FLWR_BIN if set, else the project's venv, else those on PATH.
if [[ -n "${FLWR_BIN:-}" ]]; then
  BIN="$FLWR_BIN"
elif [[ -x "$ROOT/.venv/bin/flower-superlink" ]]; then
  BIN="$ROOT/.venv/bin"
elif command -v flower-superlink >/dev/null 2>&1; then
  BIN="$(dirname "$(command -v flower-superlink)")"
else
  BIN=""
fi

die() { echo "deploy.sh: error: $*" >&2; exit 1; }
info() { echo "deploy.sh: $*"; }

usage() {
  sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

# ---------------------------------------------------------------------------------------------
# arguments

CMD="${1:-}"
[[ -n "$CMD" ]] || usage 2
case "$CMD" in
  -h|--help|help) usage 0 ;;
  start|stop|status|certs|keys) ;;
  *) echo "deploy.sh: unknown command '$CMD'" >&2; usage 2 ;;
esac
shift
NODES=2
TLS=0
AUTH=0
PORT=8000
SAN=""
DIR="$ROOT/.flwr/deployment"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) NODES="${2:?--nodes needs a number}"; shift 2 ;;
    --tls) TLS=1; shift ;;
    --auth) AUTH=1; shift ;;
    --dir) DIR="${2:?--dir needs a folder}"; shift 2 ;;
    --port) PORT="${2:?--port needs a number}"; shift 2 ;;
    --san) SAN="${2:?--san needs e.g. IP:10.0.0.5,DNS:host-a}"; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "deploy.sh: unknown argument '$1'" >&2; usage 2 ;;
  esac
done
[[ "$NODES" =~ ^[0-9]+$ && "$NODES" -ge 1 && "$NODES" -le 64 ]] \
  || die "--nodes must be an integer from 1 to 64, got '$NODES'"
[[ "$PORT" =~ ^[0-9]+$ ]] || die "--port must be a number, got '$PORT'"
DIR="$(realpath -m -- "$DIR")"  # absolute: it goes into config files and printed commands
[[ "$CMD" == stop || "$CMD" == status ]] || mkdir -p "$DIR"
PIDS="$DIR/pids"
LOGS="$DIR/logs"
CERTS="$DIR/certs"
KEYS="$DIR/keys"
CLI_HOME="$DIR/flwr-home"

# ---------------------------------------------------------------------------------------------
# processes: record "PID STARTTIME NAME" so that stop never hits a recycled PID

start_time_of() {  # field 22 of /proc/PID/stat (after the parenthesised command name)
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  awk '{print $20}' <<<"$stat"
}

alive() {  # running and not a zombie
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != "Z" ]]
}

record_pid() {  # record_pid PID NAME (fails if the process is gone already)
  local st
  st="$(start_time_of "$1")" || return 1
  echo "$1 $st $2" >>"$PIDS"
}

descendants() {  # all descendants of PID, each listed after its parent
  local child
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
    echo "$child"
    descendants "$child"
  done
}

record_children() {  # the children that the recorded processes have spawned by now
  local pid st name d
  while read -r pid st name; do
    [[ "$name" == child-of-* ]] && continue
    for d in $(descendants "$pid"); do
      grep -q "^$d " "$PIDS" || record_pid "$d" "child-of-$name" || true
    done
  done < <(cat "$PIDS")
}

launch() {  # launch NAME LOG CWD CMD...: own session (PGID = PID), output to LOG
  local name="$1" logfile="$2" cwd="$3"
  shift 3
  (cd "$cwd" && exec setsid "$@" </dev/null >"$logfile" 2>&1) &
  local pid=$!
  # the subshell execs setsid, which execs the command (no fork: we are not a group leader),
  # so $! is the command's own PID and its process group
  record_pid "$pid" "$name" || fail_start "$name exited at once" "$logfile"
  LAUNCHED_PID=$pid
}

fail_start() {  # fail_start MESSAGE LOG: show the log tail, stop what was started, exit 1
  echo "deploy.sh: error: $1" >&2
  if [[ -f "$2" ]]; then
    echo "----- last lines of $2 -----" >&2
    tail -n 30 "$2" >&2
    echo "-----" >&2
  fi
  do_stop >&2 || true
  exit 1
}

do_stop() {
  if [[ ! -s "$PIDS" ]]; then
    info "nothing recorded in $PIDS: nothing to stop"
    rm -f "$PIDS"
    return 0
  fi
  local pid st name targets=() d
  while read -r pid st name; do
    [[ -n "$pid" ]] || continue
    if ! alive "$pid" || [[ "$(start_time_of "$pid")" != "$st" ]]; then
      continue  # already gone, or the PID now belongs to someone else
    fi
    targets+=("$pid")
    for d in $(descendants "$pid"); do targets+=("$d"); done
  done <"$PIDS"
  if [[ ${#targets[@]} -eq 0 ]]; then
    info "the recorded processes have all exited already"
    rm -f "$PIDS"
    return 0
  fi
  # de-duplicate, keep order (parents first: a SuperNode deactivates itself on SIGTERM)
  mapfile -t targets < <(printf '%s\n' "${targets[@]}" | awk '!seen[$0]++')
  info "stopping ${#targets[@]} processes: ${targets[*]}"
  kill -TERM "${targets[@]}" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT)) left
  while :; do
    left=()
    for pid in "${targets[@]}"; do alive "$pid" && left+=("$pid"); done
    [[ ${#left[@]} -eq 0 ]] && break
    if ((SECONDS >= deadline)); then
      info "still running after ${STOP_TIMEOUT}s, sending SIGKILL: ${left[*]}"
      kill -KILL "${left[@]}" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 0.5
  done
  rm -f "$PIDS"
  info "stopped"
}

# ---------------------------------------------------------------------------------------------
# TLS certificates and SuperNode keys

make_certs() {  # a CA (kept once made) and a server certificate for 127.0.0.1/localhost
  command -v openssl >/dev/null || die "openssl is needed for --tls"
  mkdir -p "$CERTS"
  local sans="IP:127.0.0.1,DNS:localhost${SAN:+,$SAN}"
  (
    umask 077
    cd "$CERTS"
    if [[ ! -s ca.crt || ! -s ca.key ]]; then
      echo "deploy.sh: creating a CA in $CERTS"
      openssl req -x509 -newkey rsa:2048 -nodes -days 365 -sha256 \
        -keyout ca.key -out ca.crt -subj "/CN=fedvit deployment CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
      rm -f server.pem server.key  # a new CA needs a new server certificate
    fi
    if [[ ! -s server.pem || ! -s server.key || -n "$SAN" ]]; then
      echo "deploy.sh: creating the SuperLink's certificate in $CERTS (subjectAltName $sans)"
      openssl req -newkey rsa:2048 -nodes -sha256 -keyout server.key -out server.csr \
        -subj "/CN=fedvit SuperLink" 2>/dev/null
      printf '%s\n' "subjectAltName=$sans" "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
        >server.ext
      openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
        -sha256 -extfile server.ext -out server.pem 2>/dev/null
      rm -f server.csr server.ext ca.srl
    else
      echo "deploy.sh: using the existing certificates in $CERTS"
    fi
    chmod 644 ca.crt server.pem
  )
  openssl verify -CAfile "$CERTS/ca.crt" "$CERTS/server.pem" >/dev/null \
    || die "$CERTS/server.pem does not verify against $CERTS/ca.crt"
}

make_keys() {  # one ECDSA P-384 key pair per SuperNode (OpenSSH format, as Flower reads it)
  command -v ssh-keygen >/dev/null || die "ssh-keygen is needed for --auth"
  mkdir -p "$KEYS"
  chmod 700 "$KEYS"
  local i
  for ((i = 0; i < NODES; i++)); do
    if [[ ! -s "$KEYS/supernode-$i" || ! -s "$KEYS/supernode-$i.pub" ]]; then
      rm -f "$KEYS/supernode-$i" "$KEYS/supernode-$i.pub"
      ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedvit-supernode-$i" -f "$KEYS/supernode-$i"
    fi
  done
  info "SuperNode key pairs in $KEYS (supernode-0 .. supernode-$((NODES - 1)))"
}

# ---------------------------------------------------------------------------------------------
# helpers for start

superlink_answers() {  # the HTTP API's /health answers 200
  if command -v curl >/dev/null; then
    if ((TLS)); then
      curl -fsS -o /dev/null --max-time 2 --cacert "$CERTS/ca.crt" \
        "https://127.0.0.1:$PORT/health" 2>/dev/null
    else
      curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/health" 2>/dev/null
    fi
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
  fi
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

link_of() {  # link_of I -> "down up latency" from LINKS
  local -a table
  read -r -a table <<<"${LINKS:-$DEFAULT_LINKS}"
  [[ ${#table[@]} -gt 0 ]] || die "LINKS is empty"
  local entry="${table[$(($1 % ${#table[@]}))]}"
  local num='[0-9]+(\.[0-9]+)?'
  [[ "$entry" =~ ^($num):($num):($num)$ ]] \
    || die "LINKS entry '$entry' is not down:up:latency (numbers, e.g. 10:2:100)"
  echo "${entry//:/ }"
}

write_connection() {
  mkdir -p "$CLI_HOME"
  {
    echo "# Written by tools/deploy/deploy.sh: the SuperLink it started in $DIR."
    echo "[superlink]"
    echo "default = \"$CONNECTION\""
    echo
    echo "[superlink.$CONNECTION]"
    echo "address = \"127.0.0.1:$PORT\""
    if ((TLS)); then
      echo "root-certificates = \"$CERTS/ca.crt\""
    else
      echo "insecure = true"
    fi
  } >"$CLI_HOME/config.toml"
}

flwr_cli() { FLWR_HOME="$CLI_HOME" "$BIN/flwr" "$@"; }

# ---------------------------------------------------------------------------------------------

do_start() {
  [[ -n "$BIN" && -x "$BIN/flower-superlink" && -x "$BIN/flower-supernode" ]] \
    || die "flower-superlink/flower-supernode not found: run scripts/setup.sh (or set FLWR_BIN)"
  command -v setsid >/dev/null || die "setsid (util-linux) is needed"
  if [[ -s "$PIDS" ]]; then
    local pid st name running=0
    while read -r pid st name; do
      alive "$pid" && [[ "$(start_time_of "$pid")" == "$st" ]] && running=1
    done <"$PIDS"
    ((running)) && die "a deployment is already running from $DIR: tools/deploy/deploy.sh stop --dir $DIR"
    rm -f "$PIDS"
  fi
  if ((AUTH && !TLS)); then
    info "--auth needs TLS (Flower refuses SuperNode authentication without it): enabling --tls"
    TLS=1
  fi
  port_busy "$PORT" && die "127.0.0.1:$PORT is already in use (another SuperLink?)"
  local i
  for ((i = 0; i < NODES; i++)); do
    port_busy $((NODE_PORT_BASE + i)) \
      && die "127.0.0.1:$((NODE_PORT_BASE + i)) (SuperNode $i's port) is already in use"
  done
  for ((i = 0; i < NODES; i++)); do link_of "$i" >/dev/null; done  # validate LINKS early

  mkdir -p "$LOGS" "$DIR/homes"
  : >"$PIDS"
  ((TLS)) && make_certs
  ((AUTH)) && make_keys
  write_connection

  # The processes find flower-superexec by name, and must not `uv sync` the app per run.
  export PATH="$BIN:$PATH"
  export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
  export FLWR_DISABLE_UPDATE_CHECK="${FLWR_DISABLE_UPDATE_CHECK:-1}"
  # No telemetry (flwr_exit waits up to 4 s for it after each ClientApp's reply), and the
  # superexecs poll for tasks every 0.1 s instead of 1 s (flwr 1.41 reads this variable in
  # supercore/superexec/run_superexec.py; 0.01 to 60 s).
  export FLWR_TELEMETRY_ENABLED=0
  export FLWR_SUPEREXEC_TASK_POLL_INTERVAL="${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-0.1}"

  # --- SuperLink
  # State in memory (a fresh federation each start, registrations included). An SQLite
  # --database writes every message object: a fedavg round of test_vit on 2 nodes took
  # 45 s with it and 24 s without.
  local link_args=(--port "$PORT" --disable-runtime-dependency-installation)
  if ((TLS)); then
    link_args+=(--ssl-ca-certfile "$CERTS/ca.crt" --ssl-certfile "$CERTS/server.pem"
                --ssl-keyfile "$CERTS/server.key")
  else
    link_args+=(--insecure)
  fi
  ((AUTH)) && link_args+=(--enable-supernode-auth)
  info "starting flower-superlink on 127.0.0.1:$PORT ($( ((TLS)) && echo TLS || echo insecure)$( ((AUTH)) && echo ', SuperNode auth'))"
  mkdir -p "$DIR/homes/superlink"
  FLWR_HOME="$DIR/homes/superlink" launch superlink "$LOGS/superlink.log" "$DIR" \
    "$BIN/flower-superlink" "${link_args[@]}"
  local link_pid=$LAUNCHED_PID
  local deadline=$((SECONDS + START_TIMEOUT))
  until superlink_answers; do
    alive "$link_pid" || fail_start "flower-superlink exited during start-up" "$LOGS/superlink.log"
    ((SECONDS < deadline)) \
      || fail_start "flower-superlink did not answer on 127.0.0.1:$PORT within ${START_TIMEOUT}s" \
        "$LOGS/superlink.log"
    sleep 0.5
  done
  info "SuperLink is up (PID $link_pid, log $LOGS/superlink.log)"

  # --- registration of the SuperNodes' public keys (Control API, through the connection)
  if ((AUTH)); then
    for ((i = 0; i < NODES; i++)); do
      if ! flwr_cli supernode register "$KEYS/supernode-$i.pub" "$CONNECTION" \
          --name "supernode-$i" >"$LOGS/register-$i.log" 2>&1; then
        fail_start "registering $KEYS/supernode-$i.pub failed" "$LOGS/register-$i.log"
      fi
    done
    info "registered $NODES SuperNode public keys"
  fi

  # --- SuperNodes
  local cores threads
  cores="$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)"
  threads=$((cores / NODES))
  ((threads >= 1)) || threads=1
  local node_pids=() down up lat node_args
  for ((i = 0; i < NODES; i++)); do
    read -r down up lat <<<"$(link_of "$i")"
    node_args=(--superlink "127.0.0.1:$PORT" --port $((NODE_PORT_BASE + i))
               --node-config "partition-id=$i num-partitions=$NODES link-down-mbps=$down link-up-mbps=$up link-latency-ms=$lat num-threads=$threads")
    if ((TLS)); then
      node_args+=(--root-certificates "$CERTS/ca.crt")
    else
      node_args+=(--insecure)
    fi
    ((AUTH)) && node_args+=(--auth-supernode-private-key "$KEYS/supernode-$i")
    mkdir -p "$DIR/homes/supernode-$i"
    FLWR_HOME="$DIR/homes/supernode-$i" launch "supernode-$i" "$LOGS/supernode-$i.log" "$DIR" \
      "$BIN/flower-supernode" "${node_args[@]}"
    node_pids+=("$LAUNCHED_PID")
    info "started supernode-$i (PID $LAUNCHED_PID, port $((NODE_PORT_BASE + i)), partition $i/$NODES, link ${down}/${up} Mbit/s ${lat} ms, $threads threads)"
  done
  # a SuperNode logs "SuperNode ID: ..." once the SuperLink has accepted it
  for ((i = 0; i < NODES; i++)); do
    until grep -q "SuperNode ID:" "$LOGS/supernode-$i.log" 2>/dev/null; do
      alive "${node_pids[$i]}" \
        || fail_start "supernode-$i exited: the SuperLink did not accept it" "$LOGS/supernode-$i.log"
      ((SECONDS < deadline)) \
        || fail_start "supernode-$i did not join within ${START_TIMEOUT}s" "$LOGS/supernode-$i.log"
      sleep 0.5
    done
  done
  sleep 1
  record_children  # e.g. the SuperLink's flower-superexec, which runs in its own session

  cat <<EOF
deploy.sh: deployment up: 1 SuperLink + $NODES SuperNodes (files in $DIR; PIDs in $PIDS)

Run the app against it (from $ROOT):

  FLWR_HOME=$CLI_HOME scripts/flwr run . $CONNECTION --stream

Results go to the run config's outputs-dir (default ~/fedvit-outputs; give an absolute or
~/... path: relative paths are refused). Stop everything with:

  tools/deploy/deploy.sh stop --dir $DIR
EOF
}

do_status() {
  if [[ ! -s "$PIDS" ]]; then
    info "no deployment recorded in $DIR"
    return 0
  fi
  local pid st name
  while read -r pid st name; do
    if alive "$pid" && [[ "$(start_time_of "$pid")" == "$st" ]]; then
      printf '  %-24s PID %-8s running\n' "$name" "$pid"
    else
      printf '  %-24s PID %-8s gone\n' "$name" "$pid"
    fi
  done <"$PIDS"
  [[ -x "$BIN/flwr" && -f "$CLI_HOME/config.toml" ]] && flwr_cli supernode list "$CONNECTION" || true
}

case "$CMD" in
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  certs) make_certs ;;
  keys) make_keys ;;
esac
