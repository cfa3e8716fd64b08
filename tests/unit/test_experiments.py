"""The experiments command: its grid, and a rerun that skips complete runs."""

from __future__ import annotations

import tools.experiments as experiments
from fedvit.config.appconfig import AppConfig


def test_grid_varies_one_factor_at_a_time_with_the_same_seed():
    base = AppConfig.from_run_config({"weights-path": ""})
    runs = dict(experiments.grid(base, quick=False))
    fedlora = {name: o for name, o in runs.items() if o["strategy"] == "fedlora"}
    assert "fedlora" in fedlora and fedlora["fedlora"] == {"strategy": "fedlora"}
    assert fedlora["fedlora-img-size=32"] == {"strategy": "fedlora", "img-size": 32}
    assert {o.get("local-epochs") for o in fedlora.values()} >= {1, 5, 10}
    assert all("seed" not in o for o in runs.values())
    assert {o.get("codec-up") for o in fedlora.values()} >= {"fp16", "int8", "topk:0.1"}
    assert any(o.get("lora-aggregation") == "ffa" for o in fedlora.values())
    fedavg = [o for o in runs.values() if o["strategy"] == "fedavg"]
    assert len(fedavg) == len(fedlora) - 4  # the same factors, without the LoRA-only ones


def test_rerun_skips_complete_runs(tmp_path, monkeypatch):
    base = AppConfig.from_run_config({"num-server-rounds": 2})
    names = [name for name, _ in experiments.grid(base, quick=True)]
    for name in names[:2]:  # two runs already complete
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "summary.json").write_text("{}")
    (tmp_path / "runs" / names[2]).mkdir(parents=True)  # interrupted: no summary.json
    ran: list[str] = []
    reported: list[list[str]] = []

    def fake_run(name, overrides, out, nodes):
        ran.append(name)
        return True

    monkeypatch.setattr(experiments, "run_one", fake_run)
    monkeypatch.setattr("tools.report.cli.main", lambda argv: reported.append(argv))
    experiments.main(["--quick", "--out", str(tmp_path)])
    assert ran == names[2:]
    assert reported and reported[0][:len(names)] == [str(tmp_path / "runs" / n)
                                                     for n in names]
