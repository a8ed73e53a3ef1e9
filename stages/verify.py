"""Verification of every checkpoint generation on a lease (SKELETON)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from blockstore import LeaseReader

__all__ = ["GenerationReport", "verify_lease"]


@dataclass(frozen=True, slots=True)
class GenerationReport:
    """The verification result of one header slot."""

    lease_id: str
    name: str
    slot: int | None
    generation: int | None
    step: int | None
    size: int | None
    stored: int | None
    codec: str | None
    compression: str | None
    ratio: float | None
    status: str
    block: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_lease(reader: LeaseReader, *, key: bytes | None = None) -> list[GenerationReport]:
    raise NotImplementedError
