"""Checkpoints and resume decisions, in one process: fingerprints, pruning, safe loading, what a
resumed run may change and what happens to the ranks."""
import os
import pickle

import pytest
import torch

from podlt_mpi.core import credits, records
from podlt_mpi.core.config import ConfigError, parse_args, resumed
from podlt_mpi.run import checkpoint, resume


def state(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    return model.state_dict(), opt.state_dict()


def test_fingerprint_survives_save_and_load_and_sees_any_change(tmp_path):
    m, o = state()
    proof = {"next_iteration": 3, "rng": {"state": 2**100 + 7}, "active": [1, 2]}
    fp = checkpoint.fingerprint(m, o, proof)
    path = checkpoint.save(str(tmp_path), 3, m, o, proof, {"ledger_hash": "x"})
    got = checkpoint.load(path)
    assert got["fingerprint"] == fp and got["proof"] == proof and got["iteration"] == 3
    assert checkpoint.fingerprint(m, o, {**proof, "active": [1]}) != fp
    m2 = {k: v.clone() for k, v in m.items()}
    m2["bias"][0] += 1e-7
    assert checkpoint.fingerprint(m2, o, proof) != fp
    o2 = state()[1]
    o2["state"][0]["exp_avg"] = o2["state"][0]["exp_avg"] * 2
    assert checkpoint.fingerprint(m, o2, proof) != fp


def test_prune_keeps_the_newest_and_the_protected(tmp_path):
    m, o = state()
    for it in (2, 4, 6, 8, 10):
        checkpoint.save(str(tmp_path), it, m, o, {}, {})
    checkpoint.prune(str(tmp_path), 2, protect={4})
    assert [it for it, _ in checkpoint.available(str(tmp_path))] == [4, 8, 10]
    checkpoint.prune(str(tmp_path), 0)
    assert len(checkpoint.available(str(tmp_path))) == 3


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/podlt-pwned",))


def test_loading_never_runs_pickled_code(tmp_path):
    path = checkpoint.path_for(str(tmp_path), 1)
    with open(path, "wb") as f:
        pickle.dump({"format": 1, "x": Evil()}, f)
    torch.save({"format": 1, "x": Evil()}, str(tmp_path / "b.pt"))
    for p in (path, str(tmp_path / "b.pt")):
        with pytest.raises(checkpoint.CheckpointError):
            checkpoint.load(p)
    assert not os.path.exists("/tmp/podlt-pwned")


def test_active_ranks_on_more_and_fewer_ranks():
    proof = {"world_size": 6, "active": [1, 2, 4, 5], "removed": [{"rank": 3}]}
    active, notes = resume.active_ranks(proof, 8)
    assert active == [1, 2, 4, 5, 6, 7]
    assert any("ranks [6, 7] join" in n for n in notes) and any("[3] stay removed" in n for n in notes)
    active, notes = resume.active_ranks(proof, 5)
    assert active == [1, 2, 4] and any("[5] no longer exist" in n for n in notes)
    assert resume.active_ranks(proof, 6)[0] == [1, 2, 4, 5]


def test_resume_may_change_how_the_run_goes_on_but_not_its_numbers():
    saved = {**vars(parse_args(["--lr", "0.01", "--epochs", "2"])), "world_size": 6}
    argv = ["--resume", "r", "--epochs", "5", "--time-limit", "30"]
    cfg, changed = resumed(saved, parse_args(argv), argv)
    assert cfg.lr == 0.01 and cfg.epochs == 5 and cfg.time_limit == 30
    assert changed == {"epochs": (2, 5), "time_limit": (0.0, 30.0)}
    argv = ["--resume", "r", "--lr", "0.1"]
    with pytest.raises(ConfigError, match="--lr cannot change on --resume"):
        resumed(saved, parse_args(argv), argv)
    argv = ["--resume", "r", "--lr", "0.01"]  # the same value is no change
    assert resumed(saved, parse_args(argv), argv)[1] == {}
    # the device option may change (the job then checks the kind of device stays)
    argv = ["--resume", "r", "--device", "cuda", "--cuda-aware-mpi"]
    cfg, changed = resumed(saved, parse_args(argv), argv)
    assert cfg.device == "cuda" and changed["device"] == ("auto", "cuda")
    # a run from before --device computed on the CPU, and says so when resumed
    old = {k: v for k, v in saved.items() if k not in ("device", "cuda_aware_mpi")}
    assert resumed(old, parse_args(["--resume", "r"]), ["--resume", "r"])[0].device == "cpu"
    with pytest.raises(ConfigError, match="leave out --out"):
        parse_args(["--resume", "r", "--out", "x"])


def test_credits_from_records():
    A = records.Assignment
    rec = records.Record(
        iteration=4, epoch=0, block=4, lines=(0, 10), data_digest="d", model_before="b",
        assignments=(A(1, "worker", (0, 5), "g"), A(2, "worker", (5, 10), "g"),
                     A(3, "control", (5, 10), "h"), A(4, "control", (5, 10), "g")),
        check=records.CheckRecord((5, 10), 2, (3, 4), "fake", (3,), (), None),
        applied=((0, 5), (5, 10)), applied_from=(1, 2), removed=(3,), loss=0.5,
        model_after="a", roles="c", active=(1, 2, 3, 4))
    table = credits.from_ledger([rec])
    assert table["1"]["computed"] == 1 and table["1"]["verified"] == 0
    assert table["2"]["verified"] == 1 and table["2"]["verdicts"]["fake"] == 1
    assert table["3"]["computed"] == 0 and table["3"]["rejected"] == 1
    assert table["3"]["removed_at"] == 4
