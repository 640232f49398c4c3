"""The local cluster's command line (hack/localcluster/ is the code):

    python hack/cluster.py up       # control plane, kwok's fake GPU nodes, the real node (RAYVLLM_REAL_NODE=0: none)
    python hack/cluster.py down     # stops everything; checks nothing of ours is left behind
    python hack/cluster.py status

Binaries come from hack/build-tools.sh's cache. State (certificates, etcd data, logs, pid files, kubeconfig)
lives in $RAYVLLM_CLUSTER_DIR (default: <repo>/.cluster). `up` prints `export KUBECONFIG=<path>` last.
Fake nodes: RAYVLLM_GPU_NODES (2), RAYVLLM_GPUS_PER_NODE (8), RAYVLLM_CPU_NODES (1); the real node
advertises RAYVLLM_REAL_NODE_GPUS (4) fake nvidia.com/gpu.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hack.localcluster.cluster import default_cluster, default_plan


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("up", "down", "status"))
    args = parser.parse_args(argv)
    cluster = default_cluster()
    if args.command == "up":
        cluster.up(default_plan())
    elif args.command == "down":
        cluster.down()
        left = cluster.leftovers()
        if left:
            print("left behind after down:\n  " + "\n  ".join(left), file=sys.stderr)
            return 1
    else:
        print(json.dumps(cluster.status(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
