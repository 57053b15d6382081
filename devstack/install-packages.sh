#!/usr/bin/env bash
# Install the Debian packages the local stack needs, only those missing (idempotent).
#
# The packages' own services must not run: policy-rc.d (exit 101) keeps their postinst
# scripts from starting rabbitmq-server / redis-server, and any service that started anyway
# is stopped. Installing rabbitmq-server (erlang-base) also leaves an `epmd -daemon` on
# 0.0.0.0:4369 that no service manager tracks; the stack runs its own epmd on loopback, so
# an epmd that was NOT running before this install is stopped here (one that was running
# before belongs to someone else and is left alone).
#
# usage: devstack/install-packages.sh   (as root; prints what it installs and stops)
set -euo pipefail

missing=()
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v wrk >/dev/null || missing+=(wrk)
command -v java >/dev/null || missing+=(default-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
"${SYS_PY:-python3}" -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v etcd >/dev/null || missing+=(etcd-server)  # the cluster test (devstack/cluster)
command -v chromium >/dev/null || missing+=(chromium)  # the browser tests (Selenium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v ss >/dev/null || missing+=(iproute2)  # the exposure test (ss -ltnp)
# The real-pod node of the cluster test (devstack/cluster/node.py, images.py): container
# runtime, CNI plugins, kube-proxy's iptables/conntrack, image builders, pause.c's compiler.
command -v containerd >/dev/null || missing+=(containerd)
command -v runc >/dev/null || missing+=(runc)
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
command -v conntrack >/dev/null || missing+=(conntrack)
command -v iptables >/dev/null || missing+=(iptables)
command -v socat >/dev/null || missing+=(socat)
command -v buildah >/dev/null || missing+=(buildah)
command -v debootstrap >/dev/null || missing+=(debootstrap)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || missing+=(busybox-static)
command -v gcc >/dev/null || missing+=(gcc)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -n "$(find /usr/lib -maxdepth 2 -name libc.a -print -quit 2>/dev/null)" ] || missing+=(libc6-dev)
[ ${#missing[@]} -eq 0 ] && exit 0

epmd_before=" $( (pgrep -x epmd || true) | tr "\n" " ") "
echo "apt-get install: ${missing[*]}"
made_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  made_policy=1
fi
rc=0
( export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" ) || rc=$?
[ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
for svc in rabbitmq-server redis-server etcd; do service "$svc" stop >/dev/null 2>&1 || true; done
# A containerd installed just now must not run as a service: the node starts its own, by pid.
# One that was installed before (e.g. Docker's) is someone else's and is left alone.
case " ${missing[*]} " in *" containerd "*) service containerd stop >/dev/null 2>&1 || true ;; esac

for pid in $(pgrep -x epmd || true); do
  case "$epmd_before" in *" $pid "*) continue ;; esac
  cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)
  [ -n "$cmd" ] || continue  # a zombie: nothing listens
  echo "stopping epmd pid $pid ($cmd): the package install started it"
  kill "$pid" 2>/dev/null || true
done
exit "$rc"
