"""One output schema: docs/results.md's tables are the schema's, every row builder writes
exactly the schema's columns, the writer refuses any other row, and rows load back as they were."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from flwr.app import MetricRecord

from fedvit import keys, schema
from fedvit.config.appconfig import AppConfig
from fedvit.wire.links import Link
from server_app.recorder import round_row, write_table
from server_app.summary import Estimate, RunRecord, build_summary
from server_app.timeline import NodeTimes, RoundTimes
from strategies import BookRow, Books

RESULTS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "results.md"


def test_docs_output_tables_are_the_schema():
    text = RESULTS_PAGE.read_text()
    block = re.search(r"<!-- schema:begin -->\n(.*)<!-- schema:end -->", text, re.S)
    assert block is not None, "docs/results.md lacks the schema block"
    assert block.group(1) == schema.markdown()


def _node() -> NodeTimes:
    return NodeTimes(3, "train", 17, 1, True, 10.0, 12.0, dict.fromkeys(keys.STAMPS, 11.0),
                     dict.fromkeys(keys.COMPUTE_ROWS, 0.1), 0.01, 0.0, 900, 950, 5, 6,
                     Link(10.0, 5.0, 20.0, real=True))


def _round() -> RoundTimes:
    table = dict.fromkeys(keys.TABLE_ROWS, 0.5)
    return RoundTimes(3, 2.0, 1.0, 17, 3.0, 4.0, table, dict(table), dict(table))


def test_every_row_builder_writes_the_schema_columns_in_order():
    books = Books([BookRow(3, "train", 17, "down", 800, 900, objects=5),
                   BookRow(3, "train", 17, "up", 800, 950, 90, objects=6)])
    central = MetricRecord({"accuracy": 0.5, "loss": 1.25})
    rows = {
        keys.BOOKS: books.as_rows(),
        keys.NODES: [_node().as_row()],
        keys.PHASES: [_round().as_row()],
        keys.ROUNDS: [round_row(3, central, books, _round(), {keys.TRAIN_LOSS: 0.7})],
    }
    assert set(rows) == set(schema.TABLES)
    for stem, table in rows.items():
        assert [list(r) for r in table] == [schema.columns(stem)] * len(table), stem
    assert rows[keys.ROUNDS][0]["down-msg-bytes"] == 900
    assert rows[keys.ROUNDS][0]["val-accuracy"] is None  # a key the replies did not carry


def test_the_writer_refuses_a_row_with_other_columns(tmp_path: Path):
    row = BookRow(1, "train", 2, "down", 3, 4).as_row()
    write_table(tmp_path, keys.BOOKS, [row])
    assert json.loads((tmp_path / "books.json").read_text()) == [row]
    with pytest.raises(ValueError, match="does not have the columns of fedvit.schema"):
        write_table(tmp_path, keys.BOOKS, [{**row, "node_id": 2}])
    assert json.loads((tmp_path / "books.json").read_text()) == [row]  # left as it was


def test_rows_round_trip():
    book = BookRow(3, "query", 17, "up", 0, 627, 40, "error", "no reply", 2)
    assert BookRow.from_row(book.as_row()) == book
    assert NodeTimes.from_row(_node().as_row()) == _node()
    assert RoundTimes.from_row(_round().as_row()) == _round()


def test_summary_has_the_schema_keys():
    cfg = AppConfig.from_run_config({})
    record = RunRecord((100, 10), phases=[_round()], nodes=[_node()])
    est = Estimate(1, 2, 2, 2, 0, 5, 10, 20, 2, 20)
    summary = build_summary(cfg, record, Books(), [], est, 1.5, None, None)
    names = [name for name, _ in schema.SUMMARY if name not in schema.OPTIONAL_SUMMARY]
    assert list(summary) == names
    assert summary["estimate"]["num-nodes"] == 2 and summary["status"] == "complete"
    with_wire = build_summary(cfg, record, Books(), [], est, 1.5, None, {"0": {}})
    assert list(with_wire) == names + ["wire"]
