"""What of a model travels between the ranks, packed as one flat float32 vector each way. No MPI.

state (manager -> ranks, the WEIGHTS message):
    trainable parameters | float buffers (as float32) | counters (integer buffers such as
    BatchNorm's num_batches_tracked, as int64 bit patterns: two float32 words each, exact at any
    value, never used in arithmetic)
answer (rank -> manager, the GRAD message):
    gradient of the trainable parameters (zeros where a parameter got none, as DDP's
    find_unused_parameters) | float buffers after the forward pass | each counter's change in
    the pass (small integers, exact in float32)

Frozen parameters (requires_grad=False) never travel: every rank builds them from the same seed
and nobody updates them. The digest in the ledger (model_before/model_after) covers everything:
the frozen parameters' bytes, then the state. For a model with neither buffers nor frozen
parameters the state is the flat parameters, so runs written before buffers travelled keep
their hashes.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from podlt_mpi.core import digests


def device_of(model: nn.Module) -> torch.device:
    """Where the model's tensors live (a model is on one device: models.probe checks it)."""
    return next(model.parameters()).device


def host(t: torch.Tensor) -> np.ndarray:
    """A flat float32 numpy array of t (a copy from a GPU; no copy on the CPU)."""
    return t.detach().reshape(-1).cpu().numpy().astype(np.float32, copy=False)


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _is_counter(t: torch.Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def pieces(flat: torch.Tensor, tensors, words: int = 1):
    """(tensor, its piece of `flat`) for consecutive pieces, `words` values per element; the
    pieces take each tensor's shape where words is 1."""
    i = 0
    for t in tensors:
        n = words * t.numel()
        piece = flat[i:i + n]
        yield t, piece.view_as(t) if words == 1 else piece
        i += n
    assert i == flat.numel(), (i, flat.numel())


class Layout:
    """Which tensors of one model travel, in a fixed order (the model's own), and their sizes.

    Parameters are held by reference (load_state_dict and optimizers update them in place);
    buffers are looked up by name each time, since a module may rebind one in its forward.
    Boolean buffers (masks) are constants and do not travel.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        named = list(model.named_parameters())
        self.params = [p for _, p in named if p.requires_grad]
        self.frozen = [p for _, p in named if not p.requires_grad]
        buffers = list(model.named_buffers())
        floats = [(n, b) for n, b in buffers if b.is_floating_point()]
        counters = [(n, b) for n, b in buffers if _is_counter(b)]
        self.floats = [n for n, _ in floats]
        self.counters = [n for n, _ in counters]
        self.n_grad = sum(p.numel() for p in self.params)
        self.n_float = sum(b.numel() for _, b in floats)
        self.n_count = sum(b.numel() for _, b in counters)
        self.state_size = self.n_grad + self.n_float + 2 * self.n_count
        self.answer_size = self.n_grad + self.n_float + self.n_count

    # ---- the tensors ---------------------------------------------------------------------------

    def float_buffers(self) -> list:
        return [self.model.get_buffer(n) for n in self.floats]

    def counter_buffers(self) -> list:
        return [self.model.get_buffer(n) for n in self.counters]

    def snapshot(self) -> list:
        """Copies of every buffer that travels, to put back with `restore`."""
        return [b.detach().clone()
                for b in (*self.float_buffers(), *self.counter_buffers())]

    def restore(self, saved: list) -> None:
        with torch.no_grad():
            for b, v in zip((*self.float_buffers(), *self.counter_buffers()), saved,
                            strict=True):
                b.copy_(v)

    # ---- the vectors ---------------------------------------------------------------------------

    def state(self) -> torch.Tensor:
        """The state vector, on the model's device."""
        parts = [p.detach().reshape(-1).float() for p in self.params]
        parts += [b.detach().reshape(-1).float() for b in self.float_buffers()]
        parts += [b.detach().reshape(-1).to(torch.int64).view(torch.float32)
                  for b in self.counter_buffers()]
        return torch.cat(parts)

    def load_state(self, flat) -> None:
        """Load a state vector (numpy, or a tensor on any device) into the model."""
        t = torch.as_tensor(flat).to(self.params[0].device)
        assert t.numel() == self.state_size, (t.numel(), self.state_size)
        g, f = self.n_grad, self.n_grad + self.n_float
        with torch.no_grad():
            for p, v in pieces(t[:g], self.params):
                p.copy_(v)
            for b, v in pieces(t[g:f], self.float_buffers()):
                b.copy_(v)
            for b, v in pieces(t[f:], self.counter_buffers(), words=2):
                b.copy_(v.clone().view(torch.int64).view_as(b))  # clone: int64 needs alignment

    def answer(self, counters_before: list) -> torch.Tensor:
        """After a backward pass: the gradients, the float buffers, and the counters' change
        since `counters_before`."""
        parts = [p.grad.reshape(-1).float() if p.grad is not None
                 else torch.zeros(p.numel(), dtype=torch.float32, device=p.device)
                 for p in self.params]
        parts += [b.detach().reshape(-1).float() for b in self.float_buffers()]
        parts += [(b.detach().reshape(-1).to(torch.int64) - v.reshape(-1).to(torch.int64)).float()
                  for b, v in zip(self.counter_buffers(), counters_before, strict=True)]
        return torch.cat(parts).detach()

    def split(self, answer) -> tuple:
        """(gradient, float buffers, counter changes) of an answer."""
        g, f = self.n_grad, self.n_grad + self.n_float
        return answer[:g], answer[g:f], answer[f:]

    # ---- the digest ----------------------------------------------------------------------------

    def frozen_hash(self, alg: str = digests.SHA256, threads: int = 1):
        """A hasher over the frozen parameters, to continue with a state (`digest`)."""
        h = digests.new(alg, threads)
        for p in self.frozen:
            h.update(_bytes(p))
        return h

    def digest(self, state: np.ndarray | None = None, frozen=None, alg: str = digests.SHA256,
               threads: int = 1) -> str:
        """The model's digest for the ledger (`alg`: the record's hash): frozen parameters, then
        the state vector. `state`: the host state vector if the caller has it; `frozen`: a
        `frozen_hash()` kept from before (frozen parameters never change; it sets the hash)."""
        h = (frozen or self.frozen_hash(alg, threads)).copy()
        digests.update(h, state if state is not None else host(self.state()))
        return h.hexdigest()
