"""Owned randomness: one root seed per run, one derived generator per entity.

Every host, pCPU, domain, vCPU and workload derives its generator from the root seed and its
stable id (a name path such as ``"host0/web/vcpu1"``), never from global state and never from
the order in which objects happen to be created. The generator's state is part of the vCPU
record, so a vCPU that moves between pCPUs or hosts keeps drawing the same stream.
"""

from __future__ import annotations

import hashlib

import numpy as np


def stable_key(path: str) -> tuple[int, ...]:
    """A tuple of 32-bit words derived from a name path, usable as a SeedSequence spawn key."""
    digest = hashlib.blake2b(path.encode(), digest_size=16).digest()
    return tuple(int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4))


def derive_seed(root_seed: int, path: str) -> int:
    """A 64-bit seed for the entity named ``path`` under ``root_seed``."""
    ss = np.random.SeedSequence(entropy=root_seed, spawn_key=stable_key(path))
    return int(ss.generate_state(2, dtype=np.uint32).view(np.uint64)[0])


def generator(root_seed: int, path: str) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy=root_seed, spawn_key=stable_key(path))))


def rng_state(gen: np.random.Generator) -> tuple[int, ...]:
    """PCG64 state as six unsigned words (msgpack carries at most 64-bit ints)."""
    st = gen.bit_generator.state
    s, inc = st["state"]["state"], st["state"]["inc"]
    m = (1 << 64) - 1
    return (s >> 64, s & m, inc >> 64, inc & m, int(st["has_uint32"]), int(st["uinteger"]))


def rng_from_state(words: "tuple[int, ...] | list[int]") -> np.random.Generator:
    bg = np.random.PCG64()
    st = bg.state
    st["state"] = {"state": (int(words[0]) << 64) | int(words[1]), "inc": (int(words[2]) << 64) | int(words[3])}
    st["has_uint32"] = int(words[4])
    st["uinteger"] = int(words[5])
    bg.state = st
    return np.random.Generator(bg)
