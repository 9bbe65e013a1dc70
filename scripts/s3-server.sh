#!/usr/bin/env bash
# A real S3 server for tests and benchmarks: OpenStack Swift (Debian packages) as a single-node
# all-in-one with the s3api and tempauth middlewares, on 127.0.0.1 only, every file under one
# state directory. Swift verifies SigV4 and implements multipart uploads (ListParts, Abort).
#
#   scripts/s3-server.sh install            install the Debian packages (root)
#   scripts/s3-server.sh start DIR [PORT]   start it (proxy on PORT, default 18080; the account,
#                                           container and object servers and memcached on PORT+1..4);
#                                           prints the environment to use (AWS_* variables)
#   scripts/s3-server.sh stop DIR           stop every daemon started from DIR and wait for them
#
# Credentials: access key `test:tester`, secret `testing` (tempauth). The daemons read their
# swift.conf from DIR through a small launcher (they would otherwise read /etc/swift/swift.conf),
# each runs in its own session (Swift signals its whole process group on SIGTERM), and stop waits
# until the processes are really gone (stopped daemons linger for a while here).
set -euo pipefail

PY=/usr/bin/python3 # Debian's python with the swift modules (a pyenv python3 may come first on PATH)
cmd=${1:-}
dir=${2:-}

install_packages() {
  local need=()
  for p in swift swift-proxy swift-object swift-container swift-account python3-swift memcached; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then echo "s3-server: need root to install ${need[*]}" >&2; exit 1; fi
    echo "s3-server: installing Debian packages: ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; }
  fi
}

write_configs() {
  local d=$1 port=$2
  local acc=$((port + 1)) con=$((port + 2)) obj=$((port + 3)) mc=$((port + 4))
  mkdir -p "$d/etc" "$d/srv/d1" "$d/run" "$d/log"
  cat >"$d/etc/swift.conf" <<EOF
[swift-hash]
swift_hash_path_suffix = ferry-test-suffix
swift_hash_path_prefix = ferry-test-prefix
[storage-policy:0]
name = Policy-0
default = yes
[swift-constraints]
max_file_size = 5368709122
EOF
  local common="[DEFAULT]
user = $(id -un)
bind_ip = 127.0.0.1
swift_dir = $d/etc
devices = $d/srv
mount_check = false
workers = 1
log_name = swift
log_facility = LOG_LOCAL0
log_level = WARNING
log_address = /nonexistent-ferry-log
"
  printf '%s\nbind_port = %s\n[pipeline:main]\npipeline = account-server\n[app:account-server]\nuse = egg:swift#account\n' "$common" "$acc" >"$d/etc/account-server.conf"
  printf '%s\nbind_port = %s\n[pipeline:main]\npipeline = container-server\n[app:container-server]\nuse = egg:swift#container\n' "$common" "$con" >"$d/etc/container-server.conf"
  # container_update_timeout: under parallel part uploads the container listing that ListParts
  # reads must receive every update, so give it time instead of the default 1 s.
  printf '%s\nbind_port = %s\n[pipeline:main]\npipeline = object-server\n[app:object-server]\nuse = egg:swift#object\ncontainer_update_timeout = 30\nconn_timeout = 5\nnetwork_chunk_size = 1048576\ndisk_chunk_size = 1048576\n' "$common" "$obj" >"$d/etc/object-server.conf"
  cat >"$d/etc/proxy-server.conf" <<EOF
[DEFAULT]
user = $(id -un)
bind_ip = 127.0.0.1
bind_port = $port
swift_dir = $d/etc
workers = ${FERRY_S3_PROXY_WORKERS:-1}
log_name = swift-proxy
log_level = WARNING
log_address = /nonexistent-ferry-log
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk s3api tempauth copy slo dlo proxy-logging proxy-server
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
# Larger chunks: less Python per byte moved (the default 64 KiB makes the proxy the bottleneck).
client_chunk_size = 1048576
object_chunk_size = 1048576
node_timeout = 60
conn_timeout = 5
recoverable_node_timeout = 60
[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin
user_test2_other = othersecret .admin
[filter:s3api]
use = egg:swift#s3api
location = us-east-1
max_parts_listing = 10000
max_upload_part_num = 10000
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$mc
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
EOF
  # The launcher: points Swift at this directory's swift.conf before the server starts.
  cat >"$d/etc/launch.py" <<'EOF'
import sys
from swift.common import utils
utils.set_swift_dir(sys.argv[1])
from swift.common import constraints
constraints.reload_constraints()
from swift.common.wsgi import run_wsgi
sys.exit(run_wsgi(sys.argv[3], sys.argv[2]))
EOF
  for ring in account:$acc container:$con object:$obj; do
    local name=${ring%%:*} p=${ring##*:}
    (cd "$d/etc" && swift-ring-builder "$name.builder" create 4 1 1 >/dev/null &&
      swift-ring-builder "$name.builder" add "r1z1-127.0.0.1:$p/d1" 1 >/dev/null &&
      swift-ring-builder "$name.builder" rebalance >/dev/null 2>&1 || true)
    [ -f "$d/etc/$name.ring.gz" ] || { echo "s3-server: could not build the $name ring" >&2; exit 1; }
  done
}

start_daemon() { # name command...
  local d=$1 name=$2
  shift 2
  setsid "$@" >"$d/log/$name.log" 2>&1 </dev/null &
  echo $! >"$d/run/$name.pid"
}

start() {
  local d port
  [ -n "$dir" ] || { echo "usage: $0 start DIR [PORT]" >&2; exit 64; }
  mkdir -p "$dir"
  d=$(cd "$dir" && pwd)
  port=${3:-18080}
  command -v swift-ring-builder >/dev/null || install_packages
  [ -f "$d/etc/proxy-server.conf" ] || write_configs "$d" "$port"
  port=$(sed -n 's/^bind_port = //p' "$d/etc/proxy-server.conf" | head -1)
  start_daemon "$d" memcached memcached -l 127.0.0.1 -p $((port + 4)) -U 0 -u root -m 64
  for s in account container object; do
    start_daemon "$d" "$s" "$PY" "$d/etc/launch.py" "$d/etc" "$s-server" "$d/etc/$s-server.conf"
  done
  start_daemon "$d" proxy "$PY" "$d/etc/launch.py" "$d/etc" proxy-server "$d/etc/proxy-server.conf"
  local i
  for i in $(seq 1 150); do
    if curl -sf "http://127.0.0.1:$port/healthcheck" >/dev/null 2>&1; then
      # The account and container servers answer too?
      if [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'X-Auth-User: test:tester' -H 'X-Auth-Key: testing' "http://127.0.0.1:$port/auth/v1.0")" = 200 ]; then
        cat <<EOF
export AWS_ACCESS_KEY_ID=test:tester
export AWS_SECRET_ACCESS_KEY=testing
export AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
EOF
        return 0
      fi
    fi
    for s in memcached account container object proxy; do
      if ! kill -0 "$(cat "$d/run/$s.pid")" 2>/dev/null; then
        echo "s3-server: $s exited at start:" >&2
        tail -20 "$d/log/$s.log" >&2
        stop_all "$d"
        exit 1
      fi
    done
    sleep 0.2
  done
  echo "s3-server: not ready after 30 s (logs in $d/log)" >&2
  stop_all "$d"
  exit 1
}

stop_all() {
  local d=$1 pid s i
  for s in proxy object container account memcached; do
    [ -f "$d/run/$s.pid" ] || continue
    pid=$(cat "$d/run/$s.pid")
    # Each daemon leads its own session: signal the whole session (wsgi workers included).
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for i in $(seq 1 100); do
    local alive=0
    for s in proxy object container account memcached; do
      [ -f "$d/run/$s.pid" ] || continue
      pid=$(cat "$d/run/$s.pid")
      # Zombies (state Z) are gone as far as we are concerned.
      if [ -n "$(ps -o pid= -s "$pid" 2>/dev/null | while read -r p; do st=$(ps -o stat= -p "$p" 2>/dev/null); [ -n "$st" ] && [ "${st#Z}" = "$st" ] && echo "$p"; done)" ]; then alive=1; fi
    done
    [ $alive = 0 ] && break
    [ "$i" = 50 ] && for s in proxy object container account memcached; do [ -f "$d/run/$s.pid" ] && kill -KILL -- "-$(cat "$d/run/$s.pid")" 2>/dev/null; done
    sleep 0.1
  done
  rm -f "$d"/run/*.pid
}

case "$cmd" in
  install) install_packages ;;
  start) start "$@" ;;
  stop)
    [ -n "$dir" ] || { echo "usage: $0 stop DIR" >&2; exit 64; }
    [ -d "$dir" ] && stop_all "$(cd "$dir" && pwd)"
    ;;
  *) echo "usage: $0 install | start DIR [PORT] | stop DIR" >&2; exit 64 ;;
esac
