#!/bin/sh
# Writes a Redis/Valkey data pod's configuration into $1 (a memory-backed emptyDir), from
# the weather-credentials Secret passed in as env vars (never a command line):
#   users.acl   default = the app and Grafana; replication = the replica link; sentinel = the
#               Sentinels (the commands Sentinel needs, nothing else); SHA-256 hashes only.
#   store.conf  the ACL file, this pod's announced name, the replica link's login and, unless
#               this pod is the primary, `replicaof` the primary.
# Which pod is the primary: the one the Sentinels name (asked one after the other); when none
# answers (the very first start) $FIRST. A pod the Sentinels still name as primary but that
# lost its data (no AOF) exits instead of starting empty as a primary its replica would copy:
# the Sentinels promote the replica meanwhile, and the next try starts as its replica.
#   CLI                redis-cli or valkey-cli
#   PASSWORD           the app's password (user default)
#   REPLICATION_PASSWORD  the replica link's and the Sentinels' password
#   MASTER_NAME        the name the Sentinels monitor the primary under
#   SENTINELS          "host:port host:port ..."
#   SELF / FIRST       this pod's and the first pod's stable name (pod.headless-service)
#   DATA               the data directory (its appendonlydir is the AOF)
#   STORE_PORT         the data pods' port (6379 unless set)
set -eu
out="$1"
. "$(dirname "$0")/common.sh"
for var in CLI PASSWORD REPLICATION_PASSWORD MASTER_NAME SENTINELS SELF FIRST DATA; do
  eval "value=\${$var:-}"
  if [ -z "$value" ]; then echo "store.sh: $var is empty" >&2; exit 1; fi
done
if [ "$PASSWORD" = "$REPLICATION_PASSWORD" ]; then
  echo "store.sh: the app and replication passwords must differ" >&2; exit 1
fi

sha() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
port="${STORE_PORT:-6379}"

primary=$(primary_named_by_sentinels)
if [ -z "$primary" ]; then
  primary="$FIRST"
elif [ "$primary" = "$SELF" ] && [ ! -d "$DATA/appendonlydir" ]; then
  echo "store.sh: the Sentinels name this empty pod primary; waiting for their failover" >&2
  exit 1
fi

umask 077
cat > "$out/users.acl.tmp" <<ACL
user default on #$(sha "$PASSWORD") ~* &* +@all -@admin -flushall -flushdb +role
user replication on #$(sha "$REPLICATION_PASSWORD") -@all +psync +replconf +ping
user sentinel on #$(sha "$REPLICATION_PASSWORD") allchannels -@all +multi +exec +slaveof +replicaof +ping +subscribe +publish +info +role +config|rewrite +client|setname +client|kill +script|kill
ACL
cat > "$out/store.conf.tmp" <<CONF
aclfile $out/users.acl
replica-announce-ip $SELF
masteruser replication
masterauth $(quoted "$REPLICATION_PASSWORD")
CONF
if [ "$primary" != "$SELF" ]; then
  echo "replicaof $primary $port" >> "$out/store.conf.tmp"
fi
mv "$out/users.acl.tmp" "$out/users.acl"
mv "$out/store.conf.tmp" "$out/store.conf"
echo "store.sh: $SELF starts as $( [ "$primary" = "$SELF" ] && echo primary || echo "replica of $primary")"
