"""DomainManager: the toolstack (xl/libxl) of the simulated cluster.

It owns the host registry and the domain table, creates every domain at time 0, and drives
the hosts in coarse steps to the next instant the toolstack must act (a config event, a
migration step, a control-loop step every ``control_period_ms`` when policies or power are
configured) or the driver's next pause, and then it acts. It never stops hosts for nothing:
under Ray every stop is a round of actor calls. Hosts never talk to each other except through
it, so a step that concerns some hosts only (a migration's PAGE_DATA batch: its source and
destination) advances only those; the others stay behind and are brought to the manager's
instant before anything is asked of them (``HostTable``), at the latest at the driver's next
pause. A host stopped and resumed behaves as if it had not stopped (tested), so this changes no
result.

It talks to hosts only through typed clients (``cluster.hostclient.HostClient``) whose
methods return pending answers, so that under Ray all hosts run their stretch in parallel
while the manager waits once. The same class runs in-process under the inline backend and
inside the domain-manager actor under Ray.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from hosts.clock import NEVER
from hosts.domain import DomainInfo
from hosts.messages import PcpuReport

from cluster.config import Plan, TimedEvent
from cluster.config.schema import (
    CutLinkAction,
    DestroyAction,
    EvacuateAction,
    FailHostAction,
    MigrateAction,
    PauseAction,
    PinAction,
    PoolMoveAction,
    RestoreLinkAction,
    SetAction,
    UnpauseAction,
)
from cluster.errors import HostLost, ManagerError, RunIncomplete
from cluster.hostclient import HostClient, Pending, Ready

if TYPE_CHECKING:
    from cluster.control import ControlLoop
    from cluster.migration import Migration
from cluster.network import Network


T = TypeVar("T")


class HostTable(Mapping[str, HostClient]):
    """The hosts' clients, as the toolstack's code reads them: a live host left behind by the
    manager's last steps is brought to the manager's instant before its client is handed out."""

    __slots__ = ("_mgr", "_clients")

    def __init__(self, mgr: DomainManager, clients: dict[str, HostClient]):
        self._mgr = mgr
        self._clients = clients

    def __getitem__(self, name: str) -> HostClient:
        client = self._clients[name]
        self._mgr.sync((name,))
        return client

    def __iter__(self) -> Iterator[str]:
        return iter(self._clients)

    def __len__(self) -> int:
        return len(self._clients)


class DomainManager:
    def __init__(self, plan: Plan, hosts: dict[str, HostClient]):
        self.plan = plan
        self.clients = hosts  # the raw table: only the stepping code below reads it
        self.hosts = HostTable(self, hosts)
        self.host_now: dict[str, int] = {name: 0 for name in hosts}  # the instant each host stands at
        self.now = 0
        self.domains: dict[int, DomainInfo] = {d.uid: d for d in plan.domains}
        self.where: dict[int, str] = dict(plan.dom_host)
        self.by_name: dict[str, int] = {d.name: d.uid for d in plan.domains if not d.is_dom0}
        self.events = list(plan.events)
        self.log: list[dict[str, Any]] = []
        self.destroyed: set[int] = set()
        self.activities: list[Migration] = []  # long-running toolstack work (migrations), stepped in time
        self.net = Network.from_config(list(plan.hosts), plan.links, plan.net_default_mbit_s, plan.net_default_latency_us, plan.nics)
        self.failed: dict[str, int] = {}  # host -> time it failed
        self.lost_hosts: dict[str, int] = {}  # host -> time its Ray node was found dead
        self.lost: dict[int, int] = {}  # domain uid -> time it was lost with its host
        self.migrations: list[Migration] = []
        self.host_stats: dict[str, dict[str, Any]] = {}
        self._mig_seq = 0
        self.control: ControlLoop | None = None  # policies, power, evacuations (cluster/control.py)
        if plan.control:
            from cluster.control import ControlLoop

            self.control = ControlLoop(self, plan)

    # --- talking to hosts ----------------------------------------------------------------------
    def gather(self, futs: dict[str, Pending[T]]) -> dict[str, T]:
        """Wait for every host's answer (so the survivors stand at the same instant even if
        one fails), then raise the first error; a host lost with its node stops the run."""
        out: dict[str, T] = {}
        errors: list[tuple[str, Exception]] = []
        for name, f in futs.items():
            try:
                out[name] = f.result()
            except Exception as exc:  # noqa: BLE001
                errors.append((name, exc))
        if errors:
            self._maybe_lost(errors)
            raise errors[0][1]
        return out

    def ask(self, host: str, answer: Pending[T]) -> T:
        """The answer of one request to ``host``."""
        return self.gather({host: answer})[host]

    def is_live(self, name: str) -> bool:
        """Neither failed nor lost with its node: a host the manager still steps."""
        return name not in self.failed and name not in self.lost_hosts

    def live_hosts(self) -> dict[str, HostClient]:
        """Every live host, each standing at the manager's instant."""
        live = {name: h for name, h in self.clients.items() if self.is_live(name)}
        self.sync(live)
        return live

    def sync(self, names: Iterable[str]) -> None:
        """Bring the named live hosts that stand behind the manager's instant to it (together)."""
        now = self.now
        behind = [n for n in names if self.host_now[n] < now and self.is_live(n)]
        if behind:
            self.gather({n: self.clients[n].run_until(now) for n in behind})
            for n in behind:
                self.host_now[n] = now

    def _maybe_lost(self, errors: list[tuple[str, Exception]]) -> None:
        """A host whose actors died with their node: abort what involves it, stop the run."""
        lost = [(e.host, e) for _h, e in errors if isinstance(e, HostLost)]
        if not lost:
            return
        for h, _e in lost:
            self.lost_hosts[h] = self.now
            self.failed[h] = self.now
        for m in list(self.activities):
            if m.src in self.lost_hosts or m.dst in self.lost_hosts:
                try:
                    m.abort(self.now, f"host {m.dst if m.dst in self.lost_hosts else m.src} lost with its Ray node")
                except Exception:  # noqa: BLE001 - the run stops anyway
                    pass
        for uid, host in self.where.items():
            if host in self.lost_hosts:
                self.lost.setdefault(uid, self.now)
        raise RunIncomplete(sorted(self.lost_hosts), self.now, "; ".join(str(e) for _h, e in lost))

    def apply_pages(self, dst: str, uid: int, record: bytes) -> Pending[int]:
        """A PAGE_DATA record already read into the destination's memory. Not waited for: the
        destination serves it before anything asked of it later, and the caller collects the
        answer (``Migration.collect``) before it relies on the pages."""
        return self.hosts[dst].apply_page_data(uid, Ready(record))

    def domain_counters(self, uid: int, hosts: list[str] | None = None) -> dict[str, int]:
        tot: dict[str, int] = {}
        for h in hosts or [self.where[uid]]:
            if h in self.failed:
                continue
            for k, v in self.ask(h, self.hosts[h].probe_domain(uid)).items():
                tot[k] = tot.get(k, 0) + v
        return tot

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
        self.gather({host: self.hosts[host].create_domains([d.to_dict() for d in doms]) for host, doms in per_host.items()})

    def next_action_ns(self) -> int:
        t = self.events[0].at_ns if self.events else NEVER
        for a in self.activities:
            t = min(t, a.next_ns())
        if self.control is not None:
            t = min(t, self.control.next_ns())
        return t

    def run_until(self, t_end: int, progress: Callable[[int], None] | None = None) -> None:
        """Advance the cluster to ``t_end``, acting on every event and activity on the way;
        every live host stands at ``t_end`` on return."""
        while True:
            self._act()
            if self.now >= t_end:
                break
            nxt = min(t_end, self.next_action_ns())
            try:
                self.run_hosts(nxt, None if nxt >= t_end else self.due_hosts(nxt))
            except RunIncomplete as exc:
                self.now = exc.now = nxt  # the surviving hosts reached it; the lost ones died on the way
                raise
            self.now = nxt
            if progress is not None:
                progress(self.now)
        self.live_hosts()

    def due_hosts(self, t_ns: int) -> set[str] | None:
        """The hosts the toolstack acts on at ``t_ns``: those of the migrations due then, or
        None (all) when an event or the control loop is due, which may concern any host."""
        if (self.events and self.events[0].at_ns <= t_ns) or (self.control is not None and self.control.next_ns() <= t_ns):
            return None
        due: set[str] = set()
        for a in self.activities:
            if a.next_ns() <= t_ns:
                due.update((a.src, a.dst))
        return due

    def run_hosts(self, t_ns: int, only: set[str] | None = None) -> None:
        """The live hosts (or those of ``only``) to ``t_ns``. A migration whose next PAGE_DATA
        batch leaves at ``t_ns`` has its source read the batch in the same exchange
        (``prefetch``): a pure read moved before the other toolstack actions of that instant,
        one round trip instead of two under Ray."""
        wants: dict[str, tuple[Migration, int, bytes]] = {}
        for m in self.activities:
            want = m.prefetch(t_ns)
            if want is not None and m.src not in wants and (only is None or m.src in only):
                wants[m.src] = (m, *want)
        futs: dict[str, Pending[Any]] = {}
        for name, h in self.clients.items():
            if not self.is_live(name) or (only is not None and name not in only):
                continue
            w = wants.get(name)
            futs[name] = h.run_then_read_page_data(t_ns, w[1], w[2]) if w is not None else h.run_until(t_ns)
        got = self.gather(futs)
        for name in futs:
            self.host_now[name] = t_ns
        for name, (m, _uid, pfns) in wants.items():
            if name in got:
                m.prefetched = (t_ns, pfns, got[name])

    def _act(self) -> None:
        while self.events and self.events[0].at_ns <= self.now:
            ev = self.events.pop(0)
            if isinstance(ev.action, (FailHostAction, CutLinkAction, RestoreLinkAction, EvacuateAction)):
                self.apply_cluster_event(ev)
            else:
                self.apply_event(ev)
        progressed = True
        while progressed:  # an activity may have more to do at this same instant
            progressed = False
            if self.control is not None and self.control.next_ns() <= self.now:
                self.control.step(self.now)
                progressed = True
            for a in list(self.activities):
                if not a.done and a.next_ns() <= self.now:
                    a.step(self.now)
                    progressed = True
                if a.done and a in self.activities:
                    self.activities.remove(a)

    def apply_event(self, ev: TimedEvent) -> None:
        act = ev.action
        if isinstance(act, (FailHostAction, CutLinkAction, RestoreLinkAction, EvacuateAction)):
            raise ManagerError(f"event {ev.kind!r} is not a domain event")
        name = act.domain
        uid = self.uid(name)
        host = self.where[uid]
        h = self.hosts[host]
        entry = {"at_ns": self.now, "event": ev.kind, "domain": name, "host": host}
        if uid in self.destroyed:
            entry["skipped"] = "domain destroyed"
        elif uid in self.lost:
            entry["skipped"] = "domain lost with its host"
        elif any(m.uid == uid and not m.done for m in self.activities):
            entry["skipped"] = "domain is being migrated"
        elif isinstance(act, PinAction):
            self.ask(host, h.set_affinity(uid, act.vcpu, act.hard, act.soft))
        elif isinstance(act, SetAction):
            self.ask(host, h.adjust_domain(uid, act.weight, act.cap))
            if act.weight is not None:
                self.domains[uid].weight = act.weight
            if act.cap is not None:
                self.domains[uid].cap = act.cap
        elif isinstance(act, PauseAction):
            self.ask(host, h.pause_domain(uid))
        elif isinstance(act, UnpauseAction):
            self.ask(host, h.unpause_domain(uid))
        elif isinstance(act, DestroyAction):
            self.ask(host, h.pause_domain(uid))
            self.ask(host, h.kill_domain(uid))
            self.destroyed.add(uid)
        elif isinstance(act, MigrateAction):
            self.start_migration(uid, act, entry)
        elif isinstance(act, PoolMoveAction):
            entry["detail"] = f"to pool {act.pool}"
            self.ask(host, h.pause_domain(uid))
            self.wait_settled(host, uid)
            self.ask(host, h.move_domain_pool(uid, act.pool))
        self.log.append(entry)

    def apply_cluster_event(self, ev: TimedEvent) -> None:
        """Events about hosts and links rather than one domain."""
        act = ev.action
        entry = {"at_ns": self.now, "event": ev.kind, "domain": "", "host": ""}
        if isinstance(act, FailHostAction):
            entry["host"] = act.host
            self.fail_host(act.host, entry)
        elif isinstance(act, (CutLinkAction, RestoreLinkAction)):
            up = isinstance(act, RestoreLinkAction)
            entry["detail"] = f"{act.a}-{act.b}"
            broken = self.net.set_link(act.a, act.b, up, self.now)
            for m in list(self.activities):
                if m.fid in broken:
                    m.abort(self.now, f"link {act.a}-{act.b} cut")
        elif isinstance(act, EvacuateAction):
            entry["host"] = act.host
            if self.control is None:
                raise ManagerError("evacuate needs the control loop (the plan has none)")
            self.control.evacuate(act.host, act.policy, self.now, entry)
        else:
            raise ManagerError(f"event {ev.kind!r} is not a cluster event")
        self.log.append(entry)

    def fail_host(self, host: str, entry: dict[str, Any]) -> None:
        """A host crashes: its domains are lost, migrations to or from it abort."""
        if host in self.failed:
            return
        self.failed[host] = self.now
        for m in list(self.activities):
            if host in (m.src, m.dst):
                m.abort(self.now, f"host {host} failed")
        for uid, h in self.where.items():
            if h == host and uid not in self.destroyed:
                self.lost[uid] = self.now
        entry["detail"] = f"{sum(1 for u, h in self.where.items() if h == host)} domain(s) lost"

    def wait_settled(self, host: str, uid: int, step_ns: int = 10_000) -> None:
        """After a pause, let the hosts run (10 us at a time) until the domain's vCPUs are off
        their pCPUs; a vCPU in Xen finishes its hypercall or chunk first (stackless)."""
        while not self.ask(host, self.hosts[host].settled(uid)):
            self.now += step_ns
            self.run_hosts(self.now)

    # --- migrations ------------------------------------------------------------------------------
    def start_migration(self, uid: int, act: MigrateAction, entry: dict[str, Any]) -> None:
        from cluster.migration import Migration

        self._mig_seq += 1
        mid = f"m{self._mig_seq}-{self.domains[uid].name}"
        m = Migration(self, uid, act.to, act.policy, act.over(self.plan.migration_defaults), self.now, mid)
        self.activities.append(m)
        self.migrations.append(m)
        entry["detail"] = f"{mid} to {act.to} ({m.policy.name})"
        m.step(self.now)

    def migration_done(self, m: "Migration") -> None:
        self.log.append({"at_ns": self.now, "event": f"migration {m.out.status}", "domain": m.out.domain, "host": m.dst, "detail": m.out.stop_reason or m.out.reason})
        if self.control is not None:
            self.control.wake(self.now)  # a pending evacuation may go on

    def state(self) -> dict[str, Any]:
        """What the run's outputs need from the toolstack (plain data)."""
        return {
            "where": dict(self.where),
            "destroyed": sorted(self.destroyed),
            "log": list(self.log),
            "extra": self.extra_summary(),
            "files": self.extra_files(),
        }

    def extra_summary(self) -> dict[str, Any]:
        from dataclasses import asdict

        stats = self.host_stats
        out = {
            "boundaries": sum(s["boundaries"] for s in stats.values()),
            "rounds": sum(s["rounds"] for s in stats.values()),
            "hosts": stats,
            "migrations": [asdict(m.out) for m in self.migrations],
            "failed_hosts": dict(self.failed),
            "lost_hosts": dict(self.lost_hosts),
            "lost_domains": {u: t for u, t in self.lost.items()},
        }
        if self.control is not None:
            out.update(self.control.summary())
        return out

    def extra_files(self) -> dict[str, Any]:
        return self.control.files() if self.control is not None else {}

    def finish(self) -> dict[str, list[PcpuReport]]:
        """Close every host's books (a failed host's at the instant it failed; a lost host has
        none); returns per host the pCPU reports."""
        self.live_hosts()  # the survivors of a run cut short stand at its last instant
        alive = {name: h for name, h in self.clients.items() if name not in self.lost_hosts}
        if self.control is not None and not self.lost_hosts:
            self.control.finish(self.now)  # the last period's utilisation and energy
        stats = {name: self.ask(name, h.stats()) for name, h in alive.items()}
        for name, t in self.failed.items():
            if name in stats:
                stats[name]["failed_at_ns"] = t
        self.host_stats = stats
        return self.gather({name: h.finish() for name, h in alive.items()})
