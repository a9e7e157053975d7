"""A forger who holds every file of a run: edit its ledger and seal the chain anew."""
import json
import shutil

from podlt_mpi.core import ledger as chain


def rechain(out, edit):
    """Apply edit(records) to out/ledger.jsonl, seal it anew and make summary.json agree (the
    checkpoints name the old chain's hashes: they go, and the audit starts at 0)."""
    with open(out / "ledger.jsonl") as f:
        recs = [json.loads(line) for line in f]
    edit(recs)
    prev, sealed = chain.GENESIS, []
    for rec in recs:
        sealed.append(chain.seal({k: v for k, v in rec.items() if k not in ("prev", "hash")},
                                 prev))
        prev = sealed[-1]["hash"]
    (out / "ledger.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sealed))
    summary = json.loads((out / "summary.json").read_text())
    summary["ledger_head"] = prev
    (out / "summary.json").write_text(json.dumps(summary))
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
