"""Webhook benchmark: AdmissionReviews over TLS, the way the API server sends them.

Three processes: the test API server (it holds the Secret and the claim templates),
the webhook (``gvirtus-dra webhook``, pinned to one CPU), and this process acting as
the API server's admission client on the other CPU. The review is the one a 1.36
API server sent for a pod with an init container and two GPU containers, which the
webhook converts into two claims; the templates exist after the warm-up, as in a
namespace that already ran such a pod.

For 1, 16 and 64 concurrent clients, each sending reviews back to back, with
keep-alive on (the API server reuses connections) and off (a TLS handshake per
review), it reports latency p50/p99, reviews per second, and the webhook's CPU time
per review; then the webhook's memory. The client is a minimal HTTP/1.1 writer over
``asyncio`` TLS streams, so it costs less than the server it measures.

A last row repeats 16 kept-alive clients while 2,000 other connections from 20
loopback addresses are held open without a request (a third each: TCP only, TLS
handshake done, request headers a byte at a time; each reopened a second after the
webhook closes it): the webhook's latency, its peak memory against the pod's
256 MiB limit, and how many connections it turned away.

The yardstick, quoted (its Flask server is not run here): the gvirtus-kai webhook
serves about 220 admissions/s with p99 about 100 ms at 16 clients on one core.

Usage: ``python -m bench.webhook [--seconds 5] [--json out.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import pathlib
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from typing import Any

import aiohttp

from bench.measure import cpu_seconds, load, median_of, rss_mib, summary
from tests.support import manifests, objects
from tests.support.processes import WebhookProcess, standalone_apiserver

YARDSTICK = {"reviews_per_second": 220, "p99_ms": 100, "clients": 16}
MEMORY_LIMIT_MIB = 256
HELD, HELD_FROM = 2000, 20
SERVER_NAME = "gvirtus-dra-webhook.gvirtus-system.svc"
CLIENTS = (1, 16, 64)


class Target:
    """Where and how to send reviews."""

    def __init__(self, *, port: int, ca_pem: str, body: bytes) -> None:
        self.port = port
        self.context = ssl.create_default_context(cadata=ca_pem)
        self.body = body

    def request(self, *, keep_alive: bool) -> bytes:
        head = (
            "POST /mutate?timeout=5s HTTP/1.1\r\n"
            f"Host: {SERVER_NAME}:443\r\n"
            "User-Agent: kube-apiserver-admission\r\n"
            "Accept: application/json, */*\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(self.body)}\r\n"
            + ("" if keep_alive else "Connection: close\r\n")
            + "\r\n"
        )
        return head.encode() + self.body

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.context, server_hostname=SERVER_NAME
        )


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> None:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    body = await reader.readexactly(length)
    if not head.startswith(b"HTTP/1.1 200") or b'"allowed": true' not in body:
        raise RuntimeError(f"unexpected answer: {head[:40]!r} {body[:200]!r}")


async def _client(
    target: Target,
    *,
    keep_alive: bool,
    until: float,
    out: list[float],
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None,
) -> None:
    request = target.request(keep_alive=keep_alive)
    if keep_alive and connection is None:
        connection = await target.connect()
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            if connection is None:
                reader, writer = await target.connect()
                await _exchange(reader, writer, request)
                out.append((time.perf_counter() - started) * 1000)
                writer.close()
                await writer.wait_closed()
            else:
                await _exchange(*connection, request)
                out.append((time.perf_counter() - started) * 1000)
    finally:
        if connection is not None:
            connection[1].close()
            await connection[1].wait_closed()


async def scenario(
    target: Target, *, clients: int, keep_alive: bool, seconds: float, pid: int
) -> dict[str, Any]:
    warm: list[float] = []
    until = time.perf_counter() + 1.0
    await asyncio.gather(
        *(_client(target, keep_alive=keep_alive, until=until, out=warm) for _ in range(clients))
    )
    samples: list[float] = []
    cpu_before, started = cpu_seconds(pid), time.perf_counter()
    until = started + seconds
    await asyncio.gather(
        *(_client(target, keep_alive=keep_alive, until=until, out=samples) for _ in range(clients))
    )
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu_before
    return {
        "clients": clients,
        "keep_alive": keep_alive,
        **summary(samples),
        "reviews_per_second": round(len(samples) / elapsed, 1),
        "webhook_cpu_ms_per_review": round(cpu / len(samples) * 1000, 3),
    }


async def under_held_connections(
    target: Target, *, webhook: WebhookProcess, seconds: float, ca_file: pathlib.Path
) -> dict[str, Any]:
    """16 kept-alive clients while :data:`HELD` idle and slow connections are held.

    The holders run in a process of their own, so they never slow the clients down.
    """
    clients = YARDSTICK["clients"]
    connections = [await target.connect() for _ in range(clients)]
    settle = 2.0
    holders = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.webhook.hostile",
            f"--port={target.port}",
            f"--ca-file={ca_file}",
            f"--count={HELD}",
            f"--addresses={HELD_FROM}",
            f"--seconds={settle + seconds + 1}",
        ],
        stdout=subprocess.PIPE,
    )
    stop = asyncio.Event()
    peak = [rss_mib(webhook.proc.pid)]
    sampler = asyncio.create_task(_sample_rss(webhook.proc.pid, peak, stop))
    await asyncio.sleep(settle)  # the holders connect, and the webhook fills its cap
    samples: list[float] = []
    cpu_before, started = cpu_seconds(webhook.proc.pid), time.perf_counter()
    await asyncio.gather(
        *(
            _client(target, keep_alive=True, until=started + seconds, out=samples, connection=c)
            for c in connections
        )
    )
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(webhook.proc.pid) - cpu_before
    metrics = await _metrics(webhook.metrics_port)
    out, _ = await asyncio.to_thread(holders.communicate, timeout=120)
    stop.set()
    await sampler
    tally = json.loads(out)
    return {
        "clients": clients,
        "keep_alive": True,
        "held": HELD,
        "held_from_addresses": HELD_FROM,
        **summary(samples),
        "reviews_per_second": round(len(samples) / elapsed, 1),
        "webhook_cpu_ms_per_review": round(cpu / len(samples) * 1000, 3),
        "rss_peak_mib": round(max(peak), 1),
        "open_connections": metrics.get("gvirtus_dra_webhook_connections", 0.0),
        "refused": sum(v for k, v in metrics.items() if k.startswith(_REFUSED)),
        "dropped_without_request": metrics.get(_NO_REQUEST, 0.0),
        "holders": tally,
    }


_REFUSED = "gvirtus_dra_webhook_connections_refused_total"
_NO_REQUEST = 'gvirtus_dra_webhook_connections_dropped_total{reason="no_request"}'


async def _sample_rss(pid: int, peak: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak.append(rss_mib(pid))
        await asyncio.sleep(0.1)


async def _metrics(port: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as got:
        text = await got.text()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gvirtus_dra_webhook_connections")
    }


def _pin(pid: int, cpus: set[int]) -> bool:
    try:
        os.sched_setaffinity(pid, cpus)
    except (AttributeError, OSError):
        return False
    return True


async def run(*, seconds: float) -> dict[str, Any]:
    root = pathlib.Path(tempfile.mkdtemp(prefix="gd-bench-wh-", dir="/tmp"))
    (root / "seed.json").write_text(
        json.dumps([manifests.find("manifests/base/webhook.yaml", "MutatingWebhookConfiguration")])
    )
    cpus = sorted(os.sched_getaffinity(0))
    webhook_cpus, other_cpus = ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else (set(cpus),) * 2
    _pin(0, other_cpus)
    apiserver = standalone_apiserver(kubeconfig=root / "kubeconfig", seed=root / "seed.json")
    webhook: WebhookProcess | None = None
    try:
        while not (root / "kubeconfig").exists():
            await asyncio.sleep(0.05)
        webhook = WebhookProcess(root=root, kubeconfig=root / "kubeconfig")
        pinned = _pin(webhook.proc.pid, webhook_cpus)
        await webhook.ready()
        kubeconfig = json.loads((root / "kubeconfig").read_text())
        ca_pem = await _ca(kubeconfig)
        (root / "ca.crt").write_text(ca_pem)
        target = Target(port=webhook.port, ca_pem=ca_pem, body=_review())
        idle_rss = rss_mib(webhook.proc.pid)
        results = [
            await scenario(
                target,
                clients=clients,
                keep_alive=keep_alive,
                seconds=seconds,
                pid=webhook.proc.pid,
            )
            for keep_alive in (True, False)
            for clients in CLIENTS
        ]
        held = await under_held_connections(
            target, webhook=webhook, seconds=seconds, ca_file=root / "ca.crt"
        )
        return {
            "machine": {"cpus": len(cpus), "webhook_pinned_to_one_cpu": pinned},
            "seconds_per_scenario": seconds,
            "scenarios": results,
            "held": held,
            "rss_mib": {"idle": round(idle_rss, 1), "after": round(rss_mib(webhook.proc.pid), 1)},
            "yardstick": YARDSTICK,
        }
    finally:
        if webhook is not None:
            webhook.terminate()
        apiserver.terminate()
        apiserver.wait(15)
        shutil.rmtree(root, ignore_errors=True)


def _review() -> bytes:
    return json.dumps(objects.admission_review()).encode()


async def _ca(config: dict[str, Any]) -> str:
    """The webhook's CA, read back from its Secret as another replica would."""
    cluster = config["clusters"][0]["cluster"]
    context = ssl.create_default_context(
        cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
    )
    headers = {"Authorization": f"Bearer {config['users'][0]['user']['token']}"}
    url = f"{cluster['server']}/api/v1/namespaces/gvirtus-system/secrets/gvirtus-dra-webhook-tls"
    async with aiohttp.ClientSession(headers=headers) as http, http.get(url, ssl=context) as got:
        secret = await got.json()
    return base64.b64decode(secret["data"]["ca.crt"]).decode()


async def runs(*, count: int, seconds: float) -> dict[str, Any]:
    """``count`` whole runs; their medians, with the machine's load before and after."""
    before = load()
    measured = [await run(seconds=seconds) for _ in range(count)]
    return {
        **median_of(measured),
        "runs": count,
        "load_before": before,
        "load_after": load(),
        "each_run": measured,
    }


def render(results: dict[str, Any]) -> str:
    machine, yardstick = results["machine"], results["yardstick"]
    pinned = "pinned to one CPU" if machine["webhook_pinned_to_one_cpu"] else "not pinned"
    lines = [
        f"webhook benchmark ({machine['cpus']} CPUs; webhook {pinned}; "
        f"{results['seconds_per_scenario']:.0f} s per row; median of {results['runs']} runs; "
        f"load average {results['load_before']:.1f} before, {results['load_after']:.1f} after)",
        "  keep-alive  clients      p50 ms    p99 ms   reviews/s   webhook CPU ms/review",
    ]
    for row in results["scenarios"]:
        lines.append(
            f"  {'on ' if row['keep_alive'] else 'off'}         {row['clients']:>4}   "
            f"{row['p50_ms']:>9.2f} {row['p99_ms']:>9.2f}   {row['reviews_per_second']:>9.1f}   "
            f"{row['webhook_cpu_ms_per_review']:>8.3f}"
        )
    at = next(
        r for r in results["scenarios"] if r["keep_alive"] and r["clients"] == yardstick["clients"]
    )
    held = results["held"]
    lines += [
        f"  on          {held['clients']:>4}   {held['p50_ms']:>9.2f} {held['p99_ms']:>9.2f}   "
        f"{held['reviews_per_second']:>9.1f}   {held['webhook_cpu_ms_per_review']:>8.3f}"
        f"   while {held['held']:,} idle and slow connections from "
        f"{held['held_from_addresses']} addresses are held",
        f"    webhook RSS peak {held['rss_peak_mib']:.1f} MiB (pod limit {MEMORY_LIMIT_MIB} MiB); "
        f"{held['open_connections']:.0f} connections open at the end, "
        f"{held['refused']:,.0f} turned away at accept, "
        f"{held['dropped_without_request']:,.0f} closed without a request",
        f"  webhook RSS: {results['rss_mib']['idle']:.1f} MiB idle, "
        f"{results['rss_mib']['after']:.1f} MiB after the runs",
        f"  vs gvirtus-kai at {yardstick['clients']} clients on one core (quoted): "
        f"{at['reviews_per_second'] / yardstick['reviews_per_second']:.1f}x the throughput, "
        f"p99 {at['p99_ms']:.2f} ms vs ~{yardstick['p99_ms']} ms",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per row")
    parser.add_argument("--runs", type=int, default=3, help="whole runs; figures are medians")
    parser.add_argument("--json", type=pathlib.Path, help="also write the results here")
    args = parser.parse_args(argv)
    results = asyncio.run(runs(count=args.runs, seconds=args.seconds))
    print(render(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
