"""What a model returns (compute/outputs.py, docs/usage.md): a tensor, a dict or ModelOutput with
`logits`, a tuple or list starting with the scores, or what --output-key names. Stand-ins for
Hugging Face's outputs here; test_hf_models.py trains the real ones."""
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from podlt_mpi.compute import losses, models, outputs, probe, training
from podlt_mpi.compute.layout import Layout
from podlt_mpi.core.config import parse_args
from podlt_mpi.core.errors import ConfigError
from podlt_mpi.core.tasks import Task, classification


class ModelOutput(OrderedDict):
    """transformers' ModelOutput as the job meets it: a dict whose items are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Scores:
    """An object with its scores under another name (no `logits`)."""

    def __init__(self, prediction):
        self.prediction = prediction


FORMS = {  # form -> (wrap the scores, --output-key)
    "tensor": (lambda t: t, None),
    "model-output": (lambda t: ModelOutput(logits=t, hidden_states=t * 2), None),
    "dict": (lambda t: {"hidden": t * 2, "logits": t}, None),
    "attribute": (lambda t: type("Out", (), {"logits": t})(), None),
    "tuple": (lambda t: (t, t * 2), None),
    "list": (lambda t: [t], None),
    "key-dict": (lambda t: {"scores": t, "logits": t * 2}, "scores"),
    "key-attribute": (lambda t: Scores(t), "prediction"),
    "key-index": (lambda t: (t * 2, t), "1"),
    "key-model-output": (lambda t: ModelOutput(loss=t.sum(), end=t), "end"),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_each_form_gives_its_scores(form):
    wrap, key = FORMS[form]
    t = torch.randn(3, 4)
    assert outputs.scores(wrap(t), key) is t


@pytest.mark.parametrize("out, key, says", [
    ("text", None, "returns str, not a tensor"),
    ({"hidden": torch.zeros(1)}, None, "returns dict, not a tensor"),
    ((), None, "returns tuple, not a tensor"),
    (("a", torch.zeros(1)), None, "returns tuple, not a tensor"),
    (Scores(torch.zeros(1)), None, "--output-key NAME"),
    ({"logits": torch.zeros(1)}, "scores", "returns dict, whose 'scores' is nothing"),
    ((torch.zeros(1),), "3", "whose '3' is nothing"),
    (Scores("x"), "prediction", "whose 'prediction' is str, not a tensor"),
])
def test_another_form_is_bad_input_that_names_it(out, key, says):
    with pytest.raises(ConfigError, match="model m:f returns") as e:
        outputs.scores(out, key, "m:f")
    assert says in str(e.value)


class Wrapped(nn.Module):
    """One model's forward, its scores returned in the form given."""

    def __init__(self, n_in, n_classes, form):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, 16), nn.BatchNorm1d(16), nn.ReLU(),
                                  nn.Dropout(0.3), nn.Linear(16, n_classes))
        self.wrap = FORMS[form][0]

    def forward(self, x):
        return self.wrap(self.body(x))


@pytest.mark.parametrize("form", [f for f in FORMS if f != "tensor"])
def test_a_wrapped_output_trains_and_evaluates_bit_for_bit_as_the_tensor(form, monkeypatch):
    """Built, probed, a fragment's answer and the test figures: the same bits as the same model
    returning its scores as a tensor."""
    key = FORMS[form][1]
    task = Task("float", "classes", (), 3, "cross-entropy", output_key=key)
    plain = Task("float", "classes", (), 3, "cross-entropy")
    made = {}
    for name, f in (("wrapped", form), ("tensor", "tensor")):
        monkeypatch.setattr(models, "load_function",
                            lambda spec, what, builtin=(), f=f: lambda s, n: Wrapped(s[0], n, f))
        made[name] = models.build("m:f", (5,), 3, 7, task if name == "wrapped" else plain)
    assert probe.probe(made["wrapped"], "m:f", (5,), 3, "cpu", 4, exact=True, task=task)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)
    got = {name: training.gradient(m, x, y, 11, Layout(m), losses.loss_function(t))
           for (name, m), t in zip(made.items(), (task, plain))}
    assert got["wrapped"][0].tobytes() == got["tensor"][0].tobytes()
    assert got["wrapped"][1] == got["tensor"][1] and math.isfinite(got["wrapped"][1])
    xs, ys = x.numpy(), y.numpy()
    for m in made.values():
        m.eval()  # as the manager evaluates
    assert (losses.evaluate(made["wrapped"], task, xs, ys) ==
            losses.evaluate(made["tensor"], plain, xs, ys))


def test_a_users_loss_and_mse_take_the_scores_too():
    t = torch.tensor([[1.0, 2.0]])
    out, y = ModelOutput(logits=t, hidden=t * 9), torch.zeros(1, 2)
    reg = Task("float", "values", (2,), 0, "mse")
    assert float(losses.loss_function(reg)(out, y)) == 2.5
    user = Task("float", "values", (2,), 0, "usermodels:huber")  # tests/helpers, on the path
    assert float(losses.loss_function(user)(out, y)) == float(
        nn.functional.huber_loss(t, y, delta=0.5))


def test_a_model_whose_output_has_no_scores_is_refused_when_built(monkeypatch):
    monkeypatch.setattr(models, "load_function", lambda spec, what, builtin=():
                        lambda s, n: Wrapped(s[0], 3, "key-attribute"))  # 3 classes always
    with pytest.raises(ConfigError, match="returns Scores, not a tensor.*--output-key"):
        models.build("m:f", (5,), 3, 0, classification(3))
    task = Task("float", "classes", (), 3, "cross-entropy", output_key="prediction")
    models.build("m:f", (5,), 3, 0, task)  # named: it builds
    wrong = Task("float", "classes", (), 4, "cross-entropy", output_key="prediction")
    with pytest.raises(ConfigError, match=r"outputs \[3\] per line, expected \[4\]"):
        models.build("m:f", (5,), 4, 0, wrong)


def test_the_option_reaches_the_task_and_an_empty_one_is_refused():
    assert parse_args(["--output-key", "logits"]).output_key == "logits"
    assert parse_args([]).output_key is None
    with pytest.raises(ConfigError, match="--output-key must name"):
        parse_args(["--output-key", " "])
    t = Task("float", "classes", (), 3, "cross-entropy", output_key="end")
    assert Task.from_meta({"task": t.to_meta()}) == t
    old = {k: v for k, v in t.to_meta().items() if k != "output_key"}  # a run before the key
    assert Task.from_meta({"task": old}).output_key is None
