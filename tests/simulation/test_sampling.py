"""Same seed, same run, also when only some nodes train (issue 13, item 4): the sample of a
round depends on ``seed``, the round and the nodes' partitions, not on node ids."""

from __future__ import annotations

import numpy as np
from flwr.serverapp.strategy import FedAvg

from simulate import FAST, simulate
from strategies.sampling import QUERY_PHASE, SeededSampling


def _sampler(partitions: dict[int, int]) -> SeededSampling:
    strategy = SeededSampling(FedAvg(), fraction_train=0.5, fraction_evaluate=1.0, min_nodes=2,
                              seed=42)
    strategy.partitions = dict(partitions)
    return strategy


def test_sample_depends_on_partitions_not_node_ids():
    a = _sampler({101: 0, 7: 1, 55: 2, 9: 3})
    b = _sampler({3: 3, 12: 2, 999: 1, 4: 0})  # other (random) ids, the same partitions
    for server_round in (1, 2, 3):
        pa = [a.partitions[n] for n in a.sample(server_round, "train", list(a.partitions), 2)]
        pb = [b.partitions[n] for n in b.sample(server_round, "train", list(b.partitions), 2)]
        assert pa == pb and len(set(pa)) == 2
    seen = {tuple(a.partitions[n] for n in a.sample(r, "train", list(a.partitions), 2))
            for r in range(1, 20)}
    assert len(seen) > 1  # and the sample changes from round to round


def _trained(outcome, server_round: int) -> list[int]:
    return sorted(int(c.metrics["partition-id"]) for c in outcome.timeline[server_round].clients
                  if c.phase == "train")


def test_half_the_nodes_rerun_and_resume_give_identical_tensors(tmp_path):
    base = {**FAST, "strategy": "fedlora", "fraction-train": 0.5, "learning-rate": 0.005,
            "outputs-dir": str(tmp_path)}
    full = simulate({**base, "run-name": "full"}, num_nodes=4)
    part = simulate({**base, "num-server-rounds": 1, "run-name": "part"}, num_nodes=4)
    resumed = simulate({**base, "resume-from": str(part.run_dir)}, num_nodes=4)
    assert _trained(full, 1) == _trained(part, 1) and len(_trained(full, 1)) == 2
    assert _trained(full, 2) == _trained(resumed, 2) and len(_trained(full, 2)) == 2
    for key in ("central-accuracy", "central-loss", "train-loss"):
        assert part.rounds[0][key] == full.rounds[0][key], key
    for key, arr in full.result.arrays.items():
        assert np.array_equal(arr.numpy(), resumed.result.arrays[key].numpy()), key
    # The partition queries are booked: one small message each way per node, once.
    query = [r for r in full.books.rows if r.phase == QUERY_PHASE]
    assert sorted((r.round, r.direction, r.tensor_bytes, r.status) for r in query) == (
        [(1, "down", 0, "ok")] * 4 + [(1, "up", 0, "ok")] * 4)
    assert all(r.message_bytes > 0 for r in query) and full.books.mismatches == []
    assert full.summary["estimate-matches-tensor-bytes"]
