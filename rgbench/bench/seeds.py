"""Deterministic per-cell seeds.

A cell's seed is the first 63 bits of SHA-256 of its key fields joined by ``|`` (never
Python's ``hash``, which is salted per process), so the same command and seed give the same
random streams in every run, and cells never share a stream by accident.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*fields: object) -> int:
    """A 63-bit seed from the ``str`` of each field, e.g. ``derive_seed(0, "kruskal", 5)``."""
    key = "|".join(str(field) for field in fields).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(seed)
