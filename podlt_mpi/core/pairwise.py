"""Ledger format 4's summation order: a pairwise tree over a block's fragments in line order.
Pure, no MPI: the values are whatever `add` adds (the manager and the replay pass torch vectors).

The tree depends only on the number of fragments, never on which of them was checked, so the
honest result does not depend on the secret roles (roles.py). Over n leaves it is the sum of
the first p leaves' tree and the tree of the rest, p the largest power of two below n; a leaf
may be absent (a disputed fragment, dropped), and then its sibling stands for the pair. Leaves
are set in any order: those that arrive in line order are folded at once, binary-counter style,
keeping O(log n) partial sums; a leaf not yet known (a checked fragment waiting for its verdict)
is a hole, and only the sums on its path to the root wait for it, one sibling each.
"""
from __future__ import annotations

ABSENT = None


class _Hole:
    __slots__ = ("value",)

    def __init__(self):
        self.value = ABSENT


class _Pair:
    """A sum that waits for a hole below it: both operands kept, evaluated at the end."""
    __slots__ = ("left", "right")

    def __init__(self, left, right):
        self.left, self.right = left, right


def _waits(x) -> bool:
    return isinstance(x, (_Hole, _Pair))


class PairwiseSum:
    """The tree sum of `n` leaves. set(i, value) each leaf once (ABSENT: not applied);
    `result()` once every leaf is set. `add(a, b)` may work in place on `a`: every partial sum
    is used once."""

    def __init__(self, n: int, add):
        if n < 1:
            raise ValueError("a pairwise sum needs at least one leaf")
        self.n, self.add = n, add
        self.stack = []    # (size of the subtree, its sum, a hole or a waiting pair)
        self.pushed = 0    # leaves pushed so far, in line order
        self.holes = {}    # leaf -> its hole

    def _combine(self, left, right):
        if _waits(left) or _waits(right):
            return _Pair(left, right)
        if left is ABSENT:
            return right
        if right is ABSENT:
            return left
        return self.add(left, right)

    def _push(self, value) -> None:
        size = 1
        while self.stack and self.stack[-1][0] == size:
            _, left = self.stack.pop()
            value, size = self._combine(left, value), 2 * size
        self.stack.append((size, value))
        self.pushed += 1

    def set(self, i: int, value) -> None:
        if not 0 <= i < self.n:
            raise IndexError(f"leaf {i} of {self.n}")
        if i < self.pushed:
            hole = self.holes.pop(i, None)
            if hole is None:
                raise ValueError(f"leaf {i} is set twice")
            hole.value = value
            return
        while self.pushed < i:  # leaves before it are not known yet
            self.holes[self.pushed] = _Hole()
            self._push(self.holes[self.pushed])
        self._push(value)

    @property
    def held(self) -> int:
        """Partial sums and waiting operands held now (the memory bound's count)."""
        def count(x):
            if isinstance(x, _Pair):
                return count(x.left) + count(x.right)
            return 0 if x is ABSENT or isinstance(x, _Hole) else 1
        return sum(count(v) for _, v in self.stack)

    def result(self):
        """The tree's sum (ABSENT if every leaf is)."""
        if self.pushed < self.n or self.holes:
            missing = sorted(set(range(self.pushed, self.n)) | set(self.holes))
            raise ValueError(f"leaves {missing} of {self.n} are not set")
        total = self.stack[-1][1]
        for _, left in reversed(self.stack[:-1]):  # the smaller subtrees are on the right
            total = _Pair(left, total)
        return self._evaluate(total)

    def _evaluate(self, x):
        if isinstance(x, _Hole):
            return x.value
        if isinstance(x, _Pair):
            return self._combine(self._evaluate(x.left), self._evaluate(x.right))
        return x
