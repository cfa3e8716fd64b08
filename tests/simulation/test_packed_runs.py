"""pack-tensors in a real federation: the same run packed and unpacked ends with the same
global tensors bit for bit and the same accuracies, its books stay exact, and a packed
message costs a handful of objects instead of two per tensor."""

from __future__ import annotations

import pytest

from simulate import FAST, simulate

SETTINGS = {
    "fedavg": {"strategy": "fedavg"},
    # top-k keeps error feedback in the client's context.state between rounds
    "fedlora-codecs": {"strategy": "fedlora", "codec-down": "bf16", "codec-up": "topk:0.2"},
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_packed_and_unpacked_runs_end_with_the_same_tensors_and_accuracies(tmp_path, name):
    outcomes = {
        pack: simulate({**FAST, **SETTINGS[name], "pack-tensors": pack,
                        "outputs-dir": str(tmp_path / str(pack))})
        for pack in (False, True)
    }
    plain, packed = outcomes[False], outcomes[True]
    final = {pack: {k: (a.dtype, tuple(a.shape), a.numpy().tobytes())
                    for k, a in o.result.arrays.items()} for pack, o in outcomes.items()}
    assert list(final[True]) == list(final[False]) and final[True] == final[False]
    for key in ("central-accuracy", "central-loss", "train-loss"):
        assert [r[key] for r in packed.rounds] == [r[key] for r in plain.rounds], key
    assert plain.rounds[-1]["central-accuracy"] > 0.15  # it learned something

    tensors = len(plain.initial_arrays)
    for o in outcomes.values():
        assert o.books.mismatches == [] and o.summary["rejected-replies"] == []
        totals, est = o.books.totals(), o.summary["estimate"]
        assert totals["down-tensor"] == est["down"]
        assert est["up-min"] <= totals["up-tensor"] <= est["up"]
    # tensor bytes are the layout's business no more than the index is
    assert plain.books.totals()["down-tensor"] == packed.books.totals()["down-tensor"]
    rows = {pack: [r for r in o.books.rows if r.phase == "train"]
            for pack, o in outcomes.items()}
    assert {r.objects for r in rows[True]} == {6}  # msg, record dict, 2 records, array, chunk
    assert min(r.objects for r in rows[False]) >= 4 + 2 * tensors  # an array and a chunk each
    assert sum(r.message_bytes for r in rows[True]) < sum(r.message_bytes
                                                          for r in rows[False])
