"""The Ray backend: every pCPU a Ray actor; hosts as placement groups; a domain-manager actor.

Per host, a placement group (STRICT_PACK) keeps its pCPU actors on one Ray node, because they
share the host's memory segment. pCPU 0's actor is the host's master: it creates the segment
and the doorbells, runs the ``HostEngine``, and is the only actor the domain manager calls
(one Ray call per host per coarse step).

Which process steps which pCPU's ``PcpuCore`` is the host's *grouping* (``pcpu_groups``): with
spare cores each pCPU actor steps its own, as Xen runs each pCPU on its own core; where the
node has no more cores than pCPUs (two cores for two hosts of four pCPUs), one process per
host is faster (``processes_per_host``). A host's pCPUs are split into groups of consecutive
pCPUs. The master steps the first group itself; each other group's first actor sits in one long
``serve`` call for the whole run, stepping its group when the master rings
(``cluster.backends.shm``); that call's result is its pCPUs' final reports. The remaining
actors of a group stay placed (they hold their pCPU's share of the host's resources and its
place in the host's fate) but step nothing. Results do not depend on the grouping.

The domain manager is a thin actor over ``cluster.manager.DomainManager``; it reaches hosts
through ``HostClient`` over ``RayTransport`` (typed requests of ``hosts.hostops``), and the
driver reaches it through ``ManagerHandle``; neither sees ``.remote()``. Everything crossing an
actor boundary is msgpack bytes through ``hosts.wire`` (Ray moves bytes without pickling
them): configs, requests, page batches, records and reports.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, cast

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from hosts.messages import PcpuReport
from hosts.wire import message

from cluster.backends.pcpu_actor import PcpuActor, unpack_doc
from cluster.backends.shm import packb, unpackb
from cluster.config import Plan, build_plan, validate_doc
from cluster.errors import HostLost, ManagerError, PlacementError, RunIncomplete
from cluster.hostclient import HostClient, Pending
from cluster.raysession import RaySession

ACTOR_CPUS = 0.01  # a logical share: pCPU actors are many and mostly wait on their doorbell
PLACEMENT_TIMEOUT_S = 10.0


def pcpu_groups(nr_pcpus: int, processes: int) -> list[tuple[int, ...]]:
    """Split pCPUs ``0..nr_pcpus-1`` into ``processes`` groups of consecutive pCPUs (clamped to
    1..nr_pcpus), sizes differing by at most one, larger first."""
    k = max(1, min(processes, nr_pcpus))
    size, extra = divmod(nr_pcpus, k)
    out: list[tuple[int, ...]] = []
    c = 0
    for i in range(k):
        n = size + (1 if i < extra else 0)
        out.append(tuple(range(c, c + n)))
        c += n
    return out


def processes_per_host(nr_pcpus: dict[str, int], node_of: dict[str, str], node_cpus: dict[str, float], setting: int | str) -> dict[str, int]:
    """How many processes step each host's pCPUs.

    ``setting`` is ``run.ray_processes_per_host``: a number (capped at the host's pCPUs), or
    ``auto``: one process per pCPU (Xen's own layout) where the node has more cores than the
    pCPUs placed on it, leaving room for the domain manager and Ray's own processes; else one
    process per host. Measured on two cores, splitting a host never paid: a boundary's work per
    pCPU is microseconds, waking another process costs more (README, "Which process steps
    which pCPU").
    """
    if setting != "auto":
        return {h: max(1, min(int(setting), n)) for h, n in nr_pcpus.items()}
    on_node: dict[str, list[str]] = {}
    for h, node in node_of.items():
        on_node.setdefault(node, []).append(h)
    out: dict[str, int] = {}
    for node, hosts in on_node.items():
        roomy = int(node_cpus.get(node, 1.0)) > sum(nr_pcpus[h] for h in hosts)
        out.update({h: nr_pcpus[h] if roomy else 1 for h in hosts})
    return out


def steppers(nr_pcpus: dict[str, int], node_of: dict[str, str], node_cpus: dict[str, float], procs: dict[str, int], setting: int | str) -> dict[str, str]:
    """Which host's master runs each host's engine (itself, unless shared).

    With ``auto``, where a node holds more hosts stepped by one process each than it has
    cores, those hosts share ``cores`` processes: the hosts, largest first (then in config
    order), fill the first ``cores`` processes one each, then each goes to the process with
    the fewest pCPUs so far (the first on a tie). Hosts never talk between the manager's
    steps, so a process runs its hosts' chunks one after the other, as inline runs them all;
    16 processes on two cores ran 2.2x the CPU of inline (``scripts/bench.py --scaling``).
    A number for ``setting`` never shares: each host keeps its own processes.
    """
    out = {h: h for h in nr_pcpus}
    if setting != "auto":
        return out
    order = {h: i for i, h in enumerate(nr_pcpus)}
    on_node: dict[str, list[str]] = {}
    for h in nr_pcpus:
        if procs.get(h, 1) == 1:
            on_node.setdefault(node_of[h], []).append(h)
    for node, hosts in on_node.items():
        k = max(1, int(node_cpus.get(node, 1.0)))
        if len(hosts) <= k:
            continue
        ranked = sorted(hosts, key=lambda h: (-nr_pcpus[h], order[h]))
        leaders = ranked[:k]
        load = [nr_pcpus[h] for h in leaders]
        for h in ranked[k:]:
            i = min(range(k), key=lambda j: (load[j], j))
            load[i] += nr_pcpus[h]
            out[h] = leaders[i]
    return out


LOST_ERRORS = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)


def _is_lost(exc: BaseException) -> bool:
    if isinstance(exc, LOST_ERRORS):
        return True
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None)
        return cause is not None and ("died" in str(cause) or isinstance(cause, LOST_ERRORS))
    return False


def plan_placement(hosts: list[dict[str, Any]], nodes: list[dict[str, Any]]) -> dict[str, str | None]:
    """Choose a node for each host under constraints; None = let Ray choose.

    Raises PlacementError at once if some host's resources or labels exist on no alive node.
    ``spread`` hosts go to distinct nodes while there are enough, least-loaded first.
    """
    alive = sorted((n for n in nodes if n.get("Alive")), key=lambda n: n["NodeID"])
    out: dict[str, str | None] = {}
    load: dict[str, int] = {n["NodeID"]: 0 for n in alive}
    for h in hosts:
        pl = h.get("placement") or {}
        res, labels = pl.get("resources") or {}, pl.get("labels") or {}
        cands = [
            n["NodeID"]
            for n in alive
            if all(n["Resources"].get(r, 0.0) >= amt for r, amt in res.items())
            and all((n.get("Labels") or {}).get(k) == v for k, v in labels.items())
        ]
        if not cands:
            offered = sorted({r for n in alive for r in n["Resources"] if not r.startswith("node:")} | {f"{k}={v}" for n in alive for k, v in (n.get("Labels") or {}).items() if k != "ray.io/node-id"})
            need = ", ".join([f"resource {r}>={a:g}" for r, a in res.items()] + [f"label {k}={v}" for k, v in labels.items()])
            raise PlacementError(f"host {h['name']}: no alive Ray node offers {need}; the cluster offers: {', '.join(offered) or 'nothing custom'}")
        if pl.get("node") == "spread":
            best = min(cands, key=lambda nid: (load[nid], cands.index(nid)))
            load[best] += 1
            out[h["name"]] = best
        else:
            out[h["name"]] = None
    return out


#: the actor classes as Ray sees them (ray.remote's result is not typed)
PcpuActorRemote: Any = ray.remote(num_cpus=ACTOR_CPUS, max_restarts=0)(PcpuActor)


def _pg_node(pg: Any) -> str:
    """The node a ready placement group's bundles are on (STRICT_PACK: one node)."""
    from ray.util import placement_group_table

    nodes = set(placement_group_table(pg)["bundles_to_node_id"].values())
    return str(min(nodes))


class RayPending(Pending[Any]):
    """A host's answer on its way from its master actor."""

    __slots__ = ("host", "ref")

    def __init__(self, host: str, ref: Any):
        self.host = host
        self.ref = ref

    def result(self) -> Any:
        try:
            return unpackb(ray.get(self.ref))
        except Exception as exc:  # noqa: BLE001
            if _is_lost(exc):
                raise HostLost(self.host, f"its actors are gone ({exc.__class__.__name__})") from None
            raise


class RayTransport:
    """Requests to a host's master actor, as wire bytes."""

    def __init__(self, name: str, master: Any):
        self.name = name
        self.master = master

    def send(self, req: Any) -> Pending[Any]:
        return RayPending(self.name, self.master.call.remote(self.name, packb(req)))

    def send_with(self, req: Any, answer: Pending[Any]) -> Pending[Any]:
        if isinstance(answer, RayPending):
            ref = answer.ref  # another host's answer goes actor to actor
        else:
            ref = packb(answer.result())
        return RayPending(self.name, self.master.call_with.remote(self.name, packb(req), ref))


class ManagerActor:
    """The domain manager (toolstack) as an actor: a thin shell over DomainManager. Known
    outcomes travel back as data (``ManagerOutcome``), never as pickled exceptions."""

    def __init__(self, resolved: bytes, masters: dict[str, Any]):
        from cluster.manager import DomainManager

        plan = build_plan(validate_doc(unpack_doc(resolved), "<resolved config>"))
        self.mgr = DomainManager(plan, {name: HostClient(name, RayTransport(name, m)) for name, m in masters.items()})

    def _do(self, fn: Callable[[], Any]) -> bytes:
        try:
            return packb(ManagerOutcome("ok", fn(), [], 0, ""))
        except RunIncomplete as exc:
            return packb(ManagerOutcome("incomplete", None, exc.hosts, exc.now, exc.why))
        except ManagerError as exc:
            return packb(ManagerOutcome("error", None, [], 0, str(exc)))

    def setup(self) -> bytes:
        return self._do(self.mgr.setup)

    def run_until(self, t_end: int) -> bytes:
        return self._do(lambda: self.mgr.run_until(t_end))

    def finish(self) -> bytes:
        return self._do(self.mgr.finish)

    def state(self) -> bytes:
        return self._do(self.mgr.state)


ManagerActorRemote: Any = ray.remote(num_cpus=0, max_restarts=0)(ManagerActor)


@message
class ManagerOutcome(NamedTuple):
    status: str  # ok, incomplete (hosts lost), error (a ManagerError)
    value: Any
    hosts: list[str]
    now: int
    why: str


class ManagerHandle:
    """What the driver holds: the domain manager's methods, without ``.remote()``."""

    def __init__(self, actor: Any):
        self.actor = actor

    @staticmethod
    def _get(ref: Any) -> Any:
        out: ManagerOutcome = unpackb(ray.get(ref))
        if out.status == "incomplete":
            raise RunIncomplete(list(out.hosts), out.now, out.why)
        if out.status == "error":
            raise ManagerError(out.why)
        return out.value

    def setup(self) -> None:
        self._get(self.actor.setup.remote())

    def run_until(self, t_end: int) -> None:
        self._get(self.actor.run_until.remote(t_end))

    def finish(self) -> dict[str, list[PcpuReport]]:
        return dict(self._get(self.actor.finish.remote()))

    def state(self) -> dict[str, Any]:
        return dict(self._get(self.actor.state.remote()))


class RayBackend:
    name = "ray"

    def __init__(self, plan: Plan, resolved: dict[str, Any], tag: str, *, address: str | None = None, reaper: Any = None, on_ray_start: Callable[[], None] | None = None):
        self.plan = plan
        self.resolved = resolved
        self.tag = tag
        self.session = RaySession(address=address, run_tag=tag, reaper=reaper)
        self.on_ray_start = on_ray_start
        self.pgs: dict[str, Any] = {}
        self.actors: dict[str, list[Any]] = {}
        self.serve_refs: dict[str, list[Any]] = {}
        self.manager_actor: Any = None
        self.nodes: dict[str, str] = {}
        self.groups: dict[str, list[tuple[int, ...]]] = {}
        self.stepper: dict[str, str] = {}
        self.pids: dict[str, list[int]] = {}

    def start(self) -> ManagerHandle:
        self.session.start()
        if self.on_ray_start is not None:
            self.on_ray_start()  # e.g. ray.init installs its own SIGTERM handler; the caller's must win
        handle = self._build()
        self.session.note_children()
        return handle

    def _build(self) -> ManagerHandle:
        run_cfg = packb(self.resolved["run"])
        host_cfgs = {h["name"]: h for h in self.resolved["hosts"]}
        pinned = plan_placement(self.resolved["hosts"], cast(Callable[[], list[dict[str, Any]]], ray.nodes)())
        for name, spec in self.plan.hosts.items():
            pl = host_cfgs[name].get("placement") or {}
            n = spec.nr_pcpus
            bundle = {"CPU": ACTOR_CPUS, **{r: amt / n for r, amt in (pl.get("resources") or {}).items()}}
            selector = dict(pl.get("labels") or {})
            if pinned.get(name):
                selector["ray.io/node-id"] = pinned[name]
            kw = {"bundle_label_selector": [selector] * n} if selector else {}
            self.pgs[name] = placement_group([dict(bundle) for _ in range(n)], strategy="STRICT_PACK", name=f"hvsim-{self.tag}-{name}", **kw)
        for name, pg in self.pgs.items():
            try:
                ray.get(pg.ready(), timeout=PLACEMENT_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                need = host_cfgs[name].get("placement") or {}
                raise PlacementError(
                    f"host {name}: no Ray node could take its {self.plan.hosts[name].nr_pcpus} pCPU actors together "
                    f"within {PLACEMENT_TIMEOUT_S:.0f} s (needs {need.get('resources') or 'no custom resource'}, labels {need.get('labels') or 'none'})"
                ) from None
        node_of = {name: _pg_node(pg) for name, pg in self.pgs.items()}
        node_cpus = {n["NodeID"]: float(n["Resources"].get("CPU", 1.0)) for n in cast(Callable[[], list[dict[str, Any]]], ray.nodes)() if n.get("Alive")}
        procs = processes_per_host({h: s.nr_pcpus for h, s in self.plan.hosts.items()}, node_of, node_cpus, self.plan.ray_processes_per_host)
        self.groups = {name: pcpu_groups(spec.nr_pcpus, procs[name]) for name, spec in self.plan.hosts.items()}
        self.stepper = steppers({h: s.nr_pcpus for h, s in self.plan.hosts.items()}, node_of, node_cpus, procs, self.plan.ray_processes_per_host)
        for name, spec in self.plan.hosts.items():
            hc = packb(host_cfgs[name])
            self.actors[name] = [
                PcpuActorRemote.options(
                    scheduling_strategy=PlacementGroupSchedulingStrategy(self.pgs[name], placement_group_bundle_index=c),
                    name=None,
                ).remote(hc, run_cfg, c, self.plan.seed, self.tag)
                for c in range(spec.nr_pcpus)
            ]
        # every actor up before the run starts: a pCPU actor still importing would take CPU from
        # the stepping processes during the simulation
        who = {name: ray.get([a.whoami.remote() for a in acts]) for name, acts in self.actors.items()}
        self.pids = {name: [pid for pid, _node in w] for name, w in who.items()}
        self.nodes = {name: w[0][1] for name, w in who.items()}
        master = {name: self.actors[self.stepper[name]][0] for name in self.actors}
        seg_refs = {
            name: master[name].create_segment.remote(None if self.stepper[name] == name else packb(host_cfgs[name]), [list(g) for g in self.groups[name]])
            for name in self.actors
        }
        segs = {name: ray.get(ref) for name, ref in seg_refs.items()}
        attach_refs = {
            name: {g[0]: acts[g[0]].attach.remote(segs[name][0], segs[name][1], segs[name][2], list(g)) for g in self.groups[name][1:]}
            for name, acts in self.actors.items()
        }
        pids = {name: {c: ray.get(ref) for c, ref in refs.items()} for name, refs in attach_refs.items()}
        ray.get([master[name].start_master.remote(name, {str(c): p for c, p in pids[name].items()}) for name in self.actors])
        for name, acts in self.actors.items():
            self.serve_refs[name] = [acts[g[0]].serve.remote() for g in self.groups[name][1:]]
        busy = {id(m) for m in master.values()} | {id(acts[g[0]]) for name, acts in self.actors.items() for g in self.groups[name][1:]}
        for acts in self.actors.values():
            for a in acts:
                if id(a) not in busy:
                    a.park.remote()
        # the toolstack lives with the driver, so that losing another node does not lose it
        here = ray.get_runtime_context().get_node_id()
        self.manager_actor = ManagerActorRemote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote(packb(self.resolved), master)
        return ManagerHandle(self.manager_actor)

    def reports(self, gathered: dict[str, list[PcpuReport]], lost: set[str]) -> dict[str, list[PcpuReport]]:
        """The masters' reports (their own group's, gathered by the manager) with those of the
        host's other stepping processes."""
        out = {h: list(rs) for h, rs in gathered.items()}
        for name, refs in self.serve_refs.items():
            if name not in lost and name in out:
                for got in ray.get(refs):
                    for c, rep in unpackb(got).items():
                        out[name][c] = rep
        return out

    def placement(self) -> dict[str, str]:
        return dict(self.nodes)

    def processes(self) -> dict[str, list[list[int]]]:
        return {h: [list(g) for g in gs] for h, gs in self.groups.items()}

    def engine_processes(self) -> dict[str, str]:
        """Host -> the host whose master's process runs its engine (``steppers``)."""
        return dict(self.stepper)

    def shutdown(self) -> None:
        for name, acts in self.actors.items():
            for a in acts:
                try:
                    ray.kill(a)
                except Exception:
                    pass
        if self.manager_actor is not None:
            try:
                ray.kill(self.manager_actor)
            except Exception:
                pass
        for pg in self.pgs.values():
            try:
                remove_placement_group(pg)
            except Exception:
                pass
        self.actors = {}
        self.pgs = {}
        self.manager_actor = None
        self.session.close()
