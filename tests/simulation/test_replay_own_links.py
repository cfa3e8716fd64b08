"""A real run folder replayed onto its own links gives back every round's recorded
projection: one projection code path in the run and in the replay."""

from __future__ import annotations

import pytest

from fedvit.wire.links import DEFAULT_COSTS
from simulate import FAST, simulate
from tools.replay.engine import replay_run
from tools.replay.specs import parse_links
from tools.report.load import load_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    outcome = simulate({**FAST, "strategy": "fedlora", "fraction-evaluate": 1.0,
                        "link-profile": "heterogeneous", "outputs-dir": str(out)})
    return load_run(outcome.run_dir)


def test_a_run_replayed_onto_its_own_links_is_its_projection(run):
    assert {p["call-s"] for p in run.phases} == {DEFAULT_COSTS.call_s}
    assert run.summary["wire-costs"] == {**DEFAULT_COSTS.as_dict(), "source": "default"}
    assert {n["phase"] for n in run.nodes} == {"train", "evaluate"}
    # own: each node's recorded link; heterogeneous with the run config's base values and
    # seed: the same per-partition draw the run made.
    for spec in ("own", "heterogeneous:10/10/50"):
        replay = replay_run(run, parse_links(spec))
        assert [r.round for r in replay.rounds] == [p["round"] for p in run.phases] == [1, 2]
        for got, row in zip(replay.rounds, run.phases, strict=True):
            assert round(got.simulation_s, 3) == round(row["projected-s"], 3)
            assert round(got.deployment_s, 3) == round(row["deployment-s"], 3)
            assert got.simulation_s == pytest.approx(row["projected-s"], abs=1e-9)
            assert got.deployment_s == pytest.approx(row["deployment-s"], abs=1e-9)
        assert [r.accuracy for r in replay.rounds] == [
            r["central-accuracy"] for r in run.rounds]
    # A uniform link of the configured values is not the run's heterogeneous links.
    uniform = replay_run(run, parse_links("10/10/50"))
    assert uniform.rounds[0].simulation_s != pytest.approx(run.phases[0]["projected-s"],
                                                           abs=1e-6)
