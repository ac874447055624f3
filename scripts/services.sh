#!/usr/bin/env bash
# Makes sure Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432, trust auth, database
# "test") run, installing them from Debian packages on a machine that has neither.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
apt_install() {
  [ -n "${APT_UPDATED:-}" ] || { apt-get update -qq >/dev/null; APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! port_open 6379; then
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 50); do port_open 6379 && break; sleep 0.1; done
  echo "started Redis"
fi

if ! port_open 5432; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql
    conf=$(ls -d /etc/postgresql/*/main | head -n1)
    sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$conf/pg_hba.conf"
  fi
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 1 100); do port_open 5432 && break; sleep 0.1; done
  echo "started PostgreSQL"
fi
if ! psql -h 127.0.0.1 -U postgres -d test -c 'select 1' >/dev/null 2>&1; then
  psql -h 127.0.0.1 -U postgres -c 'CREATE DATABASE test' >/dev/null 2>&1 \
    || su postgres -c "psql -c 'CREATE DATABASE test'" >/dev/null
fi

# A local three-master Redis Cluster (127.0.0.1:7301-7303, no persistence) for the store
# tests of `redis+cluster://`. Started only if a node is not answering; bounded waits.
CLUSTER_PORTS="7301 7302 7303"
CLUSTER_DIR=${REDIS_CLUSTER_DIR:-/tmp/redis-cluster-kb}
cluster_ok() { redis-cli -p 7301 cluster info 2>/dev/null | grep -q '^cluster_state:ok'; }
if ! cluster_ok; then
  command -v redis-server >/dev/null || apt_install redis-server
  for p in $CLUSTER_PORTS; do
    port_open "$p" && continue
    rm -rf "$CLUSTER_DIR/$p" && mkdir -p "$CLUSTER_DIR/$p"
    redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file "$CLUSTER_DIR/$p/nodes.conf" --dir "$CLUSTER_DIR/$p" \
      --save "" --appendonly no --daemonize yes --logfile "$CLUSTER_DIR/$p/redis.log"
  done
  for p in $CLUSTER_PORTS; do
    for _ in $(seq 1 50); do port_open "$p" && break; sleep 0.1; done
    port_open "$p" || { echo "Redis Cluster node $p did not start" >&2; exit 1; }
  done
  # Nodes that know no slots yet: form the cluster (a no-op error if already formed).
  if redis-cli -p 7301 cluster info | grep -q '^cluster_slots_assigned:0'; then
    redis-cli --cluster create 127.0.0.1:7301 127.0.0.1:7302 127.0.0.1:7303 \
      --cluster-replicas 0 --cluster-yes >/dev/null
  fi
  for _ in $(seq 1 100); do cluster_ok && break; sleep 0.1; done
  cluster_ok || { echo "Redis Cluster on 7301-7303 is not ok" >&2; exit 1; }
  echo "started Redis Cluster (7301-7303)"
fi

# Debian's faketime preload library: the clock-skew test runs server instances with their
# wall clock moved (monotonic clock untouched).
if ! ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1; then
  apt_install faketime
  echo "installed faketime"
fi
