"""The command line (config.py) without MPI: --help in groups, option types, defaults."""
import dataclasses
import io
import typing
from contextlib import redirect_stdout

import pytest

from podlt_mpi.core import config
from podlt_mpi.core.config import ConfigError, RunConfig, parse_args


def test_every_option_is_in_exactly_one_help_group():
    names = [n for group in config.GROUPS.values() for n in group]
    assert sorted(names) == sorted(f.name for f in dataclasses.fields(RunConfig))
    assert len(names) == len(set(names))


def test_help_shows_groups_and_no_default_that_says_nothing():
    out = io.StringIO()
    with redirect_stdout(out):
        config.build_parser().print_help()
    text = out.getvalue()
    flat = " ".join(text.split())  # help wraps lines anywhere
    assert "default: None" not in flat and "default: ()" not in flat
    positions = [text.index(f"\n{title}:\n") for title in config.GROUPS]
    assert positions == sorted(positions)
    assert "(default: 1000)" in flat and "(default: on)" in flat  # --block-lines, --shuffle-blocks


def test_numeric_options_parse_as_numbers_whatever_their_annotation():
    for f in dataclasses.fields(RunConfig):
        hint = typing.get_type_hints(RunConfig)[f.name]
        want = next((t for t in (int, float) if t in (hint, *typing.get_args(hint))), None)
        if f.metadata.get("type") is None and "choices" not in f.metadata:
            assert config._value_type(f.name) is want, f.name
    cfg = parse_args(["--blocks", "7", "--lr", "0.5", "--ignore-index", "-1"])
    assert (cfg.blocks, cfg.lr, cfg.ignore_index) == (7, 0.5, -1)
    with pytest.raises(ConfigError, match="invalid int value"):
        parse_args(["--blocks", "seven"])
