#!/bin/sh
# Writes a Sentinel's configuration into $1 (a memory-backed emptyDir: Sentinel rewrites its
# file, and it holds the password it logs in to the stores with). The primary it starts
# monitoring: the one the other Sentinels name; else the data pod that reports itself primary
# (ROLE); else $FIRST (the very first start). The Sentinels then agree among themselves.
#   CLI                   redis-cli or valkey-cli
#   REPLICATION_PASSWORD  the password of the stores' user "sentinel"
#   MASTER_NAME           the name the primary is monitored under
#   SENTINELS             "host:port ..." of the Sentinels (this one included)
#   STORES                "host ..." of the data pods
#   SELF / FIRST          this Sentinel's and the first data pod's stable name
#   QUORUM                Sentinels that must agree the primary is down (2 of 3)
#   DOWN_AFTER_MS         how long unanswered before a Sentinel calls the primary down
#   STORE_PORT            the data pods' port (6379 unless set)
set -eu
out="$1"
. "$(dirname "$0")/common.sh"
for var in CLI REPLICATION_PASSWORD MASTER_NAME SENTINELS STORES SELF FIRST QUORUM DOWN_AFTER_MS; do
  eval "value=\${$var:-}"
  if [ -z "$value" ]; then echo "sentinel.sh: $var is empty" >&2; exit 1; fi
done

port="${STORE_PORT:-6379}"

primary=$(primary_named_by_sentinels "$SELF")
if [ -z "$primary" ]; then
  # The stores' password reaches redis-cli/valkey-cli through the environment only.
  export REDISCLI_AUTH="$REPLICATION_PASSWORD" VALKEYCLI_AUTH="$REPLICATION_PASSWORD"
  for store in $STORES; do
    role=$(timeout 3 "$CLI" --no-auth-warning --user sentinel -h "$store" -p "$port" ROLE \
      2>/dev/null | head -n 1 || true)
    if [ "$role" = "master" ]; then primary="$store"; break; fi
  done
fi
[ -n "$primary" ] || primary="$FIRST"

umask 077
cat > "$out/sentinel.conf.tmp" <<CONF
port 26379
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $SELF
sentinel monitor $MASTER_NAME $primary $port $QUORUM
sentinel auth-user $MASTER_NAME sentinel
sentinel auth-pass $MASTER_NAME $(quoted "$REPLICATION_PASSWORD")
sentinel down-after-milliseconds $MASTER_NAME $DOWN_AFTER_MS
sentinel failover-timeout $MASTER_NAME 60000
sentinel parallel-syncs $MASTER_NAME 1
CONF
mv "$out/sentinel.conf.tmp" "$out/sentinel.conf"
echo "sentinel.sh: $SELF monitors $MASTER_NAME at $primary"
