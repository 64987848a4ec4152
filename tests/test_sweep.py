"""Sweep expansion (pure, no run): grid, zip, both, wildcards, repetitions, ids, bad specs, and
the example sweeps in configs/sweeps/."""

from __future__ import annotations

import copy
import itertools
import re

import pytest

from cluster.config import ConfigError, validate_doc
from cluster.sweep import SweepSpec, expand_sweep, parse_spec, plan_sweep, validate_trials

from conftest import CONFIGS

BASE = {
    "run": {"seed": 3, "duration_ms": 200},
    "hosts": [
        {"name": "h0", "pcpus": 2, "mem_mib": 1024, "scheduler": {"name": "credit", "ratelimit_us": 1000}},
        {"name": "h1", "pcpus": 2, "mem_mib": 1024, "scheduler": {"name": "credit"}},
    ],
    "domains": [
        {"name": "a", "host": "h0", "mem_mib": 64, "weight": 256, "workload": {"kind": "cpu"}},
        {"name": "b", "host": "h1", "mem_mib": 64, "weight": 256, "workload": {"kind": "io", "think_ms": 5}},
    ],
    "events": [{"at_ms": 100, "set": {"domain": "a", "weight": 128}}],
}

# a valid directory name on Linux, macOS and Windows, never hidden
DIR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")


def expand(spec: dict, base: dict = BASE):
    return expand_sweep(parse_spec({"base": "base.yaml", **spec}, "s.yaml"), base, "s.yaml")


def at(doc, *keys):
    for k in keys:
        doc = doc[k]
    return doc


# (case, spec, ids in order, a check on each trial's document)
CASES = [
    (
        "grid-one",
        {"grid": {"domains.a.weight": [128, 512, 1024]}},
        ["weight=128_r0", "weight=512_r0", "weight=1024_r0"],
        lambda t: at(t.doc, "domains", 0, "weight") == t.params["domains.a.weight"],
    ),
    (
        "grid-two-first-slowest",
        {"grid": {"domains.a.weight": [128, 512], "domains.b.workload.think_ms": [1, 2.5]}},
        ["weight=128_think_ms=1_r0", "weight=128_think_ms=2.5_r0", "weight=512_think_ms=1_r0", "weight=512_think_ms=2.5_r0"],
        lambda t: at(t.doc, "domains", 1, "workload", "think_ms") == t.params["domains.b.workload.think_ms"] and at(t.doc, "domains", 1, "workload", "kind") == "io",
    ),
    (
        "zip-lock-step",
        {"zip": {"domains.a.weight": [100, 200, 300], "domains.a.cap": [10, 20, 30]}},
        ["weight=100_cap=10_r0", "weight=200_cap=20_r0", "weight=300_cap=30_r0"],
        lambda t: at(t.doc, "domains", 0, "cap") * 10 == at(t.doc, "domains", 0, "weight"),
    ),
    (
        "grid-and-zip",
        {"grid": {"run.duration_ms": [100, 150]}, "zip": [{"domains.a.weight": [100, 200], "domains.a.cap": [10, 20]}]},
        ["duration_ms=100_weight=100_cap=10_r0", "duration_ms=100_weight=200_cap=20_r0", "duration_ms=150_weight=100_cap=10_r0", "duration_ms=150_weight=200_cap=20_r0"],
        lambda t: at(t.doc, "run", "duration_ms") in (100, 150) and at(t.doc, "domains", 0, "cap") * 10 == at(t.doc, "domains", 0, "weight"),
    ),
    (
        "wildcard-every-host",
        {"grid": {"hosts.*.scheduler.ratelimit_us": [0, 500]}},
        ["ratelimit_us=0_r0", "ratelimit_us=500_r0"],
        lambda t: [h["scheduler"]["ratelimit_us"] for h in t.doc["hosts"]] == [t.params["hosts.*.scheduler.ratelimit_us"]] * 2,
    ),
    (
        "index-path-into-events",
        {"grid": {"events.0.set.weight": [64, 1024]}},
        ["weight=64_r0", "weight=1024_r0"],
        lambda t: at(t.doc, "events", 0, "set", "weight") == t.params["events.0.set.weight"] and at(t.doc, "domains", 0, "weight") == 256,
    ),
    (
        "same-tail-labels-grow",
        {"grid": {"domains.a.weight": [1, 2], "domains.b.weight": [3]}},
        ["a.weight=1_b.weight=3_r0", "a.weight=2_b.weight=3_r0"],
        lambda t: at(t.doc, "domains", 0, "weight") in (1, 2) and at(t.doc, "domains", 1, "weight") == 3,
    ),
    (
        "explicit-labels-and-fixed-set",
        {"set": {"run.duration_ms": 120}, "grid": {"domains.b.workload.think_ms": [1, 2]}, "labels": {"domains.b.workload.think_ms": "think"}},
        ["think=1_r0", "think=2_r0"],
        lambda t: at(t.doc, "run", "duration_ms") == 120,
    ),
    (
        "repetitions-innermost",
        {"grid": {"domains.a.weight": [128, 512]}, "repetitions": 3},
        ["weight=128_r0", "weight=128_r1", "weight=128_r2", "weight=512_r0", "weight=512_r1", "weight=512_r2"],
        lambda t: at(t.doc, "run", "seed") == t.seed,
    ),
    (
        "no-parameters",
        {"repetitions": 2},
        ["r0", "r1"],
        lambda t: t.params == {},
    ),
]


@pytest.mark.parametrize("case,spec,ids,check", CASES, ids=[c[0] for c in CASES])
def test_expansion(case, spec, ids, check):
    before = copy.deepcopy(BASE)
    trials = expand(spec)
    assert [t.id for t in trials] == ids
    assert [t.index for t in trials] == list(range(len(ids)))
    assert BASE == before, "expansion must not modify the base document"
    for t in trials:
        assert check(t), t
        assert DIR_NAME.match(t.id) and len(t.id.encode()) <= 255
        assert at(t.doc, "run", "seed") == t.seed
    # every trial differs from the others in its config (ids and documents are one-to-one)
    assert len({repr(t.doc) for t in trials}) == len(trials)
    # every generated config validates (the base is valid, the values are in range)
    for t in trials:
        validate_doc(t.doc, "s.yaml")


def test_grid_is_the_cartesian_product_in_declared_order():
    grid = {"domains.a.weight": [1, 2, 3], "domains.a.cap": [0, 50], "hosts.h1.pcpus": [1, 2]}
    trials = expand({"grid": grid})
    expected = list(itertools.product(*grid.values()))
    assert [tuple(t.params.values()) for t in trials] == expected
    assert [list(t.params) for t in trials] == [list(grid)] * len(expected)


def test_seeds_common_random_numbers_across_points():
    trials = expand({"grid": {"domains.a.weight": [128, 512, 1024]}, "repetitions": 4})
    by_rep = {}
    for t in trials:
        by_rep.setdefault(t.rep, set()).add(t.seed)
    assert all(len(s) == 1 for s in by_rep.values()), "repetition k has one seed at every point"
    seeds = [next(iter(by_rep[k])) for k in range(4)]
    assert len(set(seeds)) == 4 and all(0 <= s < 2**63 for s in seeds)
    # the root comes from the base config unless the spec gives one, and changes every seed
    other_base = {**BASE, "run": {**BASE["run"], "seed": 4}}
    assert {t.seed for t in expand({"repetitions": 4}, other_base)}.isdisjoint(seeds)
    assert [t.seed for t in expand({"repetitions": 4, "seed": 3})] == [t.seed for t in expand({"repetitions": 4})]
    assert [t.seed for t in expand({"repetitions": 4, "seed": 99})] != [t.seed for t in expand({"repetitions": 4})]


def test_ids_are_stable_when_the_sweep_grows_or_reorders():
    small = expand({"grid": {"domains.a.weight": [128, 512]}, "repetitions": 2})
    again = expand({"grid": {"domains.a.weight": [128, 512]}, "repetitions": 2})
    grown = expand({"grid": {"domains.a.weight": [64, 512, 128, 1024]}, "repetitions": 3})
    assert [(t.id, t.seed, t.doc) for t in small] == [(t.id, t.seed, t.doc) for t in again]
    grown_by_id = {t.id: t for t in grown}
    for t in small:
        g = grown_by_id[t.id]  # the same point keeps its id, seed and config
        assert (g.seed, g.doc, g.params) == (t.seed, t.doc, t.params)


def test_awkward_values_give_valid_distinct_ids():
    values = ["a b", "a/b", "a-b", "", "../x", "..", "ünï", 0.1, 1e-05, 100.0, 100, -5, True, None, [1, 2], {"k": 1}]
    base = {**BASE, "run": {**BASE["run"], "note": 0}}
    trials = expand({"grid": {"run.note": values}}, base)
    ids = [t.id for t in trials]
    assert len(set(ids)) == len(values)
    for tid in ids:
        assert DIR_NAME.match(tid) and "/" not in tid and tid not in (".", ".."), tid
    assert {"note=100_r0", "note=100.0_r0", "note=0.1_r0", "note=-5_r0", "note=a-b_r0", "note=true_r0", "note=null_r0"} <= set(ids)
    long = expand({"grid": {"run.note": ["x" * 400]}}, base)[0].id
    assert DIR_NAME.match(long) and len(long) <= 200


BAD = [
    ("unknown element", {"grid": {"domains.zzz.weight": [1]}}, "grid.domains.zzz.weight", "no element named 'zzz'"),
    ("unknown key midway", {"grid": {"run.nothing.x": [1]}}, "grid.run.nothing.x", "no key 'nothing'"),
    ("index out of range", {"grid": {"events.3.set.weight": [1]}}, "grid.events.3.set.weight", "index 3 out of range"),
    ("step into a value", {"grid": {"run.seed.x": [1]}}, "grid.run.seed.x", "is a value"),
    ("zip lengths differ", {"zip": {"domains.a.weight": [1, 2], "domains.a.cap": [0]}}, "zip[0]", "equal lengths"),
    ("seed swept", {"grid": {"run.seed": [1, 2]}}, "grid.run.seed", "the seed is set per repetition"),
    ("seed fixed", {"set": {"run.seed": 1}}, "set.run.seed", "the seed is set per repetition"),
    ("same field twice", {"grid": {"hosts.*.pcpus": [1], "hosts.h0.pcpus": [2]}}, "grid.hosts.h0.pcpus", "sets the same field as grid.hosts.*.pcpus"),
    ("fixed and swept", {"set": {"domains.a.weight": 1}, "grid": {"domains.a.weight": [2]}}, "set.domains.a.weight", "either fixed or swept"),
    ("in grid and zip", {"grid": {"domains.a.weight": [1]}, "zip": {"domains.a.weight": [2]}}, "zip[0].domains.a.weight", "already swept"),
    ("empty values", {"grid": {"domains.a.weight": []}}, "grid.domains.a.weight", "at least 1"),
    ("duplicate value", {"grid": {"domains.a.weight": [1, 1]}}, "grid.domains.a.weight", "listed twice"),
    ("unknown spec key", {"grid": {}, "repetitons": 2}, "repetitons", "unknown key 'repetitons'; allowed keys:"),
    ("bad repetitions", {"repetitions": 0}, "repetitions", "greater than or equal to 1"),
    ("label for unswept path", {"grid": {"domains.a.weight": [1]}, "labels": {"domains.b.weight": "w"}}, "labels.domains.b.weight", "not a swept path"),
    ("labels collide", {"grid": {"domains.a.weight": [1], "domains.b.weight": [2]}, "labels": {"domains.a.weight": "w", "domains.b.weight": "w"}}, "labels", "share the label 'w'"),
]


@pytest.mark.parametrize("label,spec,field,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_specs_name_the_field(label, spec, field, msg):
    with pytest.raises(ConfigError) as ei:
        expand(spec)
    e = ei.value
    assert e.file == "s.yaml"
    assert e.field == field, str(e)
    assert msg in e.msg, str(e)


def test_validation_names_the_trial_and_the_field():
    trials = expand({"grid": {"domains.b.weight": [256, 0, -1]}})
    with pytest.raises(ConfigError) as ei:
        validate_trials(trials, "s.yaml")
    e = ei.value
    assert e.field == "trial weight=0_r0: domains[b].weight"
    assert "greater than or equal to 1" in e.msg and "(and 1 more invalid trial)" in e.msg
    ok = validate_trials(expand({"grid": {"domains.b.weight": [256, 512]}}), "s.yaml")
    assert all(t.digest and t.resolved["run"]["seed"] == t.seed for t in ok)
    assert len({t.digest for t in ok}) == 2


def test_credit_weights_example_validates_fully():
    sweep, trials = plan_sweep(CONFIGS / "sweeps" / "credit-weights.yaml")
    spec = sweep.spec
    assert len(trials) == len(spec.grid["domains.b.weight"]) * len(spec.grid["hosts.*.scheduler.ratelimit_us"]) * spec.repetitions
    assert trials[0].id == "weight=64_ratelimit_us=0_r0"
    assert len({t.id for t in trials}) == len({t.digest for t in trials}) == len(trials)
    for t in trials:
        assert t.resolved["domains"][1]["weight"] == t.params["domains.b.weight"]
        assert {h["scheduler"]["ratelimit_us"] for h in t.resolved["hosts"]} == {t.params["hosts.*.scheduler.ratelimit_us"]}


def test_migration_dirty_rate_example_validates_fully():
    sweep, trials = plan_sweep(CONFIGS / "sweeps" / "migration-dirty-rate.yaml")
    assert isinstance(sweep.spec, SweepSpec)
    assert len(trials) == 5 * 3 * 2 * 2  # dirty rates x policies x links (zip) x repetitions
    assert trials[0].id == "dirty_mb_s=10_policy=xen_mbit_s=1000_lat_us=100_r0"
    assert trials[-1].id == "dirty_mb_s=400_policy=downtime-target_mbit_s=10000_lat_us=20_r1"
    assert len({t.id for t in trials}) == len({t.digest for t in trials}) == len(trials)
    for t in trials:
        assert DIR_NAME.match(t.id)
        assert t.resolved["events"][0]["migrate"]["policy"] == t.params["events.0.migrate.policy"]
        assert (t.resolved["links"][0]["bandwidth_mbit_s"], t.resolved["links"][0]["latency_us"]) in {(1000, 100), (10000, 20)}
        assert t.resolved["domains"][0]["workload"]["dirty_mb_s"] == t.params["domains.guest.workload.dirty_mb_s"]