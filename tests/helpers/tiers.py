"""The suite's tiers (docs/testing.md): a test's own marks say which of its cases are `full`."""
import pytest


def full_but(cases, *first_tier):
    """`cases` of a table for one parameter of pytest.mark.parametrize, all but `first_tier`
    marked full (the first tier runs one of the kind, the full tier the rest). A name of the first
    tier that is not among the cases fails the collection, so a renamed case cannot silently move
    a test to the full tier."""
    cases = list(cases)
    unknown = [case for case in first_tier if case not in cases]
    if unknown:
        raise ValueError(f"first-tier cases {unknown} are not among {cases}: renamed?")
    return [case if case in first_tier else pytest.param(case, marks=pytest.mark.full)
            for case in cases]
