"""fedvit-replay: time-aware link pricing, device factors, specs and traces, and the command
on hand-written run folders (``test_report.write_run``) with hand-computed numbers."""

from __future__ import annotations

import json

import pytest
from test_report import FEDAVG, FEDLORA, LATENCY_MS, PNG_SIGNATURE, write_run

from fedvit import keys
from fedvit.config.appconfig import AppConfig
from fedvit.keys import COMPUTE_ROWS
from fedvit.wire.links import FRAME_FACTOR as F
from fedvit.wire.links import Link, LinkCurve, WireCosts, node_link
from server_app.timeline import NodeTimes, project
from tools.replay.cli import main
from tools.replay.engine import recorded, replay_run
from tools.replay.rank import compare
from tools.replay.specs import SpecError, parse_devices, parse_links
from tools.replay.traces import TraceError, read_trace
from tools.report.load import load_run, load_runs

NO_FRAMING = WireCosts(0.0, 0.0, 0.0)
RATE_STEP = LinkCurve((0.0, 1.0), (Link(8.0, 8.0, 0.0), Link(16.0, 16.0, 0.0)))


def test_a_transfer_that_straddles_a_rate_change_integrates_over_it():
    # 1 MB (F MB on the wire) sent at 0.5 s: 0.5 s at 8 Mbit/s carry 4 Mbit, the rest goes
    # at 16 Mbit/s.
    assert RATE_STEP.down_s(0.5, 1_000_000) == pytest.approx(0.5 + (8e6 * F - 4e6) / 16e6)
    # Entirely before or after the change: the static link's time.
    assert RATE_STEP.down_s(1.0, 1_000_000) == Link(16.0, 16.0, 0.0).down_s(1_000_000)
    assert RATE_STEP.up_s(0.0, 100_000) == Link(8.0, 8.0, 0.0).up_s(100_000)
    # Object by object, two calls in flight: 4 objects of 250 kB without call costs move
    # at the link's rate, so the straddling message takes the same time as one bulk.
    assert RATE_STEP.down_s(0.5, 1_000_000, 4, NO_FRAMING) == pytest.approx(
        0.5 + (8e6 * F - 4e6) / 16e6)


def test_latency_is_the_one_in_force_when_a_message_is_sent():
    curve = LinkCurve((0.0, 10.0), (Link(100.0, 100.0, 50.0), Link(100.0, 100.0, 200.0)))
    calls = WireCosts(0.02, 0.0, 0.0)
    # 10 empty objects: each half a call (20 ms + a round trip), after one latency.
    assert curve.down_s(0.0, 0, 10, calls) == pytest.approx(0.05 + 10 * (0.02 + 0.1) / 2)
    assert curve.down_s(10.0, 0, 10, calls) == pytest.approx(0.2 + 10 * (0.02 + 0.4) / 2)
    # Sent at 9.9 s it ends after the change, at the latency it started with.
    assert curve.down_s(9.9, 0, 10, calls) == pytest.approx(0.65)


def _node(node: int, partition: int, forward: float, down: int, up: int,
          phase: str = "train") -> NodeTimes:
    compute = dict.fromkeys(COMPUTE_ROWS, 0.0) | {"forward": forward}
    return NodeTimes(1, phase, node, partition, False, 0.0, 0.0,
                     dict.fromkeys(keys.STAMPS, 0.0), compute, 0.0, 0.0, down, up, 0, 0,
                     Link(8.0, 8.0, 0.0))


SERVER = {"configure": 0.1, "send": 0.1, "aggregation": 0.2, "central-eval": 0.3}


def test_a_slow_device_moves_the_critical_path():
    # Node 1 computes 1.0 s and moves nothing; node 2 computes 0.6 s and moves 0.5 s of
    # bytes (250 kB each way at 8 Mbit/s, framing aside).
    nodes = [_node(1, 0, 1.0, 0, 0), _node(2, 1, 0.6, 250_000, 250_000)]
    link = Link(8.0, 8.0, 0.0)
    transfer = 2 * 250_000 * F * 8 / 8e6
    table, critical = project(nodes, SERVER, lambda _: link, None, NO_FRAMING)
    assert critical["train"].node_id == 2
    assert sum(table.values()) == pytest.approx(0.7 + 0.6 + transfer)
    # Partition 0 at half speed: 2.0 s of compute; it is now the critical path.
    table, critical = project(nodes, SERVER, lambda _: link, None, NO_FRAMING,
                              speed_of=lambda n: 0.5 if n.partition_id == 0 else 1.0)
    assert critical["train"].node_id == 1
    assert sum(table.values()) == pytest.approx(0.7 + 2.0)
    assert table["forward"] == pytest.approx(2.0) and table["transfer"] == 0.0


def test_a_round_sends_its_messages_after_configure_and_send_on_the_clock():
    # 1 MB down, nothing up; the rate doubles at 1 s. Round starting at 0: sent at 0.2 s,
    # 0.8 s at 8 Mbit/s, the rest at 16. Round starting at 0.8 s: sent at 1.0 s, all at 16.
    nodes = [_node(1, 0, 0.5, 1_000_000, 0)]
    early, _ = project(nodes, SERVER, lambda _: RATE_STEP, None, NO_FRAMING, start=0.0)
    late, _ = project(nodes, SERVER, lambda _: RATE_STEP, None, NO_FRAMING, start=0.8)
    assert early["transfer"] == pytest.approx(0.8 + (8e6 * F - 6.4e6) / 16e6)
    assert late["transfer"] == pytest.approx(8e6 * F / 16e6)
    # The evaluate phase is sent after the train phase's path and the aggregation: train
    # ends at 0.2 + 8F/16 + 0.5 (start 0.8), evaluation sent 0.2 s later.
    evaluate = [*nodes, _node(1, 0, 0.0, 1_000_000, 0, phase="evaluate")]
    both, _ = project(evaluate, SERVER, lambda _: RATE_STEP, None, NO_FRAMING, start=0.0)
    assert both["transfer"] == pytest.approx(early["transfer"] + 8e6 * F / 16e6)


def test_replaying_a_run_onto_its_own_links_gives_its_projection(tmp_path):
    run = load_run(write_run(tmp_path, FEDAVG))
    replay = replay_run(run, parse_links("own"))
    assert [r.round for r in replay.rounds] == [1, 2, 3]
    for got, row in zip(replay.rounds, run.phases, strict=True):
        assert got.simulation_s == pytest.approx(row["projected-s"], abs=1e-9)
        assert got.deployment_s == pytest.approx(row["deployment-s"], abs=1e-9)
    assert replay.rounds[-1].cumulative_deployment_s == pytest.approx(
        sum(p["deployment-s"] for p in run.phases))
    assert [r.accuracy for r in replay.rounds] == FEDAVG["acc"]
    # The same link given as a spec, and as a one-row trace, give the same rounds.
    for spec in ("10/10/50", "uniform:10/10/50"):
        assert replay_run(run, parse_links(spec)).rounds == replay.rounds
    trace = tmp_path / "flat.csv"
    trace.write_text("# one row\npartition,t-s,down-mbps,up-mbps,latency-ms\n*,0,10,10,50\n")
    assert replay_run(run, parse_links(str(trace))).rounds == replay.rounds


def test_heterogeneous_spec_is_the_run_configs_seeded_draw(tmp_path):
    run = load_run(write_run(tmp_path, FEDLORA, seed=7))
    link_of = parse_links("heterogeneous:20/5/40").link_of(run.config)
    cfg = AppConfig.from_run_config({"weights-path": "", "seed": 7, "link-down-mbps": 20.0,
                                     "link-up-mbps": 5.0, "link-latency-ms": 40.0,
                                     "link-profile": "heterogeneous"})
    node = NodeTimes.from_row(run.nodes[1])
    assert link_of(node) == node_link(cfg, {}, node.partition_id)


TRACE_HEAD = "partition,t-s,down-mbps,up-mbps,latency-ms\n"


@pytest.mark.parametrize("body,message", [
    ("0,1,8,8,5\n", "line 4: column 't-s' = '1' is not allowed: partition 0's first row "
                    "must be at 0"),
    ("x,0,8,8,5\n", "line 4: column 'partition' = 'x' is not allowed: must be an integer"),
    ("0,0,0,8,5\n", "line 4: column 'down-mbps' = '0' is not allowed: must be a number > 0"),
    ("0,0,8,fast,5\n", "column 'up-mbps' = 'fast' is not allowed: must be a number > 0"),
    ("0,0,8,8,-1\n", "column 'latency-ms' = '-1' is not allowed: must be a number >= 0"),
    ("*,0,8,8,5\n*,5,8,8,5\n*,5,1,1,1\n", "line 6: column 't-s' = '5' is not allowed: must "
                                          "be after partition *'s previous row (5 s)"),
    ("0,0,8,8\n", "line 4: 4 columns, must be 5"),
    ("", "no rows"),
])
def test_a_bad_trace_names_file_line_column_value_and_what_is_allowed(tmp_path, body,
                                                                      message):
    path = tmp_path / "bad.csv"
    path.write_text("# comment: skipped, as blank lines\n\n" + TRACE_HEAD + body)
    with pytest.raises(TraceError) as info:
        read_trace(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_a_trace_header_and_coverage_are_checked(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("partition,t,down,up,latency\n0,0,1,1,1\n")
    with pytest.raises(TraceError, match="line 1: header .* must be 'partition,t-s,"):
        read_trace(path)
    path.write_text(TRACE_HEAD + "0,0,8,8,5\n0,30,4,2,50\n")
    trace = read_trace(path)
    assert trace.link_at(0, 29.9) == Link(8, 8, 5) and trace.link_at(0, 1e9) == Link(4, 2, 50)
    assert trace.changes(0) == [(0.0, Link(8, 8, 5)), (30.0, Link(4, 2, 50))]
    with pytest.raises(TraceError, match="no rows for partition 1 and no '\\*' rows"):
        trace.link_at(1, 0.0)


@pytest.mark.parametrize("spec,message", [
    ("fast", "--links 'fast' is not allowed (no such file): must be own, D/U/L"),
    ("10/0/50", "--links '10/0/50' is not allowed: down and up must be > 0"),
    ("heterogeneous:10/5", "--links 'heterogeneous:10/5' is not allowed"),
])
def test_a_bad_link_spec_names_the_option_value_and_what_is_allowed(spec, message):
    with pytest.raises(SpecError, match=message.replace("(", "\\(").replace(")", "\\)")):
        parse_links(spec)


def test_device_specs_inline_and_from_a_file(tmp_path):
    devices = parse_devices("0=0.5,*=2")
    assert (devices.speed(0), devices.speed(7)) == (0.5, 2.0)
    assert parse_devices("1=0.25").speed(0) == 1.0
    path = tmp_path / "devices.csv"
    path.write_text("# phones\npartition,speed\n1,0.25\n")
    assert parse_devices(str(path)).speeds == {1: 0.25}
    for bad, message in (("0=0", "partition '0' speed '0' is not allowed"),
                         ("a=1", "partition 'a' speed '1' is not allowed"),
                         ("0=1,0=2", "partition '0' is given twice"),
                         ("slow", "'slow' is not PARTITION=SPEED")):
        with pytest.raises(SpecError, match=f"--devices '{bad}'.*{message}"):
            parse_devices(bad)


def test_the_command_ranks_by_time_to_target_and_writes_its_files(tmp_path, capsys):
    runs = [write_run(tmp_path, FEDAVG), write_run(tmp_path, FEDLORA)]
    out = tmp_path / "out"
    assert main([*map(str, runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # Target: the highest accuracy both reach, 0.75 (fedlora's last round; fedavg's third).
    assert printed.startswith("fedlora reaches accuracy 0.7500 soonest")
    data = json.loads((out / "replay.json").read_text())
    assert [r["run"] for r in data["ranking"]] == ["fedlora", "fedavg"]
    assert [r["round"] for r in data["ranking"]] == [3, 3]
    lines = (out / "replay.csv").read_text().splitlines()
    assert lines[0].split(",")[:4] == ["run", "folder", "round", "simulation-s"]
    assert len(lines) == 1 + 2 * 3
    assert (out / "replay.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "| 1 | fedlora |" in (out / "replay.md").read_text()
    # A target only fedavg reaches puts it first and says so for fedlora.
    assert main([*map(str, runs), "--out", str(tmp_path / "o2"), "--target", "0.8"]) == 0
    text = (tmp_path / "o2" / "replay.md").read_text()
    assert "| 1 | fedavg |" in text and "| 2 | fedlora | not reached in 3 rounds |" in text


def test_a_bad_spec_exits_2_before_anything_is_written(tmp_path, capsys):
    run = write_run(tmp_path, FEDAVG)
    partial = tmp_path / "partial.csv"  # the run's nodes hold partitions 0 and 1
    partial.write_text(TRACE_HEAD + "0,0,8,8,5\n")
    for args, message in ((["--links", "10/10"], "--links '10/10' is not allowed"),
                          (["--links", str(partial)], "no rows for partition 1"),
                          (["--devices", "0=-1"], "--devices '0=-1'"),
                          (["--links", "10/10/50/1"], "'10/10/50/1' is not three numbers"),
                          (["--links", "heterogeneous:10/10"], "'10/10' is not three numbers"),
                          (["--links", str(tmp_path)], "(a folder, not a trace file)"),
                          (["--out", str(partial)], f"--out {str(partial)!r} is not allowed"),
                          (["--target", "80"], "--target: '80' is not allowed")):
        with pytest.raises(SystemExit) as info:
            main([str(run), "--out", str(tmp_path / "out"), *args])  # the last --out wins
        assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_two_best_swap_where_bytes_outweigh_compute(tmp_path):
    # fedlora computes 5.0 s a round (15 s the first), fedavg 1.2 s (3.6 s), both reach
    # 0.75 at round 3. Their times to target differ by 19 s of compute against the
    # critical node's bytes over three rounds (latencies and fixed costs cancel):
    # fedavg 3 x 3,001,300 + 60 bytes, fedlora 3 x 151,200; equal at
    # B = 8 F (9,003,960 - 453,600) / 19 Mbit/s.
    runs = [recorded(r) for r in load_runs([write_run(tmp_path, FEDAVG),
                                            write_run(tmp_path, {**FEDLORA, "fixed": 5.0})])]
    comp = compare(runs, parse_links("own"), target=0.75)
    assert comp.swap is not None and comp.swap.latency_ms == LATENCY_MS
    assert comp.swap.mbps == [pytest.approx(8 * F * 8_550_360 / 19e6, rel=1e-9)]
    assert (comp.swap.sooner_low, comp.swap.sooner_high) == ("fedlora", "fedavg")
    assert "swap at **3.764 Mbit/s**" in comp.swap.text()


def test_a_folder_that_is_not_a_run_is_named_with_what_a_run_dir_is(tmp_path, capsys):
    run = write_run(tmp_path, FEDAVG)
    (tmp_path / "replay-earlier").mkdir()  # e.g. an earlier replay's folder caught by a glob
    with pytest.raises(SystemExit) as info:
        main([str(run), str(tmp_path / "replay-earlier"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "is not a run folder (it has no config.json)" in err
    assert "<outputs-dir>/<run-name>" in err and not (tmp_path / "out").exists()


def test_a_partition_no_run_has_is_refused_and_a_bom_header_is_read(tmp_path, capsys):
    run = write_run(tmp_path, FEDAVG)  # partitions 0 and 1
    typo = tmp_path / "typo.csv"
    typo.write_text("\ufeff" + TRACE_HEAD + "*,0,8,8,5\n5,0,1,1,5\n")  # BOM: a spreadsheet's
    for args, message in ((["--links", str(typo)], "--links names partition(s) [5]"),
                          (["--devices", "7=0.5"], "--devices names partition(s) [7]")):
        with pytest.raises(SystemExit) as info:
            main([str(run), "--out", str(tmp_path / "out"), *args])
        assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    typo.write_text("\ufeff" + TRACE_HEAD + "*,0,8,8,5\n")
    assert main([str(run), "--links", str(typo), "--out", str(tmp_path / "out")]) == 0
