"""Hash what the built-in models, the tests' user models and gpt compute: a fragment's answer
and three optimizer steps each, and single ops, under the kernels the environment selects. Two
machines, or settings, compute the same bits where their outputs are the same.

usage:: ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=COMPATIBLE,STRICT python benchmarks/kernel_bits.py > a.txt
        ... qemu-x86_64 -cpu Haswell-v4 $(which python) benchmarks/kernel_bits.py > b.txt; diff a.txt b.txt
"""
import hashlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests", "helpers"), ROOT]
import torch
from podlt_mpi.compute import models, training
from podlt_mpi.compute.layout import Layout
training.set_determinism(int(os.environ.get("THREADS", "1")))

def h(t):
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()[:8]

out = {}
def case(name, spec, shape, classes, optim, lines=(20, 30, 7), tokens=False, args=None):
    g = torch.Generator().manual_seed(1)
    m = models.build(spec, shape, classes, seed=3, args=args) if not tokens else \
        models.build(spec, shape, classes, seed=3, task=TOK)
    lay = Layout(m)
    opt = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
           "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
           "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01)}[optim](lay.params)
    hs = []
    for it in range(3):
        answers, counts = [], []
        for n in lines:
            if tokens:
                x = torch.randint(0, classes, (n, *shape), generator=g); y = torch.randint(0, classes, (n, *shape), generator=g)
            else:
                x = torch.randn(n, *shape, generator=g); y = torch.randint(0, classes, (n,), generator=g)
            a, loss = training.fragment(m, lay, x, y, seed=it * 100 + n)
            answers.append(a); counts.append(n); hs.append(h(a))
        training.apply_update(m, opt, lay, answers, counts, lr=1e-3, clip=1.0 if it == 1 else 0.0)
    w = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    out[name] = h(torch.stack([torch.tensor([int(x, 16) for x in hs], dtype=torch.float64)]).float()) + "/" + h(w)

from podlt_mpi.core import tasks as T
TOK = T.Task("tokens", "classes", (32,), 64, "cross-entropy", vocab=64)
case("mlp-adam", "mlp", (20,), 10, "adam")
case("mlp-sgd", "mlp", (20,), 10, "sgd")
case("gpt-adamw", "gpt", (32,), 64, "adamw", lines=(4, 3), tokens=True)
case("cnn-adamw", "cnn", (1, 28, 28), 10, "adamw", lines=(8, 5))
for um in ("dropout", "bn1d", "combined", "regressor"):
    try:
        case(um, "usermodels:" + um, (20,), 2 if um == "regressor" else 10, "adam")
    except Exception as e:
        out[um] = "ERR " + str(e)[:60]
try:
    case("bn2d", "usermodels:bn2d", (784,), 10, "adam", lines=(6, 4))
except Exception as e:
    out["bn2d"] = "ERR " + str(e)[:80]
# raw ops
g = torch.Generator().manual_seed(0)
for a, b, c in [(30, 32, 2), (20, 512, 256), (7, 784, 128), (64, 128, 384)]:
    A = torch.randn(a, b, generator=g); B = torch.randn(b, c, generator=g)
    out[f"mm{a}x{b}x{c}"] = h(A @ B)
v = torch.rand(100003, generator=g) * 10
for f in ("exp", "log", "tanh", "sqrt", "rsqrt", "sigmoid", "erf"):
    out[f] = h(getattr(torch, f)(v))
out["softmax"] = h(torch.softmax(v.reshape(-1, 7)[:1000] if False else v[:99995].reshape(-1, 5), 1))
out["gelu"] = h(torch.nn.functional.gelu(v - 5))
out["gelu_tanh"] = h(torch.nn.functional.gelu(v - 5, approximate="tanh"))
out["sum"] = h(v.sum()); out["div"] = h(v / (v + 1)); out["addcdiv"] = h(v.addcdiv(v, v + 1, value=0.3))
out["pow"] = h(v.pow(1.7))
X = torch.randn(4, 3, 28, 28, generator=g); W = torch.randn(8, 3, 5, 5, generator=g)
out["conv2d"] = h(torch.nn.functional.conv2d(X, W))
out["layernorm"] = h(torch.nn.functional.layer_norm(X, X.shape[1:]))
for k in sorted(out):
    print(f"{k:12s} {out[k]}")
