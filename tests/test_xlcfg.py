"""xl domain config files in: xl's syntax, the keys hvsim maps, its warnings and its errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cluster.cli import app
from cluster.config import config_digest, load_config
from cluster.errors import ConfigError
from cluster.xlcfg import cpu_list, domain_fields, parse

from conftest import CONFIGS, simulate_file

runner = CliRunner()
HOSTS = [{"name": "h0", "pcpus": 4, "mem_mib": 4096, "scheduler": {"name": "credit"}}]


def cluster(tmp_path: Path, xl_text: str, **entry) -> Path:
    (tmp_path / "g.cfg").write_text(xl_text)
    doc = {"run": {"duration_ms": 100}, "hosts": HOSTS, "domains": [{"xl": "g.cfg", "host": "h0", **entry}]}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


# --- syntax (libxlu_cfg_l.l / libxlu_cfg_y.y) ----------------------------------------------------------


def test_syntax_strings_numbers_lists_comments_and_separators():
    text = r'''
# a comment line
name = "a\tb\x41\101"  ; memory=0x200   # trailing comment
kernel='/boot/v mlinuz'
disk = [ 'phy:/dev/a,xvda,w',
         "file:/b,xvdb,r",        # lists span lines and may end with a comma
       ]
nested = [ [ "x", 1 ], [] ]
vcpus = 010
extra = "a"
extra += "b"
vif = [ "x" ]
vif += [ "y" ]
memory = 512
'''
    s = parse(text, "t.cfg")
    assert s["name"].value == "a\tbAA"
    assert s["kernel"].value == "/boot/v mlinuz"
    assert s["disk"].value == ["phy:/dev/a,xvda,w", "file:/b,xvdb,r"] and s["disk"].line == 5
    assert s["nested"].value == [["x", "1"], []]
    assert s["vcpus"].value == "010"
    assert s["extra"].value == "ab" and s["vif"].value == ["x", "y"]
    assert s["memory"].value == "512"  # the last setting of a key wins


@pytest.mark.parametrize("text,line,near", [
    ("name = \"a\"\nmemory = = 3\n", 2, "`='"),
    ("name = [ \"a\" \"b\" ]\n", 1, "`\"b\"'"),
    ("vcpus 2\n", 1, "`2'"),
    ("name = \"unterminated\n", 1, "`\"unterminated'"),
    ("Name = 'x'\n", 1, "`Name'"),
    ("name = 'x'\nimport os\n", 2, "`os'"),
])
def test_syntax_errors_name_the_file_line_and_token(text, line, near):
    with pytest.raises(ConfigError) as e:
        parse(text, "g.cfg")
    msg = str(e.value)
    assert msg.startswith(f"g.cfg:{line}: config parsing error near ") and near in msg, msg


# --- values ---------------------------------------------------------------------------------------------------


def test_cpu_lists_as_xl_reads_them():
    assert cpu_list("0-3,^2", 8, "f:1", "cpus") == [0, 1, 3]
    assert cpu_list("all", 8, "f:1", "cpus") is None
    assert cpu_list("all,^7", 8, "f:1", "cpus") == list(range(7))
    assert cpu_list("5,1-2", 8, "f:1", "cpus") == [1, 2, 5]
    for bad, words in [("nodes:0-1", "NUMA"), ("node:1,^2", "NUMA"), ("3-1", "invalid cpu range"), ("x", "invalid cpu range"),
                       ("^2", "leaves no pCPU"), ("0-9", "does not exist")]:
        with pytest.raises(ConfigError) as e:
            cpu_list(bad, 8, "g.cfg:3", "cpus")
        assert str(e.value).startswith("g.cfg:3: cpus: ") and words in str(e.value), str(e.value)


@pytest.mark.parametrize("text,paging", [
    ("", "pv"),  # xl's default type on x86
    ("type='pv'\nhap=0", "pv"),
    ("type='hvm'", "hvm-hap"),
    ("type='hvm'\nhap=0", "hvm-shadow"),
    ("type='pvh'", "hvm-hap"),
    ("type='pvh'\nhap=0", "hvm-shadow"),
    ("builder='hvm'", "hvm-hap"),
    ("builder='generic'", "pv"),
    ("builder='hvm'\ntype='pv'", "pv"),  # type wins over the deprecated builder
])
def test_type_and_hap_select_the_paging_mode(tmp_path, text, paging):
    p = tmp_path / "g.cfg"
    p.write_text("name='g'\n" + text + "\n")
    fields, _ = domain_fields(p, "g.cfg", 4)
    assert fields["paging"] == paging


def test_every_supported_key_maps_to_its_field(tmp_path):
    p = tmp_path / "g.cfg"
    p.write_text('name="web"\nmemory=1024\nmaxmem=2048\nvcpus=2\nmaxvcpus=2\ncpus=["0","1-3,^2"]\ncpus_soft="2-3"\n'
                 'type="hvm"\ncpu_weight=512\ncap=150\npool="Pool-0"\n')
    fields, notes = domain_fields(p, "g.cfg", 4)
    assert fields == {"name": "web", "mem_mib": 1024, "max_mem_mib": 2048, "vcpus": 2, "hard_affinity": [[0], [1, 3]],
                      "soft_affinity": [2, 3], "paging": "hvm-hap", "weight": 512, "cap": 150, "pool": "Pool-0"}
    assert notes == []


@pytest.mark.parametrize("text,line,words", [
    ("memory = 'lots'", 2, "parameter `memory' is not a valid number"),
    ("memory = [ 1 ]", 2, "parameter `memory' is a list but should be a single value"),
    ("vcpus = 0", 2, "value `0' is smaller than minimum bound '1'"),
    ("cpu_weight = 70000", 2, "value `70000' is greater than maximum bound '65535'"),
    ("type = 'xen'", 2, "Invalid domain type `xen'"),
    ("vcpus = 4\nmaxvcpus = 2", 3, "maxvcpus (2) must not be less than vcpus (4)"),
    ("memory = 512\nmaxmem = 256", 3, "maxmem (256) must be equal to or greater than memory (512)"),
    ("cpus = 'nodes:0'", 2, "NUMA node ranges are not supported"),
    ("cpus = ['0', '1', '2']", 2, "3 entries for 1 vCPU(s)"),
])
def test_wrong_values_get_xls_message_with_file_and_line(tmp_path, text, line, words):
    p = tmp_path / "g.cfg"
    p.write_text("name = 'g'\n" + text + "\n")
    with pytest.raises(ConfigError) as e:
        domain_fields(p, "g.cfg", 4)
    assert str(e.value).startswith(f"g.cfg:{line}: ") and words in str(e.value), str(e.value)


def test_maxvcpus_above_vcpus_is_noted_not_dropped(tmp_path):
    p = tmp_path / "g.cfg"
    p.write_text("name='g'\nvcpus=2\nmaxvcpus=8\n")
    fields, notes = domain_fields(p, "g.cfg", 4)
    assert fields["vcpus"] == 2 and any("maxvcpus=8" in n and "hot-plug" in n for n in notes)


# --- in a cluster config -----------------------------------------------------------------------------------------


def test_unmodelled_keys_are_listed_in_one_warning_line(tmp_path, caplog):
    p = cluster(tmp_path, "name='g'\ntype='hvm'\ndisk=['phy:/x,xvda,w']\nvif=['bridge=br0']\non_crash='restart'\n", workload={"kind": "cpu"})
    with caplog.at_level(logging.WARNING, logger="hvsim.config"):
        cfg, _ = load_config(p)
    lines = [r.getMessage() for r in caplog.records if r.name == "hvsim.config"]
    assert len(lines) == 1
    assert "g.cfg: warning: xl keys hvsim does not model, ignored: disk (line 3), vif (line 4), on_crash (line 5)" in lines[0]
    assert cfg.domains[0].name == "g" and cfg.domains[0].paging == "hvm-hap"


def test_yaml_fields_beside_xl_override_the_file(tmp_path):
    p = cluster(tmp_path, "name='g'\nmemory=1024\nvcpus=2\ncpu_weight=512\ntype='hvm'\n", name="other", vcpus=3, weight=128, workload={"kind": "cpu"})
    cfg, resolved = load_config(p)
    d = cfg.domains[0]
    assert (d.name, d.vcpus, d.weight, d.mem_mib, d.paging) == ("other", 3, 128, 1024, "hvm-hap")
    assert d.xl == str(tmp_path / "g.cfg")
    # the resolved config is self-contained: the domain written out whole, without the file
    assert "xl" not in resolved["domains"][0]


def test_an_xl_domain_equals_the_same_domain_written_in_yaml(tmp_path):
    xl = cluster(tmp_path, "name='g'\nmemory=512\nvcpus=2\ncpus='0-1'\ncpu_weight=300\ncap=50\ntype='hvm'\nhap=0\n", workload={"kind": "cpu"})
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"run": {"duration_ms": 100}, "hosts": HOSTS, "domains": [
        {"name": "g", "host": "h0", "mem_mib": 512, "vcpus": 2, "hard_affinity": [0, 1], "weight": 300, "cap": 50,
         "paging": "hvm-shadow", "workload": {"kind": "cpu"}}]}))
    a, _ = load_config(xl)
    b, _ = load_config(plain)
    assert config_digest(a) == config_digest(b)
    assert simulate_file(xl).summary["trace_digest"] == simulate_file(plain).summary["trace_digest"]


def test_cli_bad_xl_file_is_exit_2_with_file_and_line(tmp_path):
    p = cluster(tmp_path, "name = 'g'\nmemory = 12x\n", workload={"kind": "cpu"})
    for cmd in (["validate", str(p)], ["run", str(p), "--backend", "inline", "--out", str(tmp_path / "r")]):
        r = runner.invoke(app, cmd)
        assert r.exit_code == 2, r.output
        assert "g.cfg:2:" in r.output and "memory" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "r").exists()


def test_cli_missing_xl_file_is_exit_2(tmp_path):
    doc = {"hosts": HOSTS, "domains": [{"xl": "nope.cfg", "host": "h0"}]}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(doc))
    r = runner.invoke(app, ["validate", str(p)])
    assert r.exit_code == 2 and "nope.cfg" in r.output and "unable to open" in r.output


def test_a_domain_needs_a_name(tmp_path):
    p = cluster(tmp_path, "memory = 256\n", workload={"kind": "cpu"})
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "name must be specified" in str(e.value)


def test_cpus_out_of_the_host_is_refused_with_the_line(tmp_path):
    p = cluster(tmp_path, "name='g'\n\ncpus='2-5'\n", workload={"kind": "cpu"})
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(str(tmp_path / "g.cfg") + ":3: cpus: pCPU 5 does not exist")


def test_the_shipped_xl_example_runs():
    path = CONFIGS / "xl" / "xl-guests.yaml"
    cfg, _ = load_config(path)
    by = {d.name: d for d in cfg.domains}
    assert set(by) == {"web", "batch", "batch2", "legacy"}
    assert by["web"].paging == "hvm-hap" and by["web"].hard_affinity == [0, 1, 3] and by["web"].weight == 512
    assert by["batch"].cap == 150 and by["batch"].soft_affinity == [2, 3] and by["batch2"].weight == 128
    assert by["legacy"].paging == "pv" and by["legacy"].mem_mib == 256 and by["legacy"].hard_affinity == [[1, 2, 3]]
    res = simulate_file(path, overrides=["run.duration_ms=500"])
    assert {d["name"] for d in res.summary["domains"]} >= set(by)
