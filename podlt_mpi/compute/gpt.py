"""`--model gpt`: a small causal transformer language model on token ids (GPT-2's shape).

Token and position embeddings, n_layer pre-LayerNorm blocks (causal self-attention, then a
4x MLP with GELU), a final LayerNorm and an output layer tied to the token embedding. Attention
is written out (scores, mask, softmax, weighted sum) rather than a fused kernel: every op has a
deterministic CPU and CUDA kernel, so it passes the exact-mode probe and honest ranks agree
bit for bit.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from podlt_mpi.core.errors import ConfigError


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, block: int):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.attn_drop = nn.Dropout(dropout)
        self.resid_drop = nn.Dropout(dropout)
        # a constant: not saved, not sent (layout.py skips boolean buffers)
        self.register_buffer("causal", torch.ones(block, block, dtype=torch.bool).tril(),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))
        att = att.masked_fill(~self.causal[:t, :t], float("-inf")).softmax(dim=-1)
        y = (self.attn_drop(att) @ v).transpose(1, 2).reshape(b, t, c)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, block: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, block)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(),
                                 nn.Linear(4 * n_embd, n_embd), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token ids [batch, T] -> next-token scores [batch, T, vocab]."""

    def __init__(self, vocab: int, block: int, n_layer: int, n_head: int, n_embd: int,
                 dropout: float):
        super().__init__()
        self.block = block
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout, block) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab, bias=False)
        self.head.weight = self.wte.weight  # tied: one parameter, trained by both uses
        for name, p in self.named_parameters():  # GPT-2's initialisation
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") or \
                    name.endswith("mlp.2.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


def gpt(input_shape, n_classes: int, n_layer: int = 4, n_head: int = 4, n_embd: int = 128,
        dropout: float = 0.1, block: int | None = None) -> nn.Module:
    """The factory behind --model gpt, sized by --model-args; `block` (the longest context)
    defaults to the data's sequence length."""
    if len(input_shape) != 1:
        raise ConfigError(f"--model gpt needs lines of token ids [T], the data has lines of "
                          f"shape {list(input_shape)}")
    t = input_shape[0]
    block = t if block is None else block
    for name, v in (("n_layer", n_layer), ("n_head", n_head), ("n_embd", n_embd),
                    ("block", block)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"--model-args {name} must be a positive integer, got {v!r}")
    if n_embd % n_head:
        raise ConfigError(f"--model-args n_embd {n_embd} must be a multiple of n_head {n_head}")
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"--model-args dropout must be in [0, 1), got {dropout!r}")
    if block < t:
        raise ConfigError(f"--model-args block {block} is shorter than the data's sequences "
                          f"of {t} tokens")
    return GPT(n_classes, block, n_layer, n_head, n_embd, float(dropout))
