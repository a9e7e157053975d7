"""The final table stays readable at 1,000 ranks: removed ranks, then the rest in one line."""
from podlt_mpi.run.progress import FULL_TABLE, final_table


def summary(ranks, removed=()):
    credits = {str(r): {"computed": 10 + r % 7, "verified": r % 3, "rejected": int(r in removed),
                        "removed_at": 4 if r in removed else None} for r in range(1, ranks)}
    return {"out": "runs/x", "iterations": 12, "ranks": ranks, "wall_time_s": 3.0,
            "final_loss": 0.5, "test_loss": 0.4, "test_accuracy": 0.9,
            "useful_samples_per_s": 100.0, "checks": {"agree": 11, "fake": 1, "dispute": 0},
            "disputes": 0, "removed": [{"rank": r, "iteration": 4, "role": "worker"}
                                       for r in removed],
            "credits": credits, "ledger_head": "ab" * 32}


def test_small_jobs_list_every_rank():
    text = final_table(summary(8, removed=(3,)))
    rows = [line for line in text.splitlines() if line.split()[0].isdigit()]
    assert [int(r.split()[0]) for r in rows] == list(range(1, 8))
    assert "test loss 0.4000, accuracy 0.9000" in text


def test_a_thousand_ranks_fit_on_a_screen():
    text = final_table(summary(1001, removed=(17, 500)))
    lines = text.splitlines()
    assert len(lines) < 15 and FULL_TABLE < 1000
    rows = [line for line in lines if line.split()[0].isdigit() and "active ranks" not in line]
    assert [int(r.split()[0]) for r in rows] == [17, 500]
    rest = [c["computed"] for r, c in summary(1001)["credits"].items() if r not in ("17", "500")]
    assert any(line.startswith("998 active ranks: computed min 10, median") for line in lines)
    assert f"max {max(rest)}" in text and "every rank's credits: summary.json" in text
