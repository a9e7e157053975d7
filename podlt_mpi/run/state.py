"""What the run has done so far, apart from the weights and the optimizer: exactly what a
checkpoint saves (`proof`, fingerprinted into the ledger, and `position`) and a resume restores."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from podlt_mpi.core import credits, looks


@dataclass
class RunState:
    active: list                 # ranks that get work, in rank order
    world_size: int
    rng: np.random.Generator     # the schedule's: who works, who controls, who is checked
    removed: list = field(default_factory=list)   # [{rank, iteration, role}]
    counts: dict = field(default_factory=lambda: credits.verdict_counts([]))
    credits: dict = field(default_factory=dict)
    next_iteration: int = 0
    useful: int = 0              # lines applied so far
    last_loss: float | None = None
    test: dict = field(default_factory=dict)      # the last test figures, by name
    elapsed_before: float = 0.0  # seconds of earlier jobs of this run
    protected: list = field(default_factory=list)  # checkpoints the audit restarts from
    role_key: bytes | None = None  # ledger format 4: the secret the roles come from (roles.py)
    look_reference: looks.Reference | None = None  # format 5: the last iteration's median norms
    stopped_by: list = field(default_factory=list)  # ranks whose reported signal stopped the run

    @classmethod
    def fresh(cls, world_size: int, seed: int) -> RunState:
        active = list(range(1, world_size))
        return cls(active, world_size, np.random.default_rng([seed, 1]),
                   credits=credits.table(active))

    def proof(self, figures) -> dict:
        """Everything after an iteration that decides what the run does next (fingerprinted)."""
        return {"next_iteration": self.next_iteration, "active": self.active,
                "removed": self.removed, "counts": self.counts, "credits": self.credits,
                "rng": self.rng.bit_generator.state, "useful": self.useful,
                "last_loss": self.last_loss,
                "test": [self.test.get(k) for k in figures],
                "world_size": self.world_size,
                **({"role_key": self.role_key.hex()} if self.role_key is not None else {}),
                **({"look_reference": self.look_reference.to_json()}
                   if self.look_reference is not None else {}),
                **({"stopped_by": list(self.stopped_by)} if self.stopped_by else {})}

    def position(self, written: int, record_hash: str, elapsed: float) -> dict:
        """Where the run's files end: not fingerprinted (the fingerprint is in that record)."""
        return {"ledger_records": written, "ledger_hash": record_hash, "elapsed_s": elapsed,
                "protected": self.protected}

    def restore(self, ckpt: dict, active: list, figures) -> None:
        """From a checkpoint, on the ranks resume chose (`active`)."""
        proof = ckpt["proof"]
        self.rng.bit_generator.state = proof["rng"]
        self.role_key = bytes.fromhex(proof["role_key"]) if "role_key" in proof else None
        self.look_reference = looks.Reference.from_json(proof.get("look_reference"))
        self.stopped_by = [int(r) for r in proof.get("stopped_by", [])]
        self.active = active
        self.removed = proof["removed"]
        self.counts = proof["counts"]
        self.credits = proof["credits"]
        for r in active:
            self.credits.setdefault(str(r), credits.entry())
        self.next_iteration, self.useful = proof["next_iteration"], proof["useful"]
        self.last_loss = proof["last_loss"]
        self.test = {k: v for k, v in zip(figures, proof["test"]) if v is not None}
        self.elapsed_before = ckpt["position"]["elapsed_s"]
        self.protected = ckpt["position"]["protected"]
