"""The ledger's hash chain catches edits, insertions, drops and reordering."""
import json

from podlt_mpi.core import ledger


def build(path, n=5):
    w = ledger.LedgerWriter(str(path))
    for i in range(n):
        w.append({"iteration": i, "loss": 1.0 / (i + 1), "lines": [i * 10, i * 10 + 10]})
    w.close()
    records, torn = ledger.read(str(path))
    assert not torn
    return records


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
    assert ledger.check_chain(recs[:2] + recs[3:])[0][0] == 2      # dropped: 2 is missing
    assert ledger.check_chain([recs[1], recs[0]] + recs[2:])[0][0] == 0  # reordered
    forged = ledger.seal({"iteration": 9, "loss": 0.5, "lines": [0, 1]}, recs[1]["hash"])
    # inserted: the next record no longer links (the forged one itself is caught by its number)
    assert ledger.check_chain(recs[:2] + [forged] + recs[2:])[0][0] == 3


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


def test_a_line_torn_by_a_crash_is_dropped_and_truncate_keeps_whole_lines(tmp_path):
    path = tmp_path / "l.jsonl"
    recs = build(path, 4)
    with open(path, "a") as f:
        f.write('{"iteration": 4, "lo')  # a crash in the middle of a write
    got, torn = ledger.read(str(path))
    assert torn and got == recs
    ledger.truncate(str(path), 2)
    got, torn = ledger.read(str(path))
    assert not torn and got == recs[:2]


def test_an_unreadable_line_breaks_the_chain_at_its_place(tmp_path):
    path = tmp_path / "l.jsonl"
    build(path, 3)
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:-5]
    path.write_text("\n".join(lines) + "\n")
    got, _ = ledger.read(str(path))
    assert [w for w, _ in ledger.check_chain(got)][:1] == [1]
