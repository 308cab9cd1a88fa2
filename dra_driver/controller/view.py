"""A read-only view of published devices and what is known of their backends.

Claim status needs, per allocated device, the device as published, the verdict on
its GPU and when its agent last answered. Those belong to the slice store, the
health tracker and the agents; this view reads them without letting the reader
change anything, and decodes published devices once per change of the store.
"""

from __future__ import annotations

from dra_driver.controller.agents import Agents
from dra_driver.controller.health import Verdict
from dra_driver.controller.slices import SliceStore
from dra_driver.controller.tracker import HealthTracker
from dra_driver.device import DeviceError, GPUDevice, decode


class DeviceView:
    """Published devices, verdicts and agent answers, read-only."""

    def __init__(
        self, *, driver: str, store: SliceStore, tracker: HealthTracker, agents: Agents
    ) -> None:
        self._driver = driver
        self._store = store
        self._tracker = tracker
        self._agents = agents
        self._decoded: tuple[int, dict[tuple[str, str], GPUDevice]] = (-1, {})

    @property
    def version(self) -> int:
        """Changes whenever a published device may have changed."""
        return self._store.version

    def device(self, pool: str, name: str) -> GPUDevice | None:
        """The device as published; None when its pool does not publish it (or not usably)."""
        version, found = self._decoded
        if version != self._store.version:
            found = {}
            for obj in self._store.items.values():
                for device in obj["spec"].get("devices") or []:
                    try:
                        found[(obj["spec"]["pool"]["name"], device["name"])] = decode(
                            device, driver=self._driver
                        )
                    except DeviceError:
                        continue
            self._decoded = (self._store.version, found)
        return found.get((pool, name))

    def verdict(self, pool: str, index: int) -> Verdict | None:
        """The verdict on a GPU; None until its agent has answered."""
        return self._tracker.verdict(pool, index)

    def answered(self, pool: str) -> float | None:
        """When (``clock``) the pool's agent last answered; None if never."""
        return self._agents.answered(pool)
