"""Every shipped config keeps the results recorded in tests/data/golden.json (inline backend).

The fingerprints were recorded before the typed-core refactor and pin that it, and any later
speed work, changes no decision anywhere: same context switches to the ns, same runstate
times, same migration rounds. A change meant to alter results re-records them (see golden.py)
and says why in its commit.
"""

from __future__ import annotations

import json

import pytest

import golden

RECORDED = json.loads(golden.GOLDEN.read_text())
CASES = golden.cases()


def test_every_case_was_recorded():
    assert sorted(RECORDED) == sorted(name for name, _p, _o in CASES)


@pytest.mark.parametrize("name,path,overrides", CASES, ids=[c[0] for c in CASES])
def test_fingerprint_unchanged(name, path, overrides):
    assert golden.run_case(path, overrides) == RECORDED[name]
