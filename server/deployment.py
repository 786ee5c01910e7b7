"""A plan as Helm values for helm/codeserve: `codeserve plan --helm-values`.

The chart never re-implements the planner; these values pin what the plan chose (model, precision, degrees, nodes)
so that every pod of the release plans the same thing, and size the pods to it: GPUs per pod, pods, and the
multi-node group (LeaderWorkerSet) when the plan spans nodes.
"""

from __future__ import annotations

from typing import Any

from .planner.fleet import Fleet
from .roles import role_spec
from .settings import Settings


def helm_values(fleet: Fleet, settings: Settings) -> dict[str, Any]:
    first = fleet.served[0].option
    config: dict[str, str] = {"CODESERVE_ROLE": settings.role,
                              "CODESERVE_MAX_CONCURRENT_SEQUENCES": str(settings.max_concurrent_sequences),
                              "CODESERVE_MAX_MODEL_LEN": str(first.max_model_len)}
    if first.device == "cpu":
        return {"image": {"flavor": "cpu"}, "gpu": {"count": 0}, "replicaCount": 1, "multiNode": {"enabled": False},
                "config": config}
    if len(fleet.served) == 1:
        config |= {"CODESERVE_MODEL": first.model.id, "CODESERVE_PRECISION": first.precision,
                   "CODESERVE_TENSOR_PARALLEL_SIZE": str(first.tensor_parallel_size)}
        if first.pipeline_parallel_size > 1:
            # One pod per node: each pod holds a TP group, the LeaderWorkerSet holds the stages; CODESERVE_NODES is
            # set by the chart from multiNode.size.
            return {"gpu": {"count": first.tensor_parallel_size}, "replicaCount": first.replicas,
                    "multiNode": {"enabled": True, "size": first.pipeline_parallel_size}, "config": config}
        return {"gpu": {"count": first.tensor_parallel_size}, "replicaCount": first.replicas,
                "multiNode": {"enabled": False}, "config": config}
    # Several roles run in one pod (one server routing by model): it gets every GPU the roles use, and each role's
    # model is pinned by the setting its row names (CODESERVE_MODEL, CODESERVE_CHAT_MODEL).
    config |= {f"CODESERVE_{role_spec(s.role).model_setting.upper()}": s.option.model.id for s in fleet.served}
    gpus = len({index for served in fleet.served for index in served.gpus})
    return {"gpu": {"count": gpus}, "replicaCount": 1, "multiNode": {"enabled": False}, "config": config}
