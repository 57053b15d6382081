"""A throwaway Kubernetes control plane on loopback for the KubeRay manifests' cluster test.

etcd (Debian's etcd-server), kube-apiserver, kube-controller-manager and kube-scheduler built
from the ``k8s.io/kubernetes`` Go module, KWOK (fake nodes, so Pods schedule and run) and the
KubeRay operator, all started by pid under ``.devstack/cluster`` and stopped by pid.

    python -m devstack.cluster build      # build what is missing (cached in .devstack/)
"""
