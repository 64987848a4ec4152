"""DomainManager: the toolstack (xl/libxl) of the simulated cluster.

It owns the host registry and the domain table, creates every domain at time 0, and drives
the hosts in coarse steps: all hosts advance together to the next instant the toolstack must
act (a config event, a migration step) or by at most ``control_period_ms``, and then it acts,
with every host standing at that instant. Hosts never talk to each other except through it.

It talks to hosts only through handles (``HostHandle``): ``submit`` a method call, later
``result`` it, so that under Ray all hosts run their stretch in parallel while the manager
waits once. The same class runs in-process under the inline backend and inside the
domain-manager actor under Ray.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from hosts.clock import NEVER
from hosts.domain import DomainInfo

from cluster.config import Plan, TimedEvent


class HostHandle(Protocol):
    name: str

    def submit(self, method: str, *args: Any) -> Any: ...
    def result(self, fut: Any) -> Any: ...


class ManagerError(RuntimeError):
    pass


class DomainManager:
    def __init__(self, plan: Plan, hosts: dict[str, HostHandle]):
        self.plan = plan
        self.hosts = hosts
        self.now = 0
        self.domains: dict[int, DomainInfo] = {d.uid: d for d in plan.domains}
        self.where: dict[int, str] = dict(plan.dom_host)
        self.by_name: dict[str, int] = {d.name: d.uid for d in plan.domains if not d.is_dom0}
        self.events = list(plan.events)
        self.log: list[dict] = []
        self.destroyed: set[int] = set()
        self.activities: list[Any] = []  # long-running toolstack work (migrations), stepped in time

    # --- helpers -----------------------------------------------------------------------------
    def call(self, host: str, method: str, *args: Any) -> Any:
        h = self.hosts[host]
        return h.result(h.submit(method, *args))

    def call_all(self, method: str, *args: Any) -> dict[str, Any]:
        futs = {name: h.submit(method, *args) for name, h in self.hosts.items()}
        return {name: self.hosts[name].result(f) for name, f in futs.items()}

    def uid(self, name: str) -> int:
        try:
            return self.by_name[name]
        except KeyError:
            raise ManagerError(f"unknown domain {name!r}") from None

    # --- lifecycle -----------------------------------------------------------------------------
    def setup(self) -> None:
        """Create every Domain-0, then every guest, at time 0 (in uid order per host)."""
        per_host: dict[str, list[DomainInfo]] = {}
        for d in sorted(self.domains.values(), key=lambda d: d.uid):
            per_host.setdefault(self.where[d.uid], []).append(d)
        futs = {}
        for host, doms in per_host.items():
            futs[host] = self.hosts[host].submit("create_domains", [d.to_dict() for d in doms])
        for host, f in futs.items():
            self.hosts[host].result(f)

    def next_action_ns(self) -> int:
        t = self.events[0].at_ns if self.events else NEVER
        for a in self.activities:
            t = min(t, a.next_ns())
        return t

    def run_until(self, t_end: int, progress: Callable[[int], None] | None = None) -> None:
        """Advance the cluster to ``t_end``, acting on every event and activity on the way."""
        while True:
            self._act()
            if self.now >= t_end:
                break
            nxt = min(t_end, self.next_action_ns(), self.now + self.plan.control_period_ns)
            self.call_all("run_until", nxt)
            self.now = nxt
            if progress is not None:
                progress(self.now)

    def _act(self) -> None:
        while self.events and self.events[0].at_ns <= self.now:
            ev = self.events.pop(0)
            self.apply_event(ev)
        for a in list(self.activities):
            if a.next_ns() <= self.now:
                a.step(self.now)
            if a.done:
                self.activities.remove(a)

    def apply_event(self, ev: TimedEvent) -> None:
        args = ev.args
        uid = self.uid(args["domain"])
        host = self.where[uid]
        entry = {"at_ns": self.now, "event": ev.kind, "domain": args["domain"], "host": host}
        if uid in self.destroyed:
            entry["skipped"] = "domain destroyed"
        elif ev.kind == "pin":
            self.call(host, "set_affinity", uid, args["vcpu"], args["hard"], args.get("soft") or [])
        elif ev.kind == "set":
            changes = {k: args[k] for k in ("weight", "cap") if args.get(k) is not None}
            self.call(host, "adjust_domain", uid, changes)
            for k, v in changes.items():
                setattr(self.domains[uid], k, v)
        elif ev.kind == "pause":
            self.call(host, "pause_domain", uid)
        elif ev.kind == "unpause":
            self.call(host, "unpause_domain", uid)
        elif ev.kind == "destroy":
            self.call(host, "pause_domain", uid)
            self.call(host, "kill_domain", uid)
            self.destroyed.add(uid)
        else:
            self.apply_other(ev, entry)
        self.log.append(entry)

    def apply_other(self, ev: TimedEvent, entry: dict) -> None:
        raise ManagerError(f"event {ev.index}: unknown action {ev.kind!r}")

    def state(self) -> dict:
        """What the run's outputs need from the toolstack (plain data)."""
        return {
            "where": dict(self.where),
            "destroyed": sorted(self.destroyed),
            "log": list(self.log),
            "extra": self.extra_summary(),
            "files": self.extra_files(),
        }

    def extra_summary(self) -> dict:
        stats = getattr(self, "host_stats", {})
        return {"boundaries": sum(s["boundaries"] for s in stats.values()), "rounds": sum(s["rounds"] for s in stats.values()), "hosts": stats}

    def extra_files(self) -> dict:
        return {}

    def finish(self) -> dict[str, list[dict]]:
        """Close every host's books; returns per host the pCPU reports."""
        stats = self.call_all("stats")
        self.host_stats = stats
        return self.call_all("finish")
