"""Seeded sampling: the sample of a round depends on ``seed``, the round
and the nodes' partitions, not on node ids. The whole-run check is
``simulation/test_resume.py``."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg

from strategies.sampling import SeededSampling


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
