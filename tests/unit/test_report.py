"""fedvit-report on hand-written run folders with known numbers (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedvit import keys
from fedvit.keys import COMPUTE_ROWS, TABLE_ROWS
from fedvit.wire.links import DEFAULT_COSTS, Link
from fedvit.wire.links import FRAME_FACTOR as F
from server_app.timeline import FixedCosts, NodeTimes, format_table
from tools.report.cli import main, make_report
from tools.report.linkmodel import LinkModel, RecordedRound, link_model
from tools.report.load import load_runs
from tools.report.markdown import links_section
from tools.report.plots import PLOTS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NODES = (15855658815669980887, 11876383608496797056)  # real node ids are 64-bit
LATENCY_MS = 50.0
LINK_MBPS = 10.0
ROUNDS = 3

# The keys of a real config.json (server_app.recorder writes cfg.to_dict()).
CONFIG = {
    "strategy": "fedavg", "num-server-rounds": ROUNDS, "fraction-train": 1.0,
    "fraction-evaluate": 1.0, "evaluate-in-train": False, "min-nodes": 2, "local-epochs": 1,
    "batch-size": 32, "learning-rate": 0.002, "model-name": "test_vit", "img-size": 16,
    "patch-size": 4, "pretrained": False, "weights-path": "", "lora-r": 8, "lora-alpha": 16.0,
    "lora-dropout": 0.0, "lora-target-modules": "qkv", "dataset": "digits",
    "partitioner": "iid", "dirichlet-alpha": 0.5, "val-fraction": 0.1, "seed": 42,
    "precision": "auto", "device": "auto", "link-down-mbps": LINK_MBPS,
    "link-up-mbps": LINK_MBPS, "link-latency-ms": LATENCY_MS, "link-profile": "uniform",
    "link-emulate": False, "outputs-dir": "/tmp/fedvit-out",
    # per message: 1.25 s a phase, DEPLOY_FIXED a round
    "deploy-pickup-s": 0.75, "deploy-startup-s": 0.25, "deploy-return-s": 0.25,
}

# Per run: the larger node's message bytes per phase and direction (the other node's are 100
# smaller), round r adds 10 * r * `grow` to the train download; the projected table's
# non-communication rows sum to `fixed` seconds.
FEDAVG = {"strategy": "fedavg", "acc": [0.5, 0.7, 0.8125], "train": (1_000_000, 1_000_500),
          "evaluate": (1_000_200, 600), "grow": 1, "fixed": 1.2, "wall": 2.5}
FEDLORA = {"strategy": "fedlora", "acc": [0.45, 0.6, 0.75], "train": (50_000, 50_400),
           "evaluate": (50_200, 600), "grow": 0, "fixed": 1.0, "wall": 1.75}


def _books(spec: dict) -> list[dict]:
    rows = []
    for r in range(1, ROUNDS + 1):
        for phase in ("train", "evaluate"):
            down, up = spec[phase]
            down += 10 * r * spec["grow"] if phase == "train" else 0
            for i, node in enumerate(NODES):
                less = 100 if i == 0 else 0
                for direction, nbytes in (("down", down - less), ("up", up - less)):
                    carries = direction == "down" or phase == "train"
                    rows.append({"round": r, "phase": phase, "node-id": node,
                                 "direction": direction,
                                 "tensor-bytes": nbytes - 1000 if carries else 0,
                                 "message-bytes": nbytes,
                                 "report-bytes": 98 if direction == "up" else 0,
                                 "status": "ok"})
    return rows


def _totals(books: list[dict], upto: int | None = None, only: int | None = None) -> dict:
    rows = [b for b in books if (upto is None or b["round"] <= upto)
            and (only is None or b["round"] == only)]
    out = {}
    for d in ("down", "up"):
        out[f"{d}-tensor"] = sum(b["tensor-bytes"] for b in rows if b["direction"] == d)
        out[f"{d}-msg"] = sum(b["message-bytes"] for b in rows if b["direction"] == d)
    out["report"] = sum(b["report-bytes"] for b in rows)
    return out


def _critical_comm_s(books: list[dict], r: int) -> float:
    """Down + up per phase of the critical path on the configured links: node 1's, whose
    messages are the larger ones (both nodes' work is the same, ``_nodes``)."""
    total = 0.0
    for phase in ("train", "evaluate"):
        for d in ("down", "up"):
            nbytes = max(b["message-bytes"] for b in books
                         if b["round"] == r and b["phase"] == phase and b["direction"] == d)
            total += LATENCY_MS / 1e3 + F * nbytes * 8 / (LINK_MBPS * 1e6)
    return total


DEPLOY_FIXED = 2.5  # pickup + start-up + return of the deployment view


def _tables(fixed: float, comm: float, wall: float) -> tuple[dict, dict, dict]:
    proj = dict.fromkeys(TABLE_ROWS, 0.0)
    proj.update({"data": 0.1, "backward": 0.4, "optimizer": 0.1, "eval": 0.05,
                 "client-other": 0.05, "transfer": comm, "configure": 0.01,
                 "aggregation": 0.04, "central-eval": 0.15})
    proj["forward"] = fixed - (sum(proj.values()) - comm)
    measured = {k: (0.0 if k == "transfer" else v) for k, v in proj.items()}
    measured["unexplained"] = wall - sum(measured.values())
    deployment = {**proj, "pickup": 1.5, "start-up": 0.5, "return": 0.5}
    return measured, proj, deployment


def _nodes(books: list[dict], r: int, proj: dict) -> list[dict]:
    """``nodes.json`` rows of round ``r``: both nodes do the projected table's client work
    (eval in the evaluate phase, the rest in train), with their books' message bytes."""
    rows = []
    for phase in ("train", "evaluate"):
        work = {k: (proj[k] if (k == "eval") == (phase == "evaluate") else 0.0)
                for k in COMPUTE_ROWS}
        for i, node in enumerate(NODES):
            size = {b["direction"]: b["message-bytes"] for b in books
                    if (b["round"], b["phase"], b["node-id"]) == (r, phase, node)}
            rows.append(NodeTimes(
                r, phase, node, i, False, 0.0, 0.0, dict.fromkeys(keys.STAMPS, 0.0), work, 0.0,
                0.0, size["down"], size["up"], 0, 0, Link(LINK_MBPS, LINK_MBPS, LATENCY_MS)
            ).as_row())
    return rows


def write_run(root: Path, spec: dict, name: str | None = None, **config) -> Path:
    """One run folder with the files (and keys) the results writer leaves."""
    strategy = spec["strategy"]
    run = root / (name or f"20260101-000000-{strategy}")
    run.mkdir(parents=True)
    books = _books(spec)
    rounds, phases, nodes = [], [], []
    for r in range(1, ROUNDS + 1):
        comm = _critical_comm_s(books, r)
        wall = spec["wall"] * (10 if r == 1 else 1)
        measured, proj, depl = _tables(spec["fixed"] * (3 if r == 1 else 1), comm, wall)
        nodes += _nodes(books, r, proj)
        this, cum = _totals(books, only=r), _totals(books, upto=r)
        rounds.append({
            "round": r, "central-accuracy": spec["acc"][r - 1], "central-loss": 2.0 / r,
            "down-mb": this["down-msg"] / 1e6, "up-mb": this["up-msg"] / 1e6,
            "cumulative-mb": (cum["down-msg"] + cum["up-msg"]) / 1e6,
            "down-tensor-bytes": this["down-tensor"], "up-tensor-bytes": this["up-tensor"],
            "down-msg-bytes": this["down-msg"], "up-msg-bytes": this["up-msg"],
            "round-s": wall, "projected-round-s": sum(proj.values()),
            "deployment-round-s": sum(depl.values()),
        })
        row = {"round": r, "wall-s": wall, "critical-compute-s": 1.0,
               "slowest-node": NODES[1], "projected-s": sum(proj.values()),
               "deployment-s": sum(depl.values())}
        for kind, table in (("measured", measured), ("projected", proj), ("deployment", depl)):
            row.update({f"{kind}-{k}": v for k, v in table.items()})
        phases.append({**row, **DEFAULT_COSTS.as_dict()})
    steady = phases[1:]
    table = {kind: {k: sum(p[f"{kind}-{k}"] for p in steady) / len(steady)
                    for k in TABLE_ROWS}
             for kind in ("measured", "projected", "deployment")}
    t = _totals(books)
    tensor, msg = t["down-tensor"] + t["up-tensor"], t["down-msg"] + t["up-msg"]
    summary = {
        "strategy": strategy, "model-name": "test_vit", "parameters": 268372,
        "trainable-parameters": 12938, "rounds": ROUNDS,
        "final-central-accuracy": spec["acc"][-1], "final-central-loss": 2.0 / ROUNDS,
        "wall-s": 40.0, "bytes": t,
        "estimate": {"tensor_bytes_per_message": 0, "num-nodes": 2, "train-clients": 2,
                     "evaluate-clients": 2, "rounds": ROUNDS, "down": t["down-tensor"],
                     "up": t["up-tensor"]},
        "estimate-matches-tensor-bytes": True,
        "framing-overhead-percent": 100 * (msg - tensor) / tensor,
        "report-bytes": t["report"], "books-mismatches": [],
        "first-round-wall-s": phases[0]["wall-s"],
        "steady-round-wall-s": sum(p["wall-s"] for p in steady) / len(steady),
        "steady-critical-compute-s": 1.0,
        "projected-round-s": sum(p["projected-s"] for p in steady) / len(steady),
        "links": {"down-mbps": LINK_MBPS, "up-mbps": LINK_MBPS, "latency-ms": LATENCY_MS,
                  "profile": "uniform"},
        "phase-table": table,
    }
    files = {"config.json": {**CONFIG, "strategy": strategy, **config},
             "summary.json": summary, "rounds.json": rounds, "books.json": books,
             "phases.json": phases, "nodes.json": nodes}
    for fname, data in files.items():
        (run / fname).write_text(json.dumps(data, indent=2) + "\n")
    return run


def md_tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table of ``text`` as rows keyed by the header."""
    tables, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            head = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            for body in lines[i + 2:]:
                if not body.startswith("| "):
                    break
                rows.append(dict(zip(head, [c.strip() for c in body.strip("|").split("|")],
                                     strict=True)))
            tables.append(rows)
    return tables


def row_of(text: str, column: str, label: str) -> dict[str, str]:
    """The row for run ``label`` of the table that has ``column``."""
    for table in md_tables(text):
        if table and column in table[0]:
            return next(r for r in table if r["run"] == label)
    raise AssertionError(f"no table with column {column!r}")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str, list[Path]]:
    root = tmp_path_factory.mktemp("outputs")
    runs = [write_run(root, FEDAVG), write_run(root, FEDLORA)]
    path = make_report(runs, root / "report")
    return path, path.read_text(), runs


def test_every_plot_is_a_png_and_embedded(report):
    path, text, _ = report
    assert path.name == "report.md"
    for name in PLOTS.values():
        png = path.parent / name
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        assert png.stat().st_size > 5_000
        assert f"]({name})" in text


def test_report_has_every_table(report):
    _, text, runs = report
    for heading in ("## Runs", "## Accuracy", "## Bandwidth", "## Where a round's time goes",
                    "## Round time against link bandwidth",
                    "## Time to accuracy on the runs' own links"):
        assert heading in text
    columns = [set(t[0]) for t in md_tables(text)]
    for col in ("final central accuracy", "gap to best (points)", "% of fedavg",
                "comm > ½ round below"):
        assert any(col in c for c in columns), col
    tables = {r.label: r.phase_table for r in load_runs(runs)}
    assert "```\n" + format_table(tables) + "\n```" in text


def test_runs_table_numbers_are_the_fixtures(report):
    _, text, runs = report
    fa, fl = row_of(text, "MB down", "fedavg"), row_of(text, "MB down", "fedlora")
    assert (fa["rounds"], fa["final central accuracy"]) == ("3", "0.8125")
    assert (fl["rounds"], fl["final central accuracy"]) == ("3", "0.7500")
    # fedavg, per round r: down 1,000,000 + 10 r and 999,900 + 10 r (train), 1,000,200 and
    # 1,000,100 (evaluate); up 1,000,500 + 1,000,400 (train), 600 + 500 (evaluate).
    assert (fa["MB down"], fa["MB up"], fa["MB / round"]) == ("12.001", "6.006", "6.002")
    # fedlora: down 50,000 + 49,900 + 50,200 + 50,100; up 50,400 + 50,300 + 600 + 500.
    assert (fl["MB down"], fl["MB up"], fl["MB / round"]) == ("0.601", "0.305", "0.302")
    assert (fa["steady round wall s"], fl["steady round wall s"]) == ("2.500", "1.750")
    for run, row in zip(runs, (fa, fl), strict=True):
        s = json.loads((run / "summary.json").read_text())
        assert row["framing overhead %"] == f"{s['framing-overhead-percent']:.3f}"
        assert row["projected round s"] == f"{s['projected-round-s']:.3f}"


def test_accuracy_gap_and_bytes_ratio(report):
    _, text, _ = report
    assert "Best final central accuracy: **0.8125** (fedavg)." in text
    assert row_of(text, "gap to best (points)", "fedlora")["gap to best (points)"] == "6.25"
    assert row_of(text, "gap to best (points)", "fedavg")["gap to best (points)"] == "0.00"
    ratio = 100 * (600_600 + 305_400) / (12_000_720 + 6_006_000)  # 5.03 %
    assert f"fedlora uses **{ratio:.2f} %** of fedavg's bytes per round" in text
    assert row_of(text, "% of fedavg", "fedlora")["% of fedavg"] == "5.03"


def test_half_communication_bandwidth_by_hand(report):
    _, text, _ = report
    # Steady rounds 2 and 3, slowest path per round: fedavg train down 1,000,000 + 10 r,
    # train up 1,000,500, evaluate down 1,000,200, evaluate up 600 -> mean 3,001,325 bytes;
    # fixed 1.2 s, 4 messages x 50 ms: B* = 8 x 3,001,325 / (1.2 - 0.2) bit/s.
    fedavg = F * 8 * 3_001_325 / (1.2 - 4 * 0.05) / 1e6
    fedlora = F * 8 * (50_000 + 50_400 + 50_200 + 600) / (1.0 - 4 * 0.05) / 1e6
    assert f"{fedavg:.3f}" == "25.105" and f"{fedlora:.3f}" == "1.581"  # x 1514/1448
    assert f"fedavg: communication is more than half of the projected round below " \
           f"**{fedavg:.3f} Mbit/s**." in text
    assert f"below **{fedlora:.3f} Mbit/s**." in text
    row = row_of(text, "comm > ½ round below", "fedavg")
    assert row["model at run's links s"] == row["run's projected round s"]


def test_no_crossover_names_the_faster_run(report):
    _, text, _ = report
    avg = [1.4 + F * 8 * 3_001_325 / (b * 1e6) for b in (10, 1000)]
    lora = [1.2 + F * 8 * 151_200 / (b * 1e6) for b in (10, 1000)]
    assert "fedlora is faster everywhere" in text
    assert (f"{lora[0]:.3f} s against {avg[0]:.3f} s at 10.000 Mbit/s "
            f"({avg[0] / lora[0]:.2f}× faster)") in text
    assert (f"{lora[1]:.3f} s against {avg[1]:.3f} s at 1.000 Gbit/s "
            f"({avg[1] / lora[1]:.2f}× faster)") in text


def test_crossover_when_the_light_run_computes_longer(tmp_path):
    runs = load_runs([write_run(tmp_path, FEDAVG),
                      write_run(tmp_path, {**FEDLORA, "fixed": 3.0})])
    text = links_section(runs, [link_model(r) for r in runs])  # the report's text, no plots
    # 1.4 + 8 x 3,001,325 / B = 3.2 + 8 x 151,200 / B
    cross = F * 8 * (3_001_325 - 151_200) / (3.2 - 1.4) / 1e6
    assert f"cross at **{cross:.3f} Mbit/s**" in text
    assert "below it fedlora is faster, above it fedavg." in text


def test_main_prints_the_report_in_a_default_folder(tmp_path, capsys):
    runs = [write_run(tmp_path, FEDAVG), write_run(tmp_path, FEDLORA)]
    assert main([str(r) for r in runs]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.name == "report.md" and path.exists()
    assert path.parent.parent == tmp_path and path.parent.name.startswith("report-")


def test_runs_sharing_a_strategy_are_told_apart(tmp_path):
    runs = [write_run(tmp_path, FEDLORA, "a"),
            write_run(tmp_path, FEDLORA, "b", **{"img-size": 32}), write_run(tmp_path, FEDAVG)]
    labels = [r.label for r in load_runs(runs)]
    assert labels == ["fedlora img-size=16", "fedlora img-size=32", "fedavg"]


def test_an_unfinished_run_is_a_clear_error(tmp_path, capsys):
    run = write_run(tmp_path, FEDAVG)
    (run / "summary.json").unlink()
    with pytest.raises(SystemExit) as e:
        main([str(run), "--out", str(tmp_path / "r")])
    assert e.value.code == 2
    assert "summary.json is missing" in capsys.readouterr().err


def test_the_deployment_curve_adds_the_fixed_costs(tmp_path):
    run = load_runs([write_run(tmp_path, FEDLORA)])[0]
    model = link_model(run)
    for mbps in (1.0, 10.0, 1000.0):
        assert model.deployment_round_s(mbps) == pytest.approx(model.round_s(mbps)
                                                               + DEPLOY_FIXED)


def test_link_lab_runs_show_wire_against_books(tmp_path):
    run = write_run(tmp_path, FEDLORA)
    summary = json.loads((run / "summary.json").read_text())
    summary["wire"] = {"0": {"down-wire-bytes": 1_100, "down-books-bytes": 1_000,
                             "down-wire-per-books": 1.1, "up-wire-bytes": 2_600,
                             "up-books-bytes": 2_000, "up-wire-per-books": 1.3}}
    (run / "summary.json").write_text(json.dumps(summary))
    text = make_report([run], tmp_path / "r").read_text()
    row = row_of(text, "down wire / books", "fedlora")
    assert (row["partition"], row["down wire B"], row["up books B"]) == ("0", "1,100", "2,000")
    assert (row["down wire / books"], row["up wire / books"]) == ("1.100", "1.300")


def test_runs_with_links_from_node_config_show_each_nodes_link(tmp_path):
    run = write_run(tmp_path, FEDLORA)
    summary = json.loads((run / "summary.json").read_text())
    summary["links"] = {**summary["links"], "profile": "node-config", "latency-ms": 0.0,
                        "nodes": {"0": {"link-down-mbps": 8.0, "link-up-mbps": 2.0,
                                        "link-latency-ms": 0.0, "link-real": 1.0}}}
    (run / "summary.json").write_text(json.dumps(summary))
    text = make_report([run], tmp_path / "r").read_text()
    assert row_of(text, "links", "fedlora")["links"] == "per node: 0: 8.0/2.0 Mbit/s, 0.0 ms"
    # The sweep puts every node on one link: the run's own projection is not on the curve.
    assert row_of(text, "model at run's links s", "fedlora")["model at run's links s"] == "n/a"
    assert "is not a point of its curve" in text


def _reply(node: int, forward_s: float, down: int, up: int) -> NodeTimes:
    work = {k: (forward_s if k == "forward" else 0.0) for k in COMPUTE_ROWS}
    return NodeTimes(2, "train", node, node, False, 0.0, 0.0, dict.fromkeys(keys.STAMPS, 0.0),
                     work, 0.0, 0.0, down, up, 0, 0, Link(LINK_MBPS, LINK_MBPS, LATENCY_MS))


def test_the_curve_follows_the_critical_path_of_each_bandwidth():
    """Node 1 sends the most, node 2 works the longest: at each bandwidth the round is the
    slower of their two whole paths (the timeline's rule), never node 1's bytes with node
    2's work (the report's former rule: the largest message of any node per direction)."""
    heavy, busy = _reply(1, 0.1, 2_000_000, 1_000_000), _reply(2, 3.0, 10_000, 10_000)
    server = {"configure": 0.01, "send": 0.0, "aggregation": 0.04, "central-eval": 0.15}
    model = LinkModel((RecordedRound((heavy, busy), server),), LATENCY_MS,
                      FixedCosts(1.0, 2.0, 0.5))
    latencies = 2 * LATENCY_MS / 1e3

    def round_s(work_s: float, nbytes: int, mbps: float) -> float:
        return 0.2 + work_s + latencies + F * 8 * nbytes / (mbps * 1e6)

    for mbps in (1.0, 10.0, 100.0, 1000.0):
        expected = max(round_s(0.1, 3_000_000, mbps), round_s(3.0, 20_000, mbps))
        assert model.round_s(mbps) == pytest.approx(expected)
        assert model.deployment_round_s(mbps) == pytest.approx(expected + 3.5)
    assert model.critical(1.0).down_bytes == pytest.approx(F * 2_000_000)  # heavy's path
    assert model.critical(1000.0).down_bytes == pytest.approx(F * 10_000)  # busy's path
    # The former rule at 10 Mbit/s: busy's 3 s of work plus heavy's 3 MB, 2 s too long.
    assert round_s(3.0, 3_000_000, 10.0) - model.round_s(10.0) > 2.0
    # Communication is more than half the round while heavy is critical, and far less once
    # busy is: the half-communication bandwidth is where the critical path changes.
    switch = F * 8 * (3_000_000 - 20_000) / (3.0 - 0.1) / 1e6
    assert model.half_comm_mbps() == pytest.approx(switch, rel=1e-9)


def test_runs_of_one_folder_name_or_one_folder_twice_get_different_labels(tmp_path):
    a = write_run(tmp_path / "x", FEDAVG, "fedavg")
    b = write_run(tmp_path / "y", FEDAVG, "fedavg")  # the same config and folder name
    labels = [r.label for r in load_runs([a, b, a])]
    assert len(set(labels)) == 3
    assert labels[1] == "fedavg fedavg (y/fedavg)"
