#!/usr/bin/env bash
# Install Debian's etcd-server (the cluster test's etcd) when etcd is missing; idempotent.
# The package's own etcd service must not run: policy-rc.d (exit 101) keeps its postinst
# from starting it, and a service that started anyway is stopped. The cluster test starts
# its own etcd on loopback (devstack/cluster/control_plane.py).
#
# usage: devstack/cluster/install-etcd.sh   (as root)
set -euo pipefail

command -v etcd >/dev/null && exit 0
echo "apt-get install: etcd-server"
made_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  made_policy=1
fi
rc=0
( export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends etcd-server ) || rc=$?
[ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
service etcd stop >/dev/null 2>&1 || true
exit "$rc"
