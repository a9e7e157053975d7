"""Measured figures live in benchmarks/RESULTS.md, not in the code's prose, where they drift.

A docstring or comment of podlt_mpi/ (or an option's help in core/config.py) that states a
measured-looking figure, a ratio such as "2.5x", a percentage, a time or rate ("30 ms",
"7.4k samples/s"), or a number in a sentence that says it was measured or taken here, must
point to the section of benchmarks/RESULTS.md that holds it ("(measured: benchmarks/RESULTS.md,
"<section title>")"), and is better off saying what the figure means without it. Numbers that
are definitions (constants, protocol parameters, bounds by formula, format sizes, timeouts)
are not caught by these patterns or are listed in ALLOWED with the reason. Every such pointer
must name a section title that RESULTS.md has, word for word."""
import ast
import io
import os
import re
import tokenize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "podlt_mpi")
RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS.md")

NUMBER = r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"   # 3, 2.5, 247,766
FIGURES = {   # measured-looking wherever they stand
    "ratio": re.compile(NUMBER + r"x(?![\w(])"),             # 2.5x, 3-5x; not 0x7F, 10 x a bound
    "percent": re.compile(NUMBER + r"\s?%"),
    "rate": re.compile(NUMBER + r"\s?k?\s?(?:[kMG]B/s|samples/s|tokens/s|it/s|s/it)(?!\w)"),
}
# a time or size is a measurement in a sentence that says it took or cost that here (a timeout
# or a buffer's size is a definition); any number is, in a sentence that says it was measured
QUANTITY = re.compile(NUMBER + r"\s?(?:ns|us|µs|ms|s|seconds?|minutes?|min|[kKMG]i?B)(?![\w/])")
TOOK = re.compile(r"\b(?:took|takes|taking|costs?|gave|here)\b", re.I)
MEASURED = re.compile(r"\bmeasured\b", re.I)
SENTENCES = re.compile(r"(?<=[.;!?])\s+")
POINTER = re.compile(r'RESULTS\.md,?\s+"([^"]+)"')
# (path under podlt_mpi/, the figure as matched): why it is not a measurement
ALLOWED = {
    ("compute/gpt.py", "4x"): "GPT-2's shape: the MLP is 4 times the embedding's width",
    ("mpi/reduce_messages.py", "2x"): "the cluster model (core/reduction.traffic) for bytes that "
                                      "follow from the message format, not a measurement",
    ("mpi/comm.py", "4.1"): "Open MPI's version; what was measured there is a crash",
}


def texts(source: str, config: bool = False):
    """(line, text) of every docstring (also a bare string statement), every block of
    consecutive comment lines, and with `config` every option's help (RunConfig's _opt)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
                and isinstance(node.value.value, str):
            yield node.lineno, node.value.value
        if config and isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_opt":
            for arg in node.args[1:2]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    yield arg.lineno, arg.value
    block, last = [], None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        line, text = tok.start[0], tok.string.lstrip("#").strip()
        if block and line == last + 1:
            block[1].append(text)
        else:
            if block:
                yield block[0], " ".join(block[1])
            block = [line, [text]]
        last = line
    if block:
        yield block[0], " ".join(block[1])


def figures(text: str) -> list:
    """The measured-looking figures of one docstring or comment block that does not point to
    benchmarks/RESULTS.md: [(kind, figure as matched)]."""
    text = " ".join(text.split())
    if "RESULTS.md" in text:
        return []
    found = [(kind, m.group()) for kind, pattern in FIGURES.items()
             for m in pattern.finditer(text)]
    for sentence in SENTENCES.split(text):
        if MEASURED.search(sentence):
            found += [("measured", m.group()) for m in re.finditer(NUMBER, sentence)]
        elif TOOK.search(sentence):
            found += [("time or size it took", m.group()) for m in QUANTITY.finditer(sentence)]
    return found


def package_texts():
    for folder, _, files in os.walk(PACKAGE):
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, PACKAGE).replace(os.sep, "/")
                with open(path, encoding="utf-8") as fh:
                    source = fh.read()
                for line, text in texts(source, config=rel == "core/config.py"):
                    yield rel, line, text


def test_the_check_catches_a_measured_figure_and_passes_a_pointer():
    assert figures("The fused pass is 2.5x faster than the naive one.") == [("ratio", "2.5x")]
    source = ('def f():\n    """Broadcasting took 2.5x as long."""\n'
              '    x = 1  # 0.13 ms at 270k values here\n'
              '    y = 2  # 7.4k samples/s, 5% of an iteration;\n'
              '    # measured: 41 of 60 runs\n')
    found = {kind for _, text in texts(source) for kind, _ in figures(text)}
    assert found == {"ratio", "time or size it took", "rate", "percent", "measured"}
    assert ("measured", "41") in figures(list(texts(source))[-1][1])
    option = 'wait: str = _opt("auto", "how idle ranks wait: sleep, 2.5x faster here")\n'
    assert [f for _, text in texts(option, config=True) for f in figures(text)] == \
        [("ratio", "2.5x")]
    assert figures('Slower with the broadcast (measured: benchmarks/RESULTS.md, "X").') == []
    # definitions: a hex mask, factors written as formulas, a format's size, timeouts
    assert figures("EXP_MASK = 0x7F800000. At most 10 x the slowest exchange, up to 600 s, and "
                   "20 s at least; 3.0 x the bound; 35 + 32 x (depth + 1) bytes; HDF5's 64 KB "
                   "for an attribute.") == []


def test_no_measured_figure_in_the_package_without_a_pointer_to_results():
    found = [(rel, line, kind, fig) for rel, line, text in package_texts()
             for kind, fig in figures(text)]
    bad = [f"podlt_mpi/{rel}:{line}: {kind} {fig!r}" for rel, line, kind, fig in found
           if (rel, fig) not in ALLOWED]
    assert bad == [], ("measured figures belong in benchmarks/RESULTS.md; point to its section "
                       "instead:\n" + "\n".join(bad))
    assert set(ALLOWED) <= {(rel, fig) for rel, _, _, fig in found}, "a stale ALLOWED entry"


def test_every_pointer_names_a_section_results_has():
    with open(RESULTS, encoding="utf-8") as f:
        sections = {line.lstrip("#").strip() for line in f if line.startswith("#")}
    pointers = [(rel, line, title) for rel, line, text in package_texts()
                for title in POINTER.findall(" ".join(text.split()))]
    assert pointers, "the package points to RESULTS.md somewhere"
    assert [p for p in pointers if p[2] not in sections] == []
