"""The control loop: the domain manager's periodic look at the cluster.

What it does: every ``run.control_period_ms`` (at its multiples, with every host standing at
that instant) it reads each host's usage probe (busy time per pCPU and running time per domain
since the start: a pure pause point), turns the differences into each host's utilisation and
each domain's CPU use over the period, accounts the period's energy (``cluster/power.py``),
and, when the config has ``policies``, decides migrations (``cluster/policies.py``) and starts
them as real live migrations (``cluster/migration.py``: pre-copy over the modelled links, with
its abort handling). ``evacuate`` events are carried out here too, as soon as they happen and
then whenever a migration ends, until the host is empty.

It exists only when the config has ``policies``, ``power`` or an ``evacuate`` event, so every
other run is exactly what it was.

Which function does each step: ``step`` (tick or pending work), ``_sample`` (usage probe to
utilisation), ``_active`` (which hosts were on during the period), ``_views`` (the policies'
snapshot, with migrations under way projected), ``_issue`` (the concurrency limits, then
``DomainManager.start_migration``), ``_evacuate``; ``summary`` and ``files`` are its share of
the run's outputs.

Ordering and determinism: at an instant the manager handles config events first, then this
loop, then the migrations' own steps. The loop reads only the usage probes and the manager's
books, visits hosts in config order and domains by uid, so its decisions are the same on the
inline and the Ray backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hosts.clock import MS, NEVER

from cluster.config.schema import MigrateAction
from cluster.policies import DomView, HostView, Move, PoliciesCfg, PrecopyPolicy, plan_balance, plan_consolidation, plan_evacuation
from cluster.power import EnergyMeter, PowerCfg, PowerModelCfg

if TYPE_CHECKING:
    from cluster.config import Plan
    from cluster.manager import DomainManager
    from cluster.migration import Migration


class ControlLoop:
    def __init__(self, mgr: "DomainManager", plan: "Plan"):
        self.mgr = mgr
        self.period = plan.control_period_ns
        self.policies: PoliciesCfg | None = plan.policies
        self.power: PowerCfg | None = plan.power
        self.hosts = list(plan.hosts)
        self.pcpus = {h: s.nr_pcpus for h, s in plan.hosts.items()}
        self.mem_pages = {h: s.mem_pages for h, s in plan.hosts.items()}
        self.dom0_pages = {plan.dom_host[d.uid]: d.max_pages for d in plan.domains if d.is_dom0}
        self.meter = EnergyMeter(plan.power, self.hosts)
        self.t_prev = 0
        self.t_next = self.period
        self.wake_ns = NEVER
        self.stepping = False
        self.prev_busy: dict[str, int] = {h: 0 for h in self.hosts}
        self.prev_run: dict[int, int] = {}
        self.dom_cpu: dict[int, float] = {}
        self.util: dict[str, float] = {h: 0.0 for h in self.hosts}
        self.history: dict[str, list[float]] = {h: [] for h in self.hosts}
        self.occupied_prev: set[str] = self._occupied()
        self.evacuating: list[tuple[str, PrecopyPolicy]] = []  # (host, pre-copy policy), in event order
        self.maintenance: set[str] = set()
        self.started: dict[str, int] = {"consolidation": 0, "load_balance": 0, "evacuate": 0}
        self.deferred = 0  # moves held back by the concurrency limits
        self.max_seen = {"per_host": 0, "per_link": 0}

    # --- the manager's view ----------------------------------------------------------------------
    def next_ns(self) -> int:
        return min(self.t_next, self.wake_ns)

    def wake(self, now: int) -> None:
        """A migration ended at ``now``: a pending evacuation may go on (not from within this
        loop's own step: a move refused at once waits for the next step)."""
        if self.evacuating and not self.stepping:
            self.wake_ns = min(self.wake_ns, now)

    def step(self, now: int) -> None:
        self.wake_ns = NEVER
        self.stepping = True
        try:
            if now >= self.t_next:
                self._tick(now)
                while self.t_next <= now:
                    self.t_next += self.period
            self._evacuate(now)
        finally:
            self.stepping = False

    def finish(self, now: int) -> None:
        """The run ends at ``now``: account the last (partial) period."""
        if now > self.t_prev:
            self._sample(now)

    # --- sampling ----------------------------------------------------------------------------------
    def _guests(self) -> dict[str, list[int]]:
        mgr = self.mgr
        out: dict[str, list[int]] = {h: [] for h in self.hosts}
        for uid, host in sorted(mgr.where.items()):
            d = mgr.domains[uid]
            if d.is_dom0 or uid in mgr.destroyed or uid in mgr.lost:
                continue
            out[host].append(uid)
        return out

    def _in_flight(self) -> list["Migration"]:
        return [m for m in self.mgr.activities if not m.done]

    def _occupied(self) -> set[str]:
        busy = {h for h, uids in self._guests().items() if uids}
        for m in self._in_flight():
            busy.update((m.src, m.dst))
        return busy

    def _active(self, t0: int, t1: int) -> tuple[dict[str, bool], dict[str, bool]]:
        """(on, active) of every host during (t0, t1]: active if it held a guest at either end
        or took part in a migration during the period; on if alive (a host that failed in
        the period counts for it) and, when empty hosts are switched off, active."""
        mgr = self.mgr
        off_empty = self.power is not None and self.power.switch_off_empty
        occupied = self._occupied() | self.occupied_prev
        for m in mgr.migrations:
            o = m.out
            if o.status != "refused" and o.start_ns < t1 and (o.end_ns < 0 or o.end_ns > t0):
                occupied.update((m.src, m.dst))
        alive = {h: mgr.failed.get(h, NEVER) > t0 and mgr.lost_hosts.get(h, NEVER) > t0 for h in self.hosts}
        active = {h: alive[h] and h in occupied for h in self.hosts}
        on = {h: alive[h] and (active[h] or not off_empty) for h in self.hosts}
        return on, active

    def _sample(self, now: int) -> None:
        mgr = self.mgr
        live = mgr.live_hosts()
        usage = mgr.gather({name: h.usage() for name, h in live.items()})
        dt = now - self.t_prev
        where = mgr.where
        for h in self.hosts:
            u = usage.get(h)
            if u is None:
                self.util[h] = 0.0
                continue
            busy = sum(u.busy_ns)
            self.util[h] = min(1.0, max(0.0, (busy - self.prev_busy[h]) / (dt * self.pcpus[h]))) if dt > 0 else 0.0
            self.prev_busy[h] = busy
            for uid, run in u.running_ns.items():
                if where.get(uid) != h or uid not in mgr.domains or mgr.domains[uid].is_dom0:
                    continue
                prev = self.prev_run.get(uid, 0)
                if run >= prev and dt > 0:  # (a vCPU moving between pCPUs is missed until it lands)
                    self.dom_cpu[uid] = (run - prev) / dt
                    self.prev_run[uid] = run
            self.history[h].append(self.util[h])
            keep = self.policies.consolidation.history if self.policies is not None and self.policies.consolidation is not None else 1
            del self.history[h][:-keep]
        on, active = self._active(self.t_prev, now)
        self.meter.account(self.t_prev, now, self.util, on, active)
        self.occupied_prev = self._occupied()
        self.t_prev = now

    def _tick(self, now: int) -> None:
        self._sample(now)
        pol = self.policies
        if pol is None:
            return
        views = self._views()
        if pol.consolidation is not None:
            self._issue(plan_consolidation(pol.consolidation, views), "consolidation", now)
        if pol.load_balance is not None:
            self._issue(plan_balance(pol.load_balance, self._views()), "load_balance", now)

    # --- decisions -----------------------------------------------------------------------------------
    def _model(self, h: str) -> PowerModelCfg:
        return self.power.model_for(h) if self.power is not None else PowerModelCfg()

    def _views(self, include: set[str] | None = None) -> list[HostView]:
        """The policies' snapshot of every usable host (alive, not being evacuated, or in
        ``include``): utilisation and memory projected over the migrations under way."""
        mgr = self.mgr
        guests = self._guests()
        flying = self._in_flight()
        moving = {m.uid for m in flying}
        off = self.power is not None and self.power.switch_off_empty
        views: dict[str, HostView] = {}
        for h in self.hosts:
            if h in mgr.failed or h in mgr.lost_hosts or (h in self.maintenance and h not in (include or set())):
                continue
            used = self.dom0_pages.get(h, 0) + sum(mgr.domains[u].max_pages for u in guests[h])
            doms = [DomView(u, mgr.domains[u].name, mgr.domains[u].max_pages, self.dom_cpu.get(u, 0.0)) for u in guests[h] if u not in moving]
            views[h] = HostView(h, self.pcpus[h], self.mem_pages[h], used, self.util[h], doms, len(guests[h]), list(self.history[h]), self._model(h), off)
        for m in flying:
            if mgr.where.get(m.uid) != m.src:
                continue  # it runs on the destination already (only the source's release is left)
            cpu = self.dom_cpu.get(m.uid, 0.0)
            src, dst = views.get(m.src), views.get(m.dst)
            if src is not None:
                src.util = max(0.0, src.util - cpu / src.pcpus)
                src.guests -= 1
            if dst is not None:
                dst.util += cpu / dst.pcpus
                dst.used_pages += mgr.domains[m.uid].max_pages
                dst.guests += 1
        return list(views.values())

    def _counts(self) -> tuple[dict[str, int], dict[frozenset[str], int]]:
        per_host: dict[str, int] = {}
        per_link: dict[frozenset[str], int] = {}
        for m in self._in_flight():
            for h in (m.src, m.dst):
                per_host[h] = per_host.get(h, 0) + 1
            k = frozenset((m.src, m.dst))
            per_link[k] = per_link.get(k, 0) + 1
        return per_host, per_link

    def _issue(self, moves: list[Move], why: str, now: int, policy: PrecopyPolicy | None = None) -> int:
        """Start the moves the concurrency limits allow (the rest wait for a later step)."""
        pol = self.policies
        max_host = pol.max_concurrent_per_host if pol is not None else 1
        max_link = pol.max_concurrent_per_link if pol is not None else 1
        precopy: PrecopyPolicy = policy or (pol.migration_policy if pol is not None else "xen")
        mgr = self.mgr
        n = 0
        for mv in moves:
            per_host, per_link = self._counts()
            if per_host.get(mv.src, 0) >= max_host or per_host.get(mv.dst, 0) >= max_host or per_link.get(frozenset((mv.src, mv.dst)), 0) >= max_link:
                self.deferred += 1
                continue
            entry: dict[str, Any] = {"at_ns": now, "event": why, "domain": mv.name, "host": mv.src}
            mgr.start_migration(mv.uid, MigrateAction(domain=mv.name, to=mv.dst, policy=precopy), entry)
            entry["detail"] = f"{mv.why}; {entry.get('detail', '')}"
            mgr.log.append(entry)
            self.started[why] += 1
            n += 1
            per_host, per_link = self._counts()
            self.max_seen["per_host"] = max(self.max_seen["per_host"], max(per_host.values(), default=0))
            self.max_seen["per_link"] = max(self.max_seen["per_link"], max(per_link.values(), default=0))
        return n

    # --- evacuation ----------------------------------------------------------------------------------
    def evacuate(self, host: str, policy: PrecopyPolicy, now: int, entry: dict[str, Any]) -> None:
        """The ``evacuate`` event: ``host`` takes no domain from now on, and every domain on
        it is migrated elsewhere (as the concurrency limits allow)."""
        if host in self.maintenance:
            entry["skipped"] = "already being evacuated"
            return
        self.maintenance.add(host)
        self.evacuating.append((host, policy))
        entry["detail"] = f"{len(self._guests()[host])} domain(s) to move"
        self.wake_ns = min(self.wake_ns, now)

    def _evacuate(self, now: int) -> None:
        mgr = self.mgr
        for host, policy in list(self.evacuating):
            if host in mgr.failed:
                self.evacuating.remove((host, policy))
                continue
            views = self._views(include={host})
            src = next((v for v in views if v.name == host), None)
            if src is None:
                continue
            if src.guests == 0:
                self.evacuating.remove((host, policy))
                mgr.log.append({"at_ns": now, "event": "evacuated", "domain": "", "host": host, "detail": "no guest left"})
                continue
            if not src.doms:
                continue  # its last domains are on their way
            others = [v for v in views if v.name != host]
            limit = self.policies.consolidation.upper if self.policies is not None and self.policies.consolidation is not None else 1.0
            skip = set(self.maintenance)
            moves = plan_evacuation(src, others, limit, skip)
            self._issue(moves, "evacuate", now, policy)

    # --- outputs ---------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Top-level entries of summary.json: ``hosts_active``, ``power`` (with a power
        model), ``policies`` (with policies or evacuations)."""
        out: dict[str, Any] = {"hosts_active": {**self.meter.hosts_active(), "control_period_ms": self.period / MS}}
        power = self.meter.energy()
        if power is not None:
            out["power"] = power
        if self.policies is not None or self.maintenance:
            out["policies"] = {
                "started": dict(self.started),
                "deferred_by_limits": self.deferred,
                "max_concurrent_seen": dict(self.max_seen),
                "evacuated": sorted(self.maintenance),
            }
        return out

    def files(self) -> dict[str, str]:
        return self.meter.files()
