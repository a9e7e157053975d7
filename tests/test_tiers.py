"""The suite's tiers (docs/testing.md): each test carries its own `full` mark, and conftest adds
it by one rule only (under Open MPI or Slurm), never from a list of test names that a renamed
test would silently leave, moving it to the other tier."""
import ast
import json
import os
import subprocess
import sys

import pytest
from tiers import full_but

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
# run inside the collection below: which tests are `full` by their own marks, before conftest's
# hook, and which after it
PROBE = '''
import json, os, pytest

def tiers(items):
    return {item.nodeid: bool(item.get_closest_marker("full")) for item in items}

@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(items):
    own = tiers(items)
    yield
    rule = {item.nodeid: bool(item.get_closest_marker("slurm")) or
            getattr(item, "callspec", None) is not None and
            item.callspec.params.get("mpi") == "openmpi" for item in items}
    with open(os.environ["TIERS_OUT"], "w") as f:
        json.dump({"own": own, "full": tiers(items), "rule": rule}, f)
'''


def test_conftest_names_no_test():
    test_names = set()
    for name in os.listdir(TESTS):
        if name.startswith("test_") and name.endswith(".py"):
            with open(os.path.join(TESTS, name)) as f:
                test_names |= {node.name for node in ast.walk(ast.parse(f.read()))
                               if isinstance(node, ast.FunctionDef)
                               and node.name.startswith("test_")}
            test_names.add(name)
    with open(os.path.join(TESTS, "conftest.py")) as f:
        texts = [node.value for node in ast.walk(ast.parse(f.read()))
                 if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    assert len(test_names) > 100
    named = {text for text in texts if "::" in text or
             any(word.strip("[]()'\",") in test_names for word in text.split())}
    assert not named, named


def test_full_comes_from_the_tests_own_marks_or_the_rule(tmp_path):
    (tmp_path / "tiers_probe.py").write_text(PROBE)
    env = {**os.environ, "TIERS_OUT": str(tmp_path / "tiers.json"),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    # --strict-markers: a misspelt mark (pytest.mark.ful) would leave its test in the first tier
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "--strict-markers",
                        "-p", "tiers_probe", "-p", "no:cacheprovider"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, [line for line in (r.stdout + r.stderr).splitlines()
                               if "::" not in line]
    with open(tmp_path / "tiers.json") as f:
        found = json.load(f)
    own, full, rule = found["own"], found["full"], found["rule"]
    added = {node for node in full if full[node] != (own[node] or rule[node])}
    assert not added, sorted(added)
    # not vacuous: end-to-end tests in each tier under MPICH, some of them full by their marks
    mpich = [node for node in full if node.startswith("tests/test_e2e_") and "[mpich" in node]
    assert any(full[node] for node in mpich) and not all(full[node] for node in mpich)
    assert any(own[node] and not rule[node] for node in full)


def test_full_but_marks_the_others_and_refuses_a_case_it_does_not_have():
    cases = full_but(["a", "b", "c"], "b")
    assert cases[1] == "b"
    assert [case.values for case in (cases[0], cases[2])] == [("a",), ("c",)]
    assert all(mark.name == "full" for case in (cases[0], cases[2]) for mark in case.marks)
    with pytest.raises(ValueError, match="renamed"):
        full_but(["a", "b"], "B")
