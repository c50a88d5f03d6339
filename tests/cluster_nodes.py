"""A Ray cluster of a head and worker nodes in one process (``ray.cluster_utils.Cluster``), for
tests/test_cluster.py. Prints the head's address, then answers commands read on stdin:
``add NAME`` (a worker with 2 CPUs and the custom resource NAME; prints its node id) and
``kill NAME`` (SIGKILLs that worker's raylet and workers, as a lost machine; prints ``killed``).

It runs apart from the test process, whose session Ray (``ray_session``) it must not meet.
"""

from __future__ import annotations

import sys

from ray.cluster_utils import Cluster


def main() -> None:
    # The head runs the drivers and no trial: every trial runs on a worker node.
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    nodes = {}
    print(cluster.address, flush=True)
    for line in sys.stdin:
        command, name = line.split()
        if command == "add":
            nodes[name] = cluster.add_node(num_cpus=2, resources={name: 1})
            cluster.wait_for_nodes()
            print(nodes[name].node_id, flush=True)
        elif command == "kill":
            cluster.remove_node(nodes.pop(name), allow_graceful=False)
            print("killed", flush=True)
    cluster.shutdown()


if __name__ == "__main__":
    main()
