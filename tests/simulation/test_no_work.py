"""A run that did no work is not "complete": a client-side refusal names
the run-config key, and where every node fails the same way the run stops early with that
reason, its summary says so and the ServerApp ends with an error."""

from __future__ import annotations

import json

from server_app.summary import RunStopped
from simulate import FAST, stopped


def test_val_fraction_that_empties_the_train_split_stops_the_run_at_round_one(tmp_path):
    err = stopped({**FAST, "val-fraction": 0.999, "outputs-dir": str(tmp_path),
                   "run-name": "a"})
    assert isinstance(err, RunStopped)
    assert "(nothing-aggregated) after rounds []" in str(err)
    assert "'val-fraction' = 0.999 is not allowed" in str(err)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["status"] == "nothing-aggregated"
    assert summary["unaggregated-rounds"] == [1]
    assert summary["completed-rounds"] == [] and summary["final-central-accuracy"] is None
    assert "'val-fraction' = 0.999 is not allowed" in summary["stop-reason"]
    assert "must be" in summary["stop-reason"]
    books = json.loads((tmp_path / "a" / "books.json").read_text())
    assert {row["round"] for row in books} == {1}  # stopped instead of repeating round 2
    errors = [row["detail"] for row in books if row["direction"] == "up"]
    assert len(errors) == 2 and all("'val-fraction' = 0.999" in e for e in errors)
