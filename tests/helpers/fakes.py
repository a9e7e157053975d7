"""Fake ranks in a test job: one per mode, in groups of modes that share a job, and what their
removal must look like in the run's files."""
import math
import os

from runfiles import read_json, read_jsonl

from podlt_mpi.core.config import FAKE_MODES

# the original eight and the attacks: alie ipm mimic collude label-flip; "buffers" needs a model
# with buffers (test_user_models), and is refused for the mlp (test_e2e_bad_input)
MODES = [m for m in FAKE_MODES if m != "buffers"]


def removed_ranks(out):
    return sorted(r["rank"] for r in read_json(os.path.join(out, "summary.json"))["removed"])


def groups(modes, most=5):
    """The modes in consecutive groups of at most `most`, as even as can be: one job per group.
    A job with several fakes costs little more than one with a single fake (on 2 cores the
    ranks' start-up dominates), and the fakes then also meet each other in checks."""
    k = math.ceil(len(modes) / most)
    return [tuple(modes[len(modes) * i // k:len(modes) * (i + 1) // k]) for i in range(k)]


GROUPS = groups(MODES)


def fake_spec(modes_of):
    """--fake-ranks and --fake-mode for {rank: mode}."""
    ranks = sorted(modes_of)
    return {"fake_ranks": ",".join(map(str, ranks)),
            "fake_mode": ",".join(f"{r}={modes_of[r]}" for r in ranks)}


def assert_each_fake_removed_once_and_for_good(out, modes_of):
    """Every fake, and no other rank, is removed in exactly one record, by a "fake" verdict or,
    as an unchecked worker whose answer is out of bounds ("collude"'s noise), by the look's
    recomputation; it never gets work afterwards, and its credits show one rejection at that
    iteration."""
    assert removed_ranks(out) == sorted(modes_of), modes_of
    ledger = read_jsonl(os.path.join(out, "ledger.jsonl"))
    credits = read_json(os.path.join(out, "summary.json"))["credits"]
    for rank, mode in modes_of.items():
        caught = [rec for rec in ledger if rank in rec["removed"]]
        assert len(caught) == 1, (mode, rank)
        checks = [caught[0]["check"], *caught[0].get("extra_checks", [])]
        looks = [x["verdict"] for x in caught[0]["looks"] if x["rank"] == rank]
        assert [c["verdict"] for c in checks if rank in c["fake"]] + looks in (
            ["fake"], ["differs"]), (mode, rank)
        after = [a["rank"] for rec in ledger if rec["iteration"] > caught[0]["iteration"]
                 for a in rec["assignments"]]
        assert after and rank not in after, (mode, rank)  # removed for good
        assert credits[str(rank)]["rejected"] == 1, (mode, rank)
        assert credits[str(rank)]["removed_at"] == caught[0]["iteration"], (mode, rank)
