"""Dotted paths for --set and sweeps."""

from __future__ import annotations

import pytest

from cluster.paths import PathError, expand, get_path, parse_assignment, set_path

DOC = {
    "run": {"seed": 1},
    "hosts": [{"name": "a", "scheduler": {"name": "credit", "ratelimit_us": 1000}}, {"name": "b", "scheduler": {"name": "credit"}}],
    "domains": [{"name": "web", "weight": 256}],
    "events": [{"at_ms": 5, "pin": {"domain": "web"}}],
}


@pytest.mark.parametrize(
    "path,value,check",
    [
        ("run.seed", 9, lambda d: d["run"]["seed"] == 9),
        ("domains.web.weight", 512, lambda d: d["domains"][0]["weight"] == 512),
        ("domains.0.weight", 7, lambda d: d["domains"][0]["weight"] == 7),
        ("hosts.*.scheduler.ratelimit_us", 500, lambda d: [h["scheduler"]["ratelimit_us"] for h in d["hosts"]] == [500, 500]),
        ("hosts.b.pcpus", 4, lambda d: d["hosts"][1]["pcpus"] == 4),
        ("events.0.pin.vcpu", 1, lambda d: d["events"][0]["pin"]["vcpu"] == 1),
        ("run.new_key", True, lambda d: d["run"]["new_key"] is True),
    ],
)
def test_set_path(path, value, check):
    out = set_path(DOC, path, value)
    assert check(out)
    assert DOC["run"]["seed"] == 1  # the input is not modified


@pytest.mark.parametrize(
    "path,msg",
    [
        ("domains.nope.weight", "no element named 'nope'"),
        ("hosts.5.pcpus", "index 5 out of range"),
        ("runn.seed", "no key 'runn'"),
        ("run.seed.x", "is a value"),
        ("run..seed", "empty step"),
    ],
)
def test_bad_paths(path, msg):
    with pytest.raises(PathError, match=msg):
        set_path(DOC, path, 1)


def test_expand_and_get():
    assert expand(DOC, "hosts.*.name") == [["hosts", 0, "name"], ["hosts", 1, "name"]]
    assert get_path(DOC, "hosts.*.name") == ["a", "b"]


def test_parse_assignment():
    assert parse_assignment("a.b=3") == ("a.b", 3)
    assert parse_assignment("a=[1, 2]") == ("a", [1, 2])
    assert parse_assignment("a=hello") == ("a", "hello")
    with pytest.raises(PathError, match="PATH=VALUE"):
        parse_assignment("nothing")
