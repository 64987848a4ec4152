"""HostClient: the domain manager's typed handle to one host.

One method per host operation (``hosts.hostops``). Each returns a :class:`Pending` answer at
once, so the manager can start a stretch on every host and then wait for all of them; under
the inline backend the work is already done, under Ray it runs in the host's master actor
meanwhile. A Pending answer from one host can be handed to another host's request (a PAGE_DATA
record, the exported vCPU records): under Ray it then moves actor to actor.

The transport is the only part that differs between backends (``InlineTransport`` here,
``RayTransport`` in ``cluster.backends.ray_backend``).
"""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar

from hosts import hostops as ops
from hosts.host import HostEngine
from hosts.messages import HostUsage, PcpuReport

T = TypeVar("T", covariant=True)


class Pending(Generic[T]):
    """An answer that may still be on its way; ``result()`` waits for it (and raises what the
    host raised)."""

    def result(self) -> T:
        raise NotImplementedError


class Ready(Pending[T]):
    """An answer already there (or the error raised while producing it)."""

    __slots__ = ("_value", "_error")

    def __init__(self, value: T | None = None, error: BaseException | None = None):
        self._value = value
        self._error = error

    def result(self) -> T:
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class Transport(Protocol):
    def send(self, req: Any) -> Pending[Any]: ...
    def send_with(self, req: Any, answer: Pending[Any]) -> Pending[Any]: ...


class InlineTransport:
    """Requests carried out at once on an engine in this process."""

    def __init__(self, engine: HostEngine):
        self.engine = engine

    def send(self, req: Any) -> Pending[Any]:
        try:
            return Ready(ops.serve(self.engine, req))
        except Exception as exc:  # noqa: BLE001 - delivered by result(), as a remote error would be
            return Ready(error=exc)

    def send_with(self, req: Any, answer: Pending[Any]) -> Pending[Any]:
        try:
            value = answer.result()
        except Exception as exc:  # noqa: BLE001
            return Ready(error=exc)
        return self.send(ops.with_peer_answer(req, value))


class HostClient:
    def __init__(self, name: str, transport: Transport):
        self.name = name
        self.t = transport

    # --- life of the host ----------------------------------------------------------------------
    def create_domains(self, domains: list[dict[str, Any]]) -> Pending[None]:
        return self.t.send(ops.CreateDomains(domains))

    def run_until(self, t_ns: int) -> Pending[None]:
        return self.t.send(ops.RunUntil(t_ns))

    def run_then_read_page_data(self, t_ns: int, uid: int, pfns: bytes) -> Pending[bytes]:
        """``run_until(t_ns)``, then ``read_page_data`` there, in one exchange."""
        return self.t.send(ops.RunThen(t_ns, ops.ReadPageData(uid, pfns)))

    def stats(self) -> Pending[dict[str, Any]]:
        return self.t.send(ops.Stats())

    def finish(self) -> Pending[list[PcpuReport]]:
        return self.t.send(ops.FinishHost())

    # --- domains ---------------------------------------------------------------------------------
    def pause_domain(self, uid: int) -> Pending[None]:
        return self.t.send(ops.PauseDomain(uid))

    def unpause_domain(self, uid: int) -> Pending[None]:
        return self.t.send(ops.UnpauseDomain(uid))

    def kill_domain(self, uid: int) -> Pending[int]:
        return self.t.send(ops.KillDomain(uid))

    def adjust_domain(self, uid: int, weight: int | None, cap: int | None) -> Pending[None]:
        return self.t.send(ops.AdjustDomain(uid, weight, cap))

    def set_affinity(self, uid: int, vcpu: int, hard: list[int], soft: list[int]) -> Pending[None]:
        return self.t.send(ops.SetAffinity(uid, vcpu, list(hard), list(soft)))

    def move_domain_pool(self, uid: int, pool: str) -> Pending[None]:
        return self.t.send(ops.MoveDomainPool(uid, pool))

    def settled(self, uid: int) -> Pending[bool]:
        return self.t.send(ops.Settled(uid))

    def probe_domain(self, uid: int) -> Pending[dict[str, int]]:
        return self.t.send(ops.ProbeDomain(uid))

    def usage(self) -> Pending[HostUsage]:
        return self.t.send(ops.Usage())

    def domain_dict(self, uid: int) -> Pending[dict[str, Any]]:
        return self.t.send(ops.DomainDict(uid))

    # --- live migration --------------------------------------------------------------------------
    def room_for(self, domain: dict[str, Any]) -> Pending[str | None]:
        return self.t.send(ops.RoomFor(domain))

    def prepare_incoming(self, domain: dict[str, Any]) -> Pending[None]:
        return self.t.send(ops.PrepareIncoming(domain))

    def enable_log_dirty(self, uid: int) -> Pending[None]:
        return self.t.send(ops.EnableLogDirty(uid))

    def disable_log_dirty(self, uid: int) -> Pending[None]:
        return self.t.send(ops.DisableLogDirty(uid))

    def dirty_clean(self, uid: int) -> Pending[bytes]:
        return self.t.send(ops.DirtyClean(uid))

    def dirty_peek(self, uid: int, pfns: bytes) -> Pending[bytes]:
        return self.t.send(ops.DirtyPeek(uid, pfns))

    def memory_digest(self, uid: int) -> Pending[str]:
        return self.t.send(ops.MemoryDigest(uid))

    def read_page_data(self, uid: int, pfns: bytes) -> Pending[bytes]:
        return self.t.send(ops.ReadPageData(uid, pfns))

    def apply_page_data(self, uid: int, record: Pending[bytes]) -> Pending[int]:
        return self.t.send_with(ops.ApplyPageData(uid, b""), record)

    def export_vcpus(self, uid: int, with_sched: bool = False) -> Pending[list[bytes]]:
        return self.t.send(ops.ExportVcpus(uid, with_sched))

    def restore_incoming(self, uid: int, records: Pending[list[bytes]]) -> Pending[tuple[str, str]]:
        return self.t.send_with(ops.RestoreIncoming(uid, []), records)

    def abort_incoming(self, uid: int) -> Pending[int]:
        return self.t.send(ops.AbortIncoming(uid))

    def release_outgoing(self, uid: int) -> Pending[int]:
        return self.t.send(ops.ReleaseOutgoing(uid))

    def take_back(self, uid: int, records: list[bytes]) -> Pending[None]:
        return self.t.send(ops.TakeBack(uid, list(records)))
