"""A user's `module:function` (a model's factory, a loss, a fault plugin), loaded as bad input
where it cannot be: every way an import of someone else's module fails is a ConfigError."""
from __future__ import annotations

import importlib

from podlt_mpi.core.errors import ConfigError


def load_function(spec: str, what: str, builtin=()):
    """Resolve "module:function". `builtin`: the names `what` also takes, for the message."""
    if ":" not in spec:
        raise ConfigError(f"unknown {what} {spec!r}: expected one of {sorted(builtin)} "
                          "or module:function" if builtin else
                          f"{what} must be module:function, got {spec!r}")
    mod_name, _, fn_name = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # the user's module may fail in any way while importing
        raise ConfigError(f"cannot import {what} module {mod_name!r}: {e}") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"{what} module {mod_name!r} has no function {fn_name!r}")
    return fn
