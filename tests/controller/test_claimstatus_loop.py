"""The status writer's loop: a claim waiting on a decision is looked at about once a second."""

from __future__ import annotations

import asyncio
from typing import Any

from dra_driver.controller.claims import Allocated, Claim, ClaimIndex
from dra_driver.controller.claimstatus import ClaimStatus
from dra_driver.controller.pods import PodIndex


class Counting(ClaimStatus):
    looks = 0

    async def _settle_one(self, key: str, claim: Claim) -> bool:
        type(self).looks += 1
        return await super()._settle_one(key, claim)


class Nothing:
    """No device is published, no verdict known, no agent ever answered."""

    def device(self, pool: str, name: str) -> None:
        return None

    def verdict(self, pool: str, index: int) -> None:
        return None

    def answered(self, pool: str) -> None:
        return None

    async def withdraw(self, pool: str, index: int, reason: str) -> None:
        raise AssertionError("nothing to withdraw")


async def test_an_undecided_claim_does_not_spin_the_loop() -> None:
    claims = ClaimIndex(driver="gpu.gvirtus.io")
    claims.items["ns/c"] = Claim(
        namespace="ns",
        name="c",
        uid="u",
        allocated_at=None,
        devices=(Allocated(pool="gone", device="gpu-0", share_id="", waits=True),),
        entries=(),
    )
    writer: Any = Counting(
        kube=None,  # type: ignore[arg-type]
        driver="gpu.gvirtus.io",
        claims=claims,
        pods=PodIndex(),
        devices=Nothing(),
        withdrawer=Nothing(),
        events=None,  # type: ignore[arg-type]
        binding_timeout=60,
    )

    task = asyncio.create_task(writer.run())
    await asyncio.sleep(2.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    assert 1 <= Counting.looks <= 10, "looked at about once a second, not in a busy loop"
