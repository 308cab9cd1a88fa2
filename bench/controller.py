"""Controller benchmark: 1,000 simulated backend nodes with 8 GPUs each.

Three processes: the test API server (holding the Nodes and agent Pods), the
controller (``gvirtus-dra controller``, polling every second), and this one, which
answers for all agents (one HTTP server; the inventory depends on which loopback
address was dialled) and measures:

* time and controller CPU to publish every pool from scratch;
* ResourceSlice writes and controller CPU over a quiet period (target: zero writes);
* latency from a GPU turning unhealthy in its agent's answer to its slice carrying
  the taint, as a watch sees it (target: p99 under 2 s with a 1 s poll);
* the controller's resident memory.

Usage: ``python -m bench.controller [--nodes 1000] [--gpus 8] [--trials 40]``
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import pathlib
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from aiohttp import web

from bench.measure import cpu_seconds, load, median_of, percentile, rss_mib
from dra_driver.kube.client import KubeClient
from dra_driver.kube.resources import RESOURCE_SLICES
from dra_driver.lifecycle import raise_file_limit
from dra_driver.models import GPU, GPUHealth, GPULoad, Inventory
from tests.support import objects
from tests.support.processes import free_port, standalone_apiserver


def loopback(index: int) -> str:
    return f"127.1.{index // 250}.{index % 250 + 1}"


class Agents:
    """Every agent's answers, from one server: which agent is which loopback address dialled."""

    def __init__(self, *, nodes: int, gpus: int) -> None:
        self.gpus = gpus
        self.by_ip: dict[str, tuple[bytes, str]] = {}
        self.inventories: dict[str, Inventory] = {}
        for index in range(nodes):
            node = f"gpu-{index:04d}"
            self.inventories[loopback(index)] = Inventory(
                node_name=node,
                address=f"10.{index // 250}.{index % 250}.1",
                simulated=True,
                agent_version="bench",
                gpus=[self._gpu(index, k, healthy=True) for k in range(gpus)],
            )
            self._encode(loopback(index))

    @staticmethod
    def _gpu(node: int, index: int, *, healthy: bool) -> GPU:
        return GPU(
            index=index,
            uuid=f"GPU-{node:08d}-0000-0000-0000-{index:012d}",
            model="NVIDIA H100 80GB HBM3",
            memory_bytes=80 * 1024**3,
            driver_version="580.65.06",
            cuda_version="12.6",
            port=9999 + index,
            health=GPUHealth(healthy=healthy, reason="" if healthy else "backend-down"),
            load=GPULoad(connections=0, utilization_percent=0.0, memory_used_bytes=0),
        )

    def _encode(self, ip: str) -> None:
        body = self.inventories[ip].encode()
        self.by_ip[ip] = (body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')

    def set_health(self, node: int, gpu: int, *, healthy: bool) -> None:
        ip = loopback(node)
        gpus = list(self.inventories[ip].gpus)
        gpus[gpu] = self._gpu(node, gpu, healthy=healthy)
        self.inventories[ip] = self.inventories[ip].model_copy(update={"gpus": gpus})
        self._encode(ip)

    async def answer(self, request: web.Request) -> web.Response:
        ip = request.transport.get_extra_info("sockname")[0] if request.transport else ""
        body, etag = self.by_ip[ip]
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, content_type="application/json", headers={"ETag": etag})


async def slice_writes(port: int) -> float:
    import aiohttp

    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gvirtus_dra_controller_slice_writes_total{")
    )


class SliceWatch:
    """Follows every slice change; lets the benchmark wait for one."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self.slices: dict[str, dict[str, Any]] = {}
        self.changed = asyncio.Event()

    async def run(self, resource_version: str) -> None:
        async for event in self.kube.watch(
            RESOURCE_SLICES, resource_version=resource_version, timeout_seconds=3600
        ):
            obj = event["object"]
            if event["type"] == "BOOKMARK":
                continue
            if event["type"] == "DELETED":
                self.slices.pop(obj["metadata"]["name"], None)
            else:
                self.slices[obj["metadata"]["name"]] = obj
            self.changed.set()

    async def until(self, check: Any, timeout: float) -> float:
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                await self.changed.wait()
        return time.perf_counter()


def tainted(watch: SliceWatch, node: int, gpu: int) -> bool:
    obj = watch.slices.get(f"gpu.gvirtus.io-gpu-{node:04d}-0")
    if obj is None:
        return False
    device = next(d for d in obj["spec"]["devices"] if d["name"] == f"gpu-{gpu}")
    return bool(device.get("taints"))


async def run(*, nodes: int, gpus: int, trials: int, quiet: float) -> dict[str, Any]:
    raise_file_limit()
    root = pathlib.Path(tempfile.mkdtemp(prefix="gd-bench-ctl-", dir="/tmp"))
    seed = [objects.node(name=f"gpu-{i:04d}", frontend=False) for i in range(nodes)]
    seed += [
        objects.agent_pod(node=f"gpu-{i:04d}", ip=loopback(i), host_ip=f"10.{i // 250}.{i % 250}.1")
        for i in range(nodes)
    ]
    (root / "seed.json").write_text(json.dumps(seed))
    apiserver = standalone_apiserver(kubeconfig=root / "kubeconfig", seed=root / "seed.json")
    agents = Agents(nodes=nodes, gpus=gpus)
    app = web.Application()
    app.router.add_get("/v1/inventory", agents.answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    agent_port, metrics_port = free_port(), free_port()
    await web.TCPSite(runner, "0.0.0.0", agent_port, backlog=2048).start()
    controller = None
    kube = None
    try:
        while not (root / "kubeconfig").exists():
            await asyncio.sleep(0.05)
        kube = await KubeClient.connect(kubeconfig=root / "kubeconfig", component="bench")
        listed = await kube.list(RESOURCE_SLICES)
        watch = SliceWatch(kube)
        watching = asyncio.create_task(watch.run(listed["metadata"]["resourceVersion"]))
        started = time.perf_counter()
        controller = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dra_driver",
                "controller",
                "--kubeconfig",
                str(root / "kubeconfig"),
                "--agent-port",
                str(agent_port),
                "--poll-interval",
                "1",
                "--grace-period",
                "30",
                "--metrics-port",
                str(metrics_port),
                "--metrics-address",
                "127.0.0.1",
                "--log-level",
                "warning",
            ],
            stdout=(root / "controller.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        published = await watch.until(lambda: len(watch.slices) >= nodes, timeout=600) - started
        publish_cpu = cpu_seconds(controller.pid)
        publish_rss = rss_mib(controller.pid)

        await asyncio.sleep(3)
        writes_before, cpu_before = await slice_writes(metrics_port), cpu_seconds(controller.pid)
        await asyncio.sleep(quiet)
        steady_writes = await slice_writes(metrics_port) - writes_before
        steady_cpu = (cpu_seconds(controller.pid) - cpu_before) / quiet

        latencies = []
        rng = random.Random(7)
        for _ in range(trials):
            node, gpu = rng.randrange(nodes), rng.randrange(gpus)
            flipped = time.perf_counter()
            agents.set_health(node, gpu, healthy=False)
            seen = await watch.until(lambda n=node, g=gpu: tainted(watch, n, g), timeout=30)
            latencies.append(seen - flipped)
            agents.set_health(node, gpu, healthy=True)
            await watch.until(lambda n=node, g=gpu: not tainted(watch, n, g), timeout=30)
            await asyncio.sleep(rng.uniform(0, 1))
        steady_rss = rss_mib(controller.pid)
        watching.cancel()
    finally:
        if controller is not None:
            controller.terminate()
            controller.wait(30)
        apiserver.terminate()
        apiserver.wait(30)
        if kube is not None:
            await kube.close()
        await runner.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "nodes": nodes,
        "gpus_per_node": gpus,
        "devices": nodes * gpus,
        "publish_seconds": round(published, 2),
        "publish_cpu_seconds": round(publish_cpu, 2),
        "steady_slice_writes": steady_writes,
        "steady_seconds": quiet,
        "steady_cpu_cores": round(steady_cpu, 3),
        "unhealthy_to_taint_seconds": {
            "p50": round(percentile(latencies, 50), 3),
            "p99": round(percentile(latencies, 99), 3),
            "max": round(max(latencies), 3),
            "mean": round(statistics.fmean(latencies), 3),
            "n": len(latencies),
        },
        "rss_mib": {"after_publish": round(publish_rss, 1), "steady": round(steady_rss, 1)},
    }


def render(r: dict[str, Any]) -> str:
    lat = r["unhealthy_to_taint_seconds"]
    return "\n".join(
        [
            f"controller benchmark: {r['nodes']} backend nodes x {r['gpus_per_node']} GPUs = {r['devices']} devices "
            f"({os.cpu_count()} CPUs; median of {r['runs']} runs; load average "
            f"{r['load_before']:.1f} before, {r['load_after']:.1f} after)",
            f"  publish from scratch     {r['publish_seconds']:.2f} s, controller CPU {r['publish_cpu_seconds']:.2f} s",
            f"  steady state             {r['steady_slice_writes']:.0f} slice writes in {r['steady_seconds']:.0f} s, "
            f"controller CPU {r['steady_cpu_cores'] * 100:.0f}% of a core (polling every agent each second)",
            f"  unhealthy GPU -> taint   p50 {lat['p50']:.2f} s   p99 {lat['p99']:.2f} s   max {lat['max']:.2f} s "
            f"(n={lat['n']}, 1 s poll)",
            f"  controller RSS           {r['rss_mib']['after_publish']:.1f} MiB after publishing, "
            f"{r['rss_mib']['steady']:.1f} MiB steady",
        ]
    )


async def runs(*, count: int, **options: Any) -> dict[str, Any]:
    """``count`` whole runs; their medians, with the machine's load before and after."""
    before = load()
    measured = [await run(**options) for _ in range(count)]
    return {
        **median_of(measured),
        "runs": count,
        "load_before": before,
        "load_after": load(),
        "each_run": measured,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--quiet", type=float, default=15.0)
    parser.add_argument("--runs", type=int, default=3, help="whole runs; figures are medians")
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args(argv)
    results = asyncio.run(
        runs(
            count=args.runs,
            nodes=args.nodes,
            gpus=args.gpus,
            trials=args.trials,
            quiet=args.quiet,
        )
    )
    print(render(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
