"""The toolstack's requests to a host, as typed messages (domain manager -> ``HostEngine``).

One NamedTuple per operation, with its arguments as named fields; ``serve`` carries a request
out on an engine through the table ``OPS`` and an unknown request raises. The domain manager
builds requests through ``cluster.hostclient.HostClient`` (one method each), which sends them
in-process (inline backend) or to the host's master actor (Ray, through ``hosts.wire``).

A request whose last field is another host's answer (a PAGE_DATA record read at the source,
the vCPU records exported there) lists it in ``FROM_PEER``: under Ray that answer travels from
actor to actor without passing through the domain manager.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from hosts.host import HostEngine
from hosts.messages import PcpuReport, UnknownMessage
from hosts.wire import message


@message
class CreateDomains(NamedTuple):
    domains: list[dict[str, Any]]  # DomainInfo.to_dict(), in creation order


@message
class RunUntil(NamedTuple):
    t_ns: int


@message
class RunThen(NamedTuple):
    """``RunUntil`` followed by ``then`` (a request) at ``t_ns``, in one exchange: a pure read
    the toolstack will need at that instant (a PAGE_DATA batch), without a second call."""

    t_ns: int
    then: Any


@message
class PauseDomain(NamedTuple):
    uid: int


@message
class UnpauseDomain(NamedTuple):
    uid: int


@message
class KillDomain(NamedTuple):
    uid: int


@message
class AdjustDomain(NamedTuple):
    uid: int
    weight: int | None
    cap: int | None


@message
class SetAffinity(NamedTuple):
    uid: int
    vcpu: int
    hard: list[int]
    soft: list[int]


@message
class MoveDomainPool(NamedTuple):
    uid: int
    pool: str


@message
class Settled(NamedTuple):
    uid: int


@message
class ProbeDomain(NamedTuple):
    uid: int


@message
class Usage(NamedTuple):
    pass


@message
class DomainDict(NamedTuple):
    uid: int


@message
class Stats(NamedTuple):
    pass


@message
class FinishHost(NamedTuple):
    pass


@message
class RoomFor(NamedTuple):
    domain: dict[str, Any]


@message
class PrepareIncoming(NamedTuple):
    domain: dict[str, Any]


@message
class EnableLogDirty(NamedTuple):
    uid: int


@message
class DisableLogDirty(NamedTuple):
    uid: int


@message
class DirtyClean(NamedTuple):
    uid: int


@message
class DirtyPeek(NamedTuple):
    uid: int
    pfns: bytes


@message
class MemoryDigest(NamedTuple):
    uid: int


@message
class ReadPageData(NamedTuple):
    uid: int
    pfns: bytes  # int64 guest pfns, at most 1024


@message
class ApplyPageData(NamedTuple):
    uid: int
    record: bytes  # a PAGE_DATA record (from the source's ReadPageData)


@message
class ExportVcpus(NamedTuple):
    uid: int
    with_sched: bool


@message
class RestoreIncoming(NamedTuple):
    uid: int
    records: list[bytes]  # vCPU records (from the source's ExportVcpus)


@message
class AbortIncoming(NamedTuple):
    uid: int


@message
class ReleaseOutgoing(NamedTuple):
    uid: int


@message
class TakeBack(NamedTuple):
    uid: int
    records: list[bytes]


OPS: dict[type, Callable[[HostEngine, Any], Any]] = {
    CreateDomains: lambda e, r: e.create_domains(r.domains),
    RunUntil: lambda e, r: e.run_until(r.t_ns),
    RunThen: lambda e, r: _run_then(e, r),
    PauseDomain: lambda e, r: e.pause_domain(r.uid),
    UnpauseDomain: lambda e, r: e.unpause_domain(r.uid),
    KillDomain: lambda e, r: e.kill_domain(r.uid),
    AdjustDomain: lambda e, r: e.adjust_domain(r.uid, r.weight, r.cap),
    SetAffinity: lambda e, r: e.set_affinity(r.uid, r.vcpu, r.hard, r.soft),
    MoveDomainPool: lambda e, r: e.move_domain_pool(r.uid, r.pool),
    Settled: lambda e, r: e.settled(r.uid),
    ProbeDomain: lambda e, r: e.probe_domain(r.uid),
    DomainDict: lambda e, r: e.domain_dict(r.uid),
    Usage: lambda e, r: e.usage(),
    Stats: lambda e, r: e.stats(),
    FinishHost: lambda e, r: e.finish(),
    RoomFor: lambda e, r: e.room_for(r.domain),
    PrepareIncoming: lambda e, r: e.prepare_incoming(r.domain),
    EnableLogDirty: lambda e, r: e.enable_log_dirty(r.uid),
    DisableLogDirty: lambda e, r: e.disable_log_dirty(r.uid),
    DirtyClean: lambda e, r: e.dirty_clean(r.uid),
    DirtyPeek: lambda e, r: e.dirty_peek(r.uid, r.pfns),
    MemoryDigest: lambda e, r: e.memory_digest(r.uid),
    ReadPageData: lambda e, r: e.read_page_data(r.uid, r.pfns),
    ApplyPageData: lambda e, r: e.apply_page_data(r.uid, r.record),
    ExportVcpus: lambda e, r: e.export_vcpus(r.uid, r.with_sched),
    RestoreIncoming: lambda e, r: e.restore_incoming(r.uid, r.records),
    AbortIncoming: lambda e, r: e.abort_incoming(r.uid),
    ReleaseOutgoing: lambda e, r: e.release_outgoing(r.uid),
    TakeBack: lambda e, r: e.take_back(r.uid, r.records),
}

#: requests whose last field may be another host's pending answer
FROM_PEER = (ApplyPageData, RestoreIncoming)


def _run_then(engine: HostEngine, req: RunThen) -> Any:
    if type(req.then) in (RunUntil, RunThen):
        raise UnknownMessage(f"host {engine.spec.name}: RunThen takes a request to follow the run, not {type(req.then).__name__}")
    engine.run_until(req.t_ns)
    return serve(engine, req.then)


def serve(engine: HostEngine, req: Any) -> Any:
    """Carry out one request on ``engine``; its answer is plain data (or PcpuReports)."""
    op = OPS.get(type(req))
    if op is None:
        raise UnknownMessage(f"host {engine.spec.name}: unknown request {type(req).__name__}")
    return op(engine, req)


def with_peer_answer(req: Any, answer: Any) -> Any:
    """``req`` with its last field set to a peer's answer (see FROM_PEER)."""
    if type(req) not in FROM_PEER:
        raise UnknownMessage(f"request {type(req).__name__} takes no peer answer")
    return req._replace(**{req._fields[-1]: answer})


__all__ = ["OPS", "FROM_PEER", "serve", "with_peer_answer", "PcpuReport"]
