"""The local cluster of the tests and the demo, one module per component: `procs` (processes, commands,
waits; shared with tests/support and the demo), `tools` (the pinned binaries), `kubecli` (the kubectl and
helm runners of hack/, the tests and the benchmark), `pki`, `controlplane`, `network`, `node` (containerd,
kubelet, kube-proxy), `dns` (CoreDNS), `images`. `hack/cluster.py` is its command line."""
