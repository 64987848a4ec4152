"""xl domain configuration files (xl.cfg(5)) read as xl reads them, mapped to hvsim domains.

The syntax is libxlutil's (tools/libs/util/libxlu_cfg_l.l, libxlu_cfg_y.y, libxlu_cfg.c):
``KEY = VALUE`` (or ``KEY += VALUE``) settings separated by newlines or ``;``; a VALUE is a
string in double or single quotes (backslash escapes as in C: ``\\n \\t \\\\ \\" \\' \\xHH``,
octal), a number (kept as its text, read with ``strtol(.., 0)`` when a number is wanted: decimal,
``0x`` hex, ``0`` octal) or a list ``[ VALUE, ... ]`` that may nest, span lines and end with a
comma; ``#`` starts a comment to the end of the line; keys are ``[a-z][._0-9a-z]*``. A later
setting of a key replaces an earlier one; ``+=`` appends to a string or a list.

The keys hvsim models (:data:`SUPPORTED`) become fields of a domain entry; every other key is
listed in one warning line (nothing is dropped silently). A malformed file or a wrong value is
a :class:`cluster.errors.ConfigError` worded as xl words it, with the file and the line.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from cluster.errors import ConfigError

log = logging.getLogger("hvsim.config")

#: xl keys hvsim maps to a domain field (the rest are warned about)
SUPPORTED = ("name", "memory", "maxmem", "vcpus", "maxvcpus", "cpus", "cpus_soft", "type", "builder", "hap", "cpu_weight", "cap", "pool")

Value = Union[str, list["Value"]]


@dataclass
class Setting:
    name: str
    value: Value
    line: int
    append: bool = False


# --- lexer (libxlu_cfg_l.l) --------------------------------------------------------------------------
_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r]+)
  | (?P<comment>\#[^\n]*)
  | (?P<nl>\n)
  | (?P<ident>[a-z][._0-9a-z]*)
  | (?P<number>[0-9][0-9a-fx.]*)
  | (?P<dq>"(?:[^\\"\n]|\\[^\n])*")
  | (?P<sq>'(?:[^\\'\n]|\\[^\n])*')
  | (?P<add>\+=)
  | (?P<punct>[,\[\]=;])
    """,
    re.VERBOSE,
)


@dataclass
class _Tok:
    kind: str  # ident number string add punct nl eof
    text: str
    line: int
    value: str = ""


def _where(source: str, line: int) -> str:
    return f"{source}:{line}"


def _parse_error(source: str, tok: _Tok, msg: str) -> ConfigError:
    near = "<newline>" if tok.kind == "nl" else "end of file" if tok.kind == "eof" else f"`{tok.text}'"
    return ConfigError(_where(source, tok.line), None, f"config parsing error near {near}: {msg}")


def _dequote(text: str, source: str, line: int) -> str:
    """xlu__cfgl_dequote."""
    out = []
    body = text[1:-1]
    i = 0
    simple = {'"': '"', "'": "'", "\\": "\\", "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
    while i < len(body):
        c = body[i]
        i += 1
        if c != "\\":
            out.append(c)
            continue
        nc = body[i]
        i += 1
        if nc in simple:
            out.append(simple[nc])
        elif nc == "x":
            m = re.match(r"[0-9a-fA-F]{2}", body[i : i + 2])
            if not m:
                raise ConfigError(_where(source, line), None, f"config parsing error near `{text}': invalid digit after backslash hex numerical character escape in quoted string")
            out.append(chr(int(m.group(0), 16)))
            i += 2
        elif "0" <= nc <= "7":
            m = re.match(r"[0-7]{0,2}", body[i : i + 2])
            digits = nc + (m.group(0) if m else "")
            out.append(chr(int(digits, 8)))
            i += len(digits) - 1
        else:
            raise ConfigError(_where(source, line), None, f"config parsing error near `{text}': invalid character after backlash in quoted string")
    return "".join(out)


def _tokens(text: str, source: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    line = 1
    n = len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if m is None:
            bad = re.match(r"[^ \t\n]*", text[pos:])
            word = bad.group(0) if bad and bad.group(0) else text[pos]
            msg = "lexical error"
            if text.startswith(("'''", '"""'), pos) or word[:1] in "+-.():":
                msg += " (this looks like Python; arbitrary Python is not supported in xl config files)"
            raise ConfigError(_where(source, line), None, f"config parsing error near `{word}': {msg}")
        kind = m.lastgroup or ""
        s = m.group(0)
        if kind == "nl":
            toks.append(_Tok("nl", s, line))
            line += 1
        elif kind in ("dq", "sq"):
            toks.append(_Tok("string", s, line, _dequote(s, source, line)))
        elif kind in ("ident", "number", "add", "punct"):
            toks.append(_Tok(kind, s, line, s))
        pos = m.end()
    toks.append(_Tok("eof", "", line))
    return toks


# --- parser (libxlu_cfg_y.y) ------------------------------------------------------------------------
class _Parser:
    def __init__(self, toks: list[_Tok], source: str):
        self.toks = toks
        self.i = 0
        self.source = source

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def nlok(self) -> None:
        while self.peek().kind == "nl":
            self.i += 1

    def error(self, tok: _Tok) -> ConfigError:
        return _parse_error(self.source, tok, "syntax error")

    def file(self) -> list[Setting]:
        out: list[Setting] = []
        while True:
            t = self.peek()
            if t.kind == "eof":
                return out
            if t.kind == "nl" or (t.kind == "punct" and t.text == ";"):
                self.i += 1
                continue
            if t.kind != "ident":
                raise self.error(t)
            self.i += 1
            op = self.take()
            if not (op.kind == "add" or (op.kind == "punct" and op.text == "=")):
                raise self.error(op)
            value = self.value()
            end = self.peek()
            if end.kind not in ("nl", "eof") and not (end.kind == "punct" and end.text == ";"):
                raise self.error(end)
            out.append(Setting(t.text, value, t.line, op.kind == "add"))

    def value(self) -> Value:
        t = self.take()
        if t.kind in ("string", "number"):
            return t.value
        if t.kind == "punct" and t.text == "[":
            items: list[Value] = []
            self.nlok()
            if self.peek().kind == "punct" and self.peek().text == "]":
                self.i += 1
                return items
            while True:
                items.append(self.value())
                self.nlok()
                sep = self.take()
                if sep.kind == "punct" and sep.text == "]":
                    return items
                if not (sep.kind == "punct" and sep.text == ","):
                    raise self.error(sep)
                self.nlok()
                if self.peek().kind == "punct" and self.peek().text == "]":
                    self.i += 1
                    return items
        raise self.error(t)


def parse(text: str, source: str) -> dict[str, Setting]:
    """The settings of an xl config file by key (the last one of a key wins; ``+=`` appends)."""
    out: dict[str, Setting] = {}
    for s in _Parser(_tokens(text, source), source).file():
        prev = out.get(s.name)
        if s.append and prev is not None:
            if isinstance(prev.value, list) != isinstance(s.value, list):
                raise ConfigError(_where(source, s.line), None, "config parsing error: can't add [list] to \"string\" or vice versa")
            if isinstance(prev.value, list) and isinstance(s.value, list):
                s = Setting(s.name, prev.value + s.value, s.line)
            elif isinstance(prev.value, str) and isinstance(s.value, str):
                s = Setting(s.name, prev.value + s.value, s.line)
        out[s.name] = s
    return out


# --- values (libxlu_cfg.c getters, xl_parse.c) ----------------------------------------------------------
def _atom(src: str, s: Setting) -> str:
    if not isinstance(s.value, str):
        raise ConfigError(_where(src, s.line), None, f"parameter `{s.name}' is a list but should be a single value")
    return s.value


def _long(src: str, s: Setting, lo: int, hi: int) -> int:
    """xlu_cfg_get_bounded_long: strtol(.., 0) over the whole value."""
    text = _atom(src, s)
    if s.append:
        raise ConfigError(_where(src, s.line), None, f"can't use += with numbers for parameter `{s.name}'")
    m = re.fullmatch(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if m is None:
        raise ConfigError(_where(src, s.line), None, f"parameter `{s.name}' is not a valid number")
    digits = m.group(2)
    val = int(digits, 16) if digits[:2] in ("0x", "0X") else int(digits, 8) if digits.startswith("0") and len(digits) > 1 else int(digits)
    if m.group(1) == "-":
        val = -val
    if val < lo:
        raise ConfigError(_where(src, s.line), None, f"value `{val}' is smaller than minimum bound '{lo}'")
    if val > hi:
        raise ConfigError(_where(src, s.line), None, f"value `{val}' is greater than maximum bound '{hi}'")
    return val


def cpu_list(text: str, nr_pcpus: int | None, where: str, key: str) -> list[int] | None:
    """xl's CPULIST (xl_parse.c parse_cpurange): comma-separated ``all``, ``N`` or ``N-M``, each
    optionally negated with ``^``; None means every pCPU (``all`` with nothing taken away).
    NUMA forms (``node:``, ``nodes:``) are refused: hvsim hosts have no NUMA topology."""
    cpus: set[int] = set()
    everything = False
    for item in text.split(","):
        item = item.strip()
        neg = item.startswith("^")
        body = item[1:] if neg else item
        if body.startswith(("node:", "nodes:")):
            raise ConfigError(where, None, f"{key}: `{item}': NUMA node ranges are not supported (hvsim hosts have no NUMA topology); list pCPUs instead")
        if body == "all":
            if nr_pcpus is None:
                raise ConfigError(where, None, f"{key}: `all' needs the domain's host (its pCPU count)")
            rng = set(range(nr_pcpus))
            if neg:
                cpus -= rng
            else:
                cpus |= rng
                everything = True
            continue
        m = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", body)
        if m is None or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ConfigError(where, None, f"{key}: invalid cpu range `{item}' (expected N, N-M, all, each optionally with ^)")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        if nr_pcpus is not None and b >= nr_pcpus:
            raise ConfigError(where, None, f"{key}: pCPU {b} does not exist; the host has pCPUs 0..{nr_pcpus - 1}")
        rng = set(range(a, b + 1))
        if neg:
            cpus -= rng
            everything = False
        else:
            cpus |= rng
    if everything and nr_pcpus is not None and cpus == set(range(nr_pcpus)):
        return None
    if not cpus:
        raise ConfigError(where, None, f"{key}: `{text}' leaves no pCPU")
    return sorted(cpus)


def _affinity(src: str, s: Setting, nr_pcpus: int | None, vcpus: int) -> list[int] | list[list[int]] | None:
    where = _where(src, s.line)
    if isinstance(s.value, list):  # one CPULIST per vCPU; vCPUs not listed are not pinned
        if len(s.value) > vcpus:
            raise ConfigError(where, None, f"{s.name}: {len(s.value)} entries for {vcpus} vCPU(s)")
        per: list[list[int]] = []
        for item in s.value:
            if not isinstance(item, str):
                raise ConfigError(where, None, f"{s.name}: a per-vCPU entry must be a string CPULIST, not a list")
            got = cpu_list(item, nr_pcpus, where, s.name)
            per.append(got if got is not None else [])
        per += [[] for _ in range(vcpus - len(per))]
        return per if any(per) else None
    return cpu_list(s.value, nr_pcpus, where, s.name)


def domain_fields(path: Path, shown: str, nr_pcpus: int | None, yaml_vcpus: int | None = None) -> tuple[dict[str, Any], list[str]]:
    """The hvsim domain fields an xl config file gives, and the notes for its warning line.

    ``shown`` is the file's name in messages; ``nr_pcpus`` the domain host's pCPU count (None if
    the host is not known yet: ranges are then checked by the config's own rules);
    ``yaml_vcpus`` the YAML's ``vcpus`` when it overrides the file's (affinity lists are per vCPU)."""
    if not path.is_file():
        raise ConfigError(shown, None, "unable to open configuration file: no such file" if not path.exists() else "unable to open configuration file: not a regular file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(shown, None, f"unable to open configuration file: {exc}") from None
    sets = parse(text, shown)
    out: dict[str, Any] = {}
    notes: list[str] = []
    g = sets.get
    if (s := g("name")) is not None:
        out["name"] = _atom(shown, s)
    if (s := g("memory")) is not None:
        out["mem_mib"] = _long(shown, s, 1, 1 << 24)
    if (s := g("maxmem")) is not None:
        out["max_mem_mib"] = _long(shown, s, 1, 1 << 24)
        if "mem_mib" in out and out["max_mem_mib"] < out["mem_mib"]:
            raise ConfigError(_where(shown, s.line), None, f"maxmem ({out['max_mem_mib']}) must be equal to or greater than memory ({out['mem_mib']})")
    vcpus = 1
    if (s := g("vcpus")) is not None:
        vcpus = out["vcpus"] = _long(shown, s, 1, 512)
    if (s := g("maxvcpus")) is not None:
        maxv = _long(shown, s, 1, 512)
        if maxv < vcpus:
            raise ConfigError(_where(shown, s.line), None, f"maxvcpus ({maxv}) must not be less than vcpus ({vcpus})")
        if "vcpus" not in out and s is not None:
            out["vcpus"] = vcpus
        if maxv > vcpus:
            notes.append(f"maxvcpus={maxv} (vCPU hot-plug is not modelled: the domain has its {vcpus} online vCPU(s))")
    n_vcpus = yaml_vcpus if yaml_vcpus is not None else vcpus
    for key, field in (("cpus", "hard_affinity"), ("cpus_soft", "soft_affinity")):
        if (s := g(key)) is not None:
            aff = _affinity(shown, s, nr_pcpus, n_vcpus)
            if aff is not None:
                out[field] = aff
    kind = "pv"  # xl's default guest type on x86
    if (s := g("builder")) is not None:
        b = _atom(shown, s)
        if b not in ("generic", "hvm"):
            raise ConfigError(_where(shown, s.line), None, f"builder: invalid value `{b}'; expected generic or hvm (deprecated: use type=)")
        kind = "hvm" if b == "hvm" else "pv"
    if (s := g("type")) is not None:
        kind = _atom(shown, s)
        if kind not in ("pv", "pvh", "hvm"):
            raise ConfigError(_where(shown, s.line), None, f"Invalid domain type `{kind}'; expected pv, pvh or hvm")
    hap = 1
    if (s := g("hap")) is not None:
        hap = _long(shown, s, -(1 << 63), (1 << 63) - 1)
        if kind == "pv":
            notes.append("hap (no effect on a pv guest)")
    out["paging"] = "pv" if kind == "pv" else "hvm-hap" if hap else "hvm-shadow"
    if (s := g("cpu_weight")) is not None:
        out["weight"] = _long(shown, s, 1, 65535)
    if (s := g("cap")) is not None:
        out["cap"] = _long(shown, s, 0, 65535)
    if (s := g("pool")) is not None:
        out["pool"] = _atom(shown, s)
    ignored = [f"{k} (line {st.line})" for k, st in sets.items() if k not in SUPPORTED]
    return out, notes + ignored


def resolve_domains(doc: dict[str, Any], base: Path, file: str) -> dict[str, Any]:
    """Replace each ``domains`` entry that names an xl file (``xl: PATH``, relative to ``base``,
    the YAML's directory) by the fields the file gives, overridden by the entry's own fields; the
    ``xl`` key stays, as the file's path. Logs one warning line per file for the keys hvsim does
    not model."""
    domains = doc.get("domains")
    if not isinstance(domains, list) or not any(isinstance(d, dict) and "xl" in d for d in domains):
        return doc
    hosts = {h.get("name"): h.get("pcpus") for h in doc.get("hosts") or [] if isinstance(h, dict)}
    out = []
    warned: set[Path] = set()
    for i, d in enumerate(domains):
        if not isinstance(d, dict) or "xl" not in d:
            out.append(d)
            continue
        ref = d["xl"]
        if not isinstance(ref, str) or not ref:
            raise ConfigError(file, f"domains[{d.get('name', i)}].xl", "give the path of an xl domain config file (relative to this YAML file)")
        p = Path(ref) if Path(ref).is_absolute() else base / ref
        pcpus = hosts.get(d.get("host"))
        yaml_vcpus = d.get("vcpus") if isinstance(d.get("vcpus"), int) else None
        fields, notes = domain_fields(p, str(p), pcpus if isinstance(pcpus, int) else None, yaml_vcpus)
        if "name" not in fields and "name" not in d:
            raise ConfigError(str(p), None, "Domain name must be specified (name=\"NAME\")")
        merged = {**fields, **{k: v for k, v in d.items() if k != "xl"}}
        merged["xl"] = str(p)
        if notes and p not in warned:
            warned.add(p)
            log.warning("%s: warning: xl keys hvsim does not model, ignored: %s", p, ", ".join(notes))
        out.append(merged)
    return {**doc, "domains": out}
