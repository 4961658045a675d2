"""`target` and `runner_pool` → Ray label selectors (spec §12), against node lists as the gateway
sees them (`rayapi.live_nodes`). Pure: runs in the pytest process, no cluster."""

from __future__ import annotations

from typing import Any

from loomrun.remote.placement import infeasible, placement
from loomrun.workflow.model import Job

JOB = Job(name="build", stage="s", script=("true",), target="linux", runner_pool="big")


def node(**labels: str) -> dict[str, Any]:
    return {"id": "n", "address": "10.0.0.2", "labels": labels, "resources": {"CPU": 4.0}}


def test_a_cluster_that_labels_no_target_is_taken_as_all_linux() -> None:
    nodes = [node(**{"loom.pool": "big"})]
    place = placement(JOB, nodes)
    assert place.selector == (("loom.pool", "big"),)
    assert infeasible(JOB, place, nodes) is None


def test_once_a_node_carries_a_target_the_job_needs_its_own() -> None:
    nodes = [node(**{"loom.pool": "big"}), node(**{"loom.pool": "big", "loom.target": "other"})]
    place = placement(JOB, nodes)
    assert place.selector == (("loom.pool", "big"), ("loom.target", "linux"))
    assert infeasible(JOB, place, nodes) == ('no live node in pool "big" (no node carries loom.pool=big, '
                                             "loom.target=linux)")
    assert infeasible(JOB, place, [*nodes, node(**{"loom.pool": "big", "loom.target": "linux"})]) is None
