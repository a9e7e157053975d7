"""Protocol rules that more than one part of the code applies: the manager, the audit, the
simulator, the report and resume all ask here, so they cannot drift apart. Pure, no MPI.
(docs/protocol.md states them in prose.)
"""
from __future__ import annotations

from dataclasses import dataclass

# ---- how many ranks -----------------------------------------------------------------------------

def checks_made(controls: int, checks_per_iteration: int) -> int:
    """Checks per iteration: --checks-per-iteration, or none without controls."""
    return checks_per_iteration if controls else 0


def min_active(controls: int, checks_per_iteration: int) -> int:
    """Active ranks an iteration needs besides the manager: every check's worker and controls,
    or one worker without checks."""
    return checks_per_iteration * (controls + 1) if controls else 1


def workers(world_size: int, controls: int, checks_per_iteration: int) -> int:
    """Workers of an iteration on `world_size` ranks before any removal: all but the manager
    and the controls."""
    return world_size - 1 - checks_made(controls, checks_per_iteration) * controls


# ---- what an iteration applies --------------------------------------------------------------------

@dataclass
class Outcome:
    """One check as the rules need it: the checked worker, the verdict, who was found fake, and
    the other votes in the order they were taken (its controls, then any rechecks)."""
    worker: int
    verdict: str
    fake: tuple
    voters: tuple


MANAGER = 0  # the rank whose answer stands where the look's recomputation replaced a rank's


def applied(fragments, outcomes, folded: bool = False, replaced=()) -> list:
    """(lines, rank whose answer stands) for every fragment the manager applies, in order.

    `fragments`: (rank, lines) of the workers, in line order. A checked worker's fragment:
    dropped on a dispute; if the worker was found fake, the first vote that was not stands in
    (the fragment is not lost); otherwise its own. An unchecked worker found fake elsewhere (on a
    recheck of another fragment) loses its own fragment too: it is not trusted any more. Unless
    `folded` (ledger format 3): the unchecked fragments were folded into the update as they
    arrived, before any check, so that one stays applied, as every unchecked fragment is applied
    on trust (docs/protocol.md, "Streaming"). `replaced`: the lines of unchecked fragments whose
    answer the look held back and the manager's recomputation contradicted (format 5): the
    manager's answer stands in.
    """
    replaced = {tuple(x) for x in replaced}
    by_worker = {o.worker: o for o in outcomes}
    caught = {r for o in outcomes for r in o.fake}
    out = []
    for rank, lines in fragments:
        o = by_worker.get(rank)
        if o is not None:
            if o.verdict == "dispute":
                continue
            if rank in o.fake:
                rank = next(r for r in o.voters if r not in o.fake)
        elif tuple(lines) in replaced:
            rank = MANAGER
        elif rank in caught and not folded:
            continue
        out.append((lines, rank))
    return out


def fold_order(applied, checked) -> list:
    """Indices into `applied` (the applied fragments' lines (start, stop), in line order) in the
    order format 3 folds them into the update: the unchecked fragments in line order as they
    stream in, then the checked ones (`checked`: their lines), in line order, once their checks
    have settled which answer stands."""
    checked = {tuple(c) for c in checked}
    first = [i for i, lines in enumerate(applied) if tuple(lines) not in checked]
    return first + [i for i, lines in enumerate(applied) if tuple(lines) in checked]


def removed_role(rank: int, checked_workers, controls) -> str:
    """The role in which a removed rank was caught: the checked worker, a control, or a rank
    recruited to recheck a dispute."""
    if rank in checked_workers:
        return "worker"
    return "control" if rank in controls else "recheck"


# ---- checkpoints ----------------------------------------------------------------------------------

def unvouched(iteration: int, fingerprint: str, ledger_hash: str, kept) -> str | None:
    """Why a checkpoint written before `iteration` cannot be trusted, or None if the ledger
    (`kept`, a records.Ledger) vouches for it: the record before it names its fingerprint, the
    checkpoint continues that very record (`ledger_hash`), and the chain up to it is intact."""
    if iteration < 1 or iteration > len(kept):
        return f"it follows iteration {iteration - 1}, which the ledger does not hold"
    rec = kept.records[iteration - 1]
    if rec is None:
        return f"iteration {iteration - 1}'s ledger record is malformed"
    if rec.checkpoint != fingerprint:
        return f"its contents differ from what iteration {iteration - 1}'s ledger record vouches for"
    if ledger_hash != rec.hash:
        return f"it continues a different ledger than iteration {iteration - 1}'s record"
    broken = kept.chain_problems(iteration)
    if broken:
        return f"the ledger's hash chain is broken at iteration {broken[0][0]}"
    return None
