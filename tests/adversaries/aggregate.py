"""An adversary's rank in the ranks' reduction (--reduce ranks), not our fault plugin: it runs the
project's worker, patched and with its sends rewritten, and from iteration LIE_FROM on (default
0) lies as an aggregator or a sender, whatever else it is:

    LIE=wrong-sum     each SUM it sends has its first value changed
    LIE=drop-input    it sums its slices without their first input
    LIE=double-input  it sums their first input twice
    LIE=equivocate    the slices of its answers it sends the aggregators differ from what it
                      committed to, under its signature of the true ones; asked by the
                      manager directly, it gives the true ones
    LIE=equivocate-signed  the same, with the false slices signed (its own word against its
                      commitment)
    LIE=withhold      it never sends a SUM
    LIE=bad-proof     challenged, it sends inputs other than those it summed
    LIE=1000x         every answer it commits to is 1000 times the honest one (a cheat the look
                      is for: it commits to its lie, and its slices open)
    LIE=nan           every answer it commits to is all NaN
    LIE=relay-alter   the table it relays to the ranks below it in the relay is altered
    LIE=relay-withhold  it relays no table

Each lie is reported on stderr as "adversary: lied at iteration N".

    mpiexec -n R python -m podlt_mpi ARGS : -n 1 python tests/adversaries/aggregate.py ARGS : ...
"""
import os
import sys

import numpy as np

from podlt_mpi.mpi import tags
from rewrite import run_rewriting

LIE = os.environ["LIE"]
SINCE = int(os.environ.get("LIE_FROM", "0"))
now = {"iteration": -1}


def told(it):
    if it >= SINCE:
        print(f"adversary: lied at iteration {it}", file=sys.stderr, flush=True)
        return True
    return False


def patch_sums():
    """drop-input / double-input: the first input of every slice it sums left out, or twice."""
    from podlt_mpi.compute import training
    from podlt_mpi.run import aggregate
    real = training.SliceSum.set

    def set_(self, i, part, count=0, lines=0):
        first = getattr(self, "_first", None)
        if part is not None and first is None and now["iteration"] >= SINCE:
            self._first = i
            if LIE == "drop-input":
                part = None
            else:
                part = np.asarray(part) * np.float32(2)
        return real(self, i, part, count, lines)
    training.SliceSum.set = set_
    real_reduce = aggregate.Aggregator.reduce

    def reduce(self, iteration, *args):
        now["iteration"] = iteration
        told(iteration)
        return real_reduce(self, iteration, *args)
    aggregate.Aggregator.reduce = reduce


def patch_signed_slices():
    """equivocate-signed: the slices it sends the aggregators (not the manager) altered, then
    signed."""
    from podlt_mpi.run import aggregate
    real_slice, real_reduce = aggregate.Aggregator.slice, aggregate.Aggregator.reduce

    def reduce(self, iteration, *args):
        now["sending"] = told(iteration)
        try:
            return real_reduce(self, iteration, *args)
        finally:
            now["sending"] = False

    def slice_(self, iteration, j, seed, c):
        if not now.get("sending"):
            return real_slice(self, iteration, j, seed, c)
        answer = c.answer.copy()
        answer[self.bounds[j][0]] += np.float32(1)
        return real_slice(self, iteration, j, seed, c._replace(answer=answer))
    aggregate.Aggregator.reduce, aggregate.Aggregator.slice = reduce, slice_


def patch_answers():
    """1000x / nan: what it commits to (and sends the slices of) is not the honest answer."""
    from podlt_mpi.run import aggregate
    real = aggregate.Aggregator.commit

    def commit(self, iteration, seed, answer):
        if iteration >= SINCE:
            told(iteration)
            answer = answer.copy()
            part = answer[:self.n_summed]
            part[:] = np.nan if LIE == "nan" else part * np.float32(1000)
        return real(self, iteration, seed, answer)
    aggregate.Aggregator.commit = commit


def patch_withhold():
    from podlt_mpi.run import aggregate
    from podlt_mpi.mpi import comm
    real = comm.Sends.post

    def post(self, array, dest, tag):
        if LIE == "withhold" and tag == tags.SUM and told(now["iteration"]):
            return None
        if LIE == "relay-withhold" and tags.is_table(tag) and told(now["iteration"]):
            return None
        return real(self, array, dest, tag)
    comm.Sends.post = post

    def receive_table(self, iteration, *args):
        now["iteration"] = iteration
        return real_receive(self, iteration, *args)
    real_receive = aggregate.Aggregator.receive_table
    aggregate.Aggregator.receive_table = receive_table


def rewrite(tag, buf, it, dest):
    if LIE == "wrong-sum" and tag == tags.SUM and told(it):
        out = buf.copy()
        out[0] += np.float32(1)
        return out
    if LIE == "equivocate" and tags.is_slice(tag) and dest != 0 and told(it):
        out = buf.copy()
        out[0] += np.float32(1)  # its path still names the committed slice: it cannot open
        return out
    if LIE == "relay-alter" and tags.is_table(tag) and dest != 0 and told(it):
        out = buf.copy()
        out[-1] ^= 1  # a bit of the last leaf's root: the digest no longer matches
        return out
    if LIE == "bad-proof" and tag == tags.PROOF and len(buf) and told(it):
        out = buf.copy()
        out[0] += np.float32(1)
        return out
    return None


def after_the_kernels(patch):
    """Patch once the job has set its kernels' environment (portable.enter): a rank that
    imports torch before would be run again by it, as an honest one."""
    from podlt_mpi.core import portable
    real = portable.enter

    def enter(values, argv):
        real(values, argv)
        patch()
    portable.enter = enter


def main(argv) -> int:
    if LIE in ("drop-input", "double-input"):
        after_the_kernels(patch_sums)
    elif LIE in ("1000x", "nan"):
        after_the_kernels(patch_answers)
    elif LIE == "equivocate-signed":
        after_the_kernels(patch_signed_slices)
    elif LIE in ("withhold", "relay-withhold"):
        after_the_kernels(patch_withhold)
    return run_rewriting(argv, rewrite)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
