"""The ledger's hash chain catches edits, insertions, drops and reordering."""
import json

from podlt_mpi import ledger


def build(path, n=5):
    w = ledger.LedgerWriter(str(path))
    for i in range(n):
        w.append({"iteration": i, "loss": 1.0 / (i + 1), "lines": [i * 10, i * 10 + 10]})
    w.close()
    return ledger.read(str(path))


def test_chain_is_intact_and_linked(tmp_path):
    recs = build(tmp_path / "l.jsonl")
    assert ledger.check_chain(recs) == []
    assert recs[0]["prev"] == ledger.GENESIS
    assert all(recs[i]["prev"] == recs[i - 1]["hash"] for i in range(1, len(recs)))


def test_each_kind_of_tampering_is_found(tmp_path):
    recs = build(tmp_path / "l.jsonl")
    edited = [dict(r) for r in recs]
    edited[2]["loss"] = 0.0
    assert [w for w, _ in ledger.check_chain(edited)] == [2]
    assert ledger.check_chain(recs[:2] + recs[3:])[0][0] == 3      # dropped
    assert ledger.check_chain([recs[1], recs[0]] + recs[2:])[0][0] == 1  # reordered
    forged = ledger.seal({"iteration": 9, "loss": 0.5, "lines": [0, 1]}, recs[1]["hash"])
    assert ledger.check_chain(recs[:2] + [forged] + recs[2:])[0][0] == 2  # inserted


def test_records_are_canonical_json_lines(tmp_path):
    path = tmp_path / "l.jsonl"
    build(path, 2)
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        assert ledger.canonical(rec).decode() == line


def test_non_finite_becomes_null():
    assert ledger.finite_or_none(float("nan")) is None
    assert ledger.finite_or_none(float("inf")) is None
    assert ledger.finite_or_none(1.5) == 1.5
