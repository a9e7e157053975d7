"""The run directory as the manager writes it: config.json and model_init.pt at the start (or,
on resume, everything after the checkpoint cut back), the ledger and metrics.jsonl as it goes,
checkpoints, and model_final.pt and summary.json at the end. docs/ledger.md describes them."""
from __future__ import annotations

import dataclasses
import json
import os

from podlt_mpi.core import ledger, records
from podlt_mpi.run import checkpoint, rundir


class RunFiles:
    def __init__(self, out: str):
        self.out = out
        self.ledger = None
        self.metrics = None
        self.written = 0  # records in the ledger

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    def open(self, config: dict, model, resume=None) -> None:
        """A fresh run writes its config and initial model; a resumed one cuts back its files to
        the checkpoint it continues from, so nothing after it is duplicated."""
        if resume is None:
            rundir.write_json(self.path("config.json"), config)
            rundir.save_model(self.path("model_init.pt"), model)
            prev = ledger.GENESIS
        else:
            rundir.write_json(self.path("config.json"), {**config, "resumed": resume.history})
            ledger.truncate(self.path("ledger.jsonl"), resume.records)
            rundir.keep_metrics_before(self.path("metrics.jsonl"), resume.records)  # record i: iteration i
            for name in ("model_final.pt", "summary.json"):  # they described the run's old end
                if os.path.exists(self.path(name)):
                    os.unlink(self.path(name))
            prev = resume.prev
        self.written = resume.records if resume else 0
        self.ledger = ledger.LedgerWriter(self.path("ledger.jsonl"), prev)
        self.metrics = open(self.path("metrics.jsonl"), "a", encoding="utf-8",
                            opener=ledger.no_links)

    @property
    def head(self) -> str:
        return self.ledger.prev

    def append(self, record: records.Record) -> records.Record:
        """Seal the record into the ledger (synced); return it with `prev` and `hash`."""
        sealed = self.ledger.append(record.to_json())
        self.written += 1
        return dataclasses.replace(record, prev=sealed["prev"], hash=sealed["hash"])

    def metric(self, row: dict) -> None:
        self.metrics.write(json.dumps(row) + "\n")
        self.metrics.flush()

    def checkpoint(self, iteration: int, model_state, optimizer_state, proof: dict,
                   position: dict, keep: int, protected) -> str:
        folder = self.path("checkpoints")
        path = checkpoint.save(folder, iteration, model_state, optimizer_state, proof, position)
        checkpoint.prune(folder, keep, set(protected))
        return path

    def finish(self, summary: dict, model=None) -> None:
        """model_final.pt (a run that reached its end) and summary.json."""
        if model is not None:
            rundir.save_model(self.path("model_final.pt"), model)
        rundir.write_json(self.path("summary.json"), summary)

    def close(self) -> None:
        for f in (self.ledger, self.metrics):
            if f is not None:
                f.close()
