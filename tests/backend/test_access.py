"""Only admitted addresses reach a backend: the real agent, its packet filter, real links.

A GPU node is a network namespace running the real agent in simulator mode, its
stand-in backends and its nftables table; each frontend is a namespace of its own,
linked to the GPU node, whose address plays a pod's. The test's own namespace holds
the test API server (reached by the agent over a link) and publishes the node's
access list as the controller would. Only frontends connect to a backend port, and
only to stand-ins, from their namespaces; the test reads everything else from the
kernel (``nft``, ``ss``) and from the agent's API.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dra_driver.models import BackendAccess, PortAccess
from tests.support.apiserver import APIServer
from tests.support.netns import ROOT, Host, Network
from tests.support.processes import AgentProcess, backend_pids

pytestmark = pytest.mark.slow

NODE = "gpu-node-1"
NAMESPACE = "gvirtus-system"
BASE_PORT = 9999
PORTS = (BASE_PORT, BASE_PORT + 1)


@dataclass
class Frontend:
    """A pod's address: a namespace linked to the GPU node."""

    host: Host
    address: str
    backend: str
    """The GPU node's address on this frontend's link: where it dials its backend."""


@dataclass
class GPUNode:
    """One GPU node in a namespace, with its frontends and the API server it reads."""

    network: Network
    apiserver: APIServer
    root: pathlib.Path
    host: Host
    address: str
    """Its address on the link to the test's namespace (the agent's API, the node IP)."""
    kubeconfig: pathlib.Path
    frontends: dict[str, Frontend]
    agents: list[AgentProcess] = field(default_factory=list)

    def agent(self, *, args: tuple[str, ...] = (), **kwargs: Any) -> AgentProcess:
        """The agent, enforcing (with the kubeconfig) unless ``args`` turn it off."""
        kwargs.setdefault("kubeconfig", self.kubeconfig)
        agent = AgentProcess(
            root=self.root,
            node=NODE,
            loopback=self.address,
            address=self.address,
            port=9450,
            base_port=BASE_PORT,
            host=self.host,
            extra_args=("--bind-address", "0.0.0.0", *args),
            **kwargs,
        )
        self.agents.append(agent)
        return agent

    def stop_agents(self) -> None:
        """End every agent while its links still exist, so its connections close cleanly."""
        for agent in self.agents:
            try:
                agent.terminate()
            except subprocess.TimeoutExpired:
                agent.kill()

    def admit(self, admitted: dict[int, list[str]]) -> None:
        """Publish the node's access list, as the controller does."""
        document = BackendAccess(
            node_name=NODE,
            ports=tuple(
                PortAccess(port=port, addresses=tuple(admitted.get(port, ()))) for port in PORTS
            ),
        )
        self.apiserver.put(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"gvirtus-dra-access-{NODE}", "namespace": NAMESPACE},
                "data": {"access.json": document.encode()},
            }
        )

    def in_kernel(self) -> dict[int, set[str]] | None:
        """The admitted addresses per port in the agent's table; None without a table."""
        listed = subprocess.run(
            self.host.command("nft", "-j", "list", "table", "inet", "gvirtus-dra-access"),
            capture_output=True,
            text=True,
            check=False,
        )
        if listed.returncode != 0:
            return None
        found: dict[int, set[str]] = {}
        for item in json.loads(listed.stdout)["nftables"]:
            named = item.get("set") or {}
            if named.get("name") == "ports":
                for port in named.get("elem") or []:
                    found.setdefault(int(port), set())
            if named.get("name") == "admitted":
                for element in named.get("elem") or []:
                    address, port = element["concat"]
                    found.setdefault(int(port), set()).add(address)
        return found

    async def until_in_kernel(self, want: dict[int, set[str]], timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while self.in_kernel() != want:
                await asyncio.sleep(0.02)

    async def connect(self, name: str, port: int, *, timeout: float = 2.0) -> str:
        """``connected``, ``timeout`` or ``refused``, as the frontend ``name`` saw it."""
        frontend = self.frontends[name]
        return await frontend.host.connect(frontend.backend, port, timeout=timeout)


@pytest.fixture
async def gpu_node(
    network: Network, apiserver: APIServer, short_tmp: pathlib.Path
) -> AsyncIterator[GPUNode]:
    if shutil.which("nft") is None:
        pytest.fail("nft not found: install nftables (apt-get install -y nftables; make test does)")
    host = network.host("gpu")
    uplink = network.link(ROOT, host)
    server = apiserver.listen_at(uplink.end(ROOT).address)
    kubeconfig = apiserver.write_kubeconfig(short_tmp / "agent-kubeconfig", server=server)
    frontends = {}
    for name in ("pod", "stranger"):
        front = network.host(name)
        link = network.link(front, host)
        frontends[name] = Frontend(front, link.end(front).address, link.end(host).address)
    node = GPUNode(
        network=network,
        apiserver=apiserver,
        root=short_tmp,
        host=host,
        address=uplink.end(host).address,
        kubeconfig=kubeconfig,
        frontends=frontends,
    )
    yield node
    await asyncio.to_thread(node.stop_agents)


async def metric(agent: AgentProcess, name: str, **labels: str) -> float | None:
    async with aiohttp.ClientSession() as http, http.get(agent.url + "/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def proc_status(pid: int) -> dict[str, str]:
    text = pathlib.Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


async def syn_sent(frontend: Frontend, port: int) -> None:
    """Wait until ``frontend`` has sent a SYN to ``port`` that nothing answered yet."""
    async with asyncio.timeout(10):
        while True:
            listed = await asyncio.create_subprocess_exec(
                *frontend.host.command(
                    "ss", "-Htn", "state", "syn-sent", "dst", f"{frontend.backend}:{port}"
                ),
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await listed.communicate()
            if out.strip():
                return
            await asyncio.sleep(0.02)


async def test_only_the_admitted_address_reaches_the_backend_and_a_stranger_is_dropped(
    gpu_node: GPUNode,
) -> None:
    pod = gpu_node.frontends["pod"].address
    gpu_node.admit({PORTS[0]: [pod]})
    agent = await gpu_node.agent().ready()
    await gpu_node.until_in_kernel({PORTS[0]: {pod}, PORTS[1]: set()})

    assert await gpu_node.connect("pod", PORTS[0]) == "connected"
    # Dropped, not refused: a stranger's connect hangs (for minutes, in GVirtuS).
    assert await gpu_node.connect("stranger", PORTS[0]) == "timeout"
    # Admitted to one GPU is not admitted to the node's others.
    assert await gpu_node.connect("pod", PORTS[1]) == "timeout"
    inventory = await agent.inventory()
    assert inventory["access"] == {"mode": "on", "synced": True, "admitted": 1, "error": ""}
    assert await metric(agent, "gvirtus_dra_agent_access_control_enabled") == 1
    assert await metric(agent, "gvirtus_dra_agent_access_admitted_addresses", port="9999") == 1


async def test_access_goes_away_once_the_claim_is_released(gpu_node: GPUNode) -> None:
    pod = gpu_node.frontends["pod"].address
    gpu_node.admit({PORTS[1]: [pod]})
    await gpu_node.agent().ready()
    await gpu_node.until_in_kernel({PORTS[0]: set(), PORTS[1]: {pod}})
    assert await gpu_node.connect("pod", PORTS[1]) == "connected"

    gpu_node.admit({})  # the controller's list once the pod no longer holds the claim

    await gpu_node.until_in_kernel({PORTS[0]: set(), PORTS[1]: set()})
    assert await gpu_node.connect("pod", PORTS[1]) == "timeout"


async def test_an_address_admitted_after_its_first_syn_gets_through_on_the_retry(
    gpu_node: GPUNode,
) -> None:
    """The kubelet prepares before the pod has an address; the frontend connects at once."""
    gpu_node.admit({})
    await gpu_node.agent().ready()
    await gpu_node.until_in_kernel({PORTS[0]: set(), PORTS[1]: set()})
    pod = gpu_node.frontends["pod"]

    attempt = asyncio.create_task(gpu_node.connect("pod", PORTS[0], timeout=30))
    await syn_sent(pod, PORTS[0])  # its first SYN was dropped: nothing answered
    gpu_node.admit({PORTS[0]: [pod.address]})

    assert await attempt == "connected"


async def test_nothing_is_admitted_before_the_list_is_read(gpu_node: GPUNode) -> None:
    pod = gpu_node.frontends["pod"].address
    gpu_node.admit({PORTS[0]: [pod]})
    gpu_node.apiserver.fail_next(
        "GET", r"/configmaps", code=503, times=1000, user_agent=r"\(backend-agent;"
    )
    agent = await gpu_node.agent().ready()  # its backends listen; the list cannot be read

    assert await gpu_node.connect("pod", PORTS[0]) == "timeout"
    assert (await agent.inventory())["access"]["synced"] is False

    gpu_node.apiserver.faults.clear()
    await gpu_node.until_in_kernel({PORTS[0]: {pod}, PORTS[1]: set()})
    assert await gpu_node.connect("pod", PORTS[0]) == "connected"


@pytest.mark.parametrize("stop", ["terminate", "kill"])
async def test_an_agent_restart_never_lets_a_stranger_in(gpu_node: GPUNode, stop: str) -> None:
    """A stranger knocks without pause while the agent stops and a new one starts."""
    pod = gpu_node.frontends["pod"].address
    gpu_node.admit({PORTS[0]: [pod]})
    agent = await gpu_node.agent().ready()
    await gpu_node.until_in_kernel({PORTS[0]: {pod}, PORTS[1]: set()})
    answers: list[str] = []
    done = asyncio.Event()

    async def knock() -> None:
        while not done.is_set():
            answers.append(await gpu_node.connect("stranger", PORTS[0], timeout=0.3))

    knocking = asyncio.create_task(knock())
    await asyncio.to_thread(getattr(agent, stop))
    after_stop = gpu_node.in_kernel()
    await gpu_node.agent().ready()
    await gpu_node.until_in_kernel({PORTS[0]: {pod}, PORTS[1]: set()})
    assert await gpu_node.connect("pod", PORTS[0]) == "connected"
    done.set()
    await knocking

    assert answers and set(answers) == {"timeout"}
    # A clean stop admits nobody; a killed agent's rules stay as they were.
    assert after_stop == (
        {PORTS[0]: set(), PORTS[1]: set()}
        if stop == "terminate"
        else {PORTS[0]: {pod}, PORTS[1]: set()}
    )


async def test_backends_hold_no_capability_of_the_agent(gpu_node: GPUNode) -> None:
    """A backend runs other people's CUDA calls: it must not be able to change the filter."""
    gpu_node.admit({})
    agent = await gpu_node.agent().ready()

    for pid in backend_pids(agent.state_dir):
        status = proc_status(pid)
        assert (status["CapEff"], status["CapPrm"], status["NoNewPrivs"]) == (
            "0000000000000000",
            "0000000000000000",
            "1",
        ), f"backend process {pid}"


@pytest.fixture
def path_without_nft(short_tmp: pathlib.Path) -> str:
    """A PATH with ``ip`` (to enter the namespace) and without ``nft``."""
    folder = short_tmp / "bin-without-nft"
    folder.mkdir()
    ip = shutil.which("ip")
    assert ip is not None
    (folder / "ip").symlink_to(ip)
    return str(folder)


@pytest.mark.parametrize(
    ("wrapper", "without_nft", "messages"),
    [
        (
            (),
            True,
            [
                "backend-agent cannot run: backend access control: the nft command (nftables) "
                "is not installed: install nftables in the agent's image (apt-get install "
                "nftables), or run the agent with --access-control off"
            ],
        ),
        (
            ("setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", "--"),
            False,
            [
                "backend-agent cannot run: backend access control: the agent may not change the "
                "packet filter (",
                "Operation not permitted): it needs the capability NET_ADMIN in the host's "
                "network namespace (securityContext.capabilities.add: [NET_ADMIN], as root), "
                "or run it with --access-control off",
            ],
        ),
    ],
    ids=["no-nft", "no-net-admin"],
)
async def test_a_missing_packet_filter_stops_the_agent_saying_how_to_fix_it(
    gpu_node: GPUNode,
    path_without_nft: str,
    wrapper: tuple[str, ...],
    without_nft: bool,
    messages: list[str],
) -> None:
    env = {"PATH": path_without_nft} if without_nft else {}
    agent = gpu_node.agent(wrapper=wrapper, env=env)

    code = await asyncio.to_thread(agent.proc.wait, 30)

    assert code == 1
    (record,) = [json.loads(line) for line in agent.logs().splitlines() if "cannot run" in line]
    assert all(message in record["msg"] for message in messages), record["msg"]
    assert backend_pids(agent.state_dir) == [], "no backend started unprotected"
    assert gpu_node.in_kernel() is None


async def test_access_control_off_lets_anyone_in_and_says_so(gpu_node: GPUNode) -> None:
    gpu_node.admit({})
    enforcing = await gpu_node.agent().ready()
    enforcing.terminate()  # leaves the ports closed to everyone
    assert gpu_node.in_kernel() == {PORTS[0]: set(), PORTS[1]: set()}

    agent = await gpu_node.agent(args=("--access-control", "off")).ready()

    assert gpu_node.in_kernel() is None, "off removes what an enforcing agent left"
    assert await gpu_node.connect("stranger", PORTS[0]) == "connected"
    warned = [
        json.loads(line) for line in agent.logs().splitlines() if "access control is OFF" in line
    ]
    assert warned and warned[0]["level"] == "warning"
    assert warned[0]["msg"] == (
        "backend access control is OFF (--access-control off): anyone who reaches ports "
        f"9999, 10000 of {NODE} uses its GPUs, with no claim"
    )
    assert (await agent.inventory())["access"] == {
        "mode": "off",
        "synced": False,
        "admitted": 0,
        "error": "",
    }
    assert await metric(agent, "gvirtus_dra_agent_access_control_enabled") == 0
    assert not any(
        "backend-agent" in r.user_agent and f"pid {agent.proc.pid})" in r.user_agent
        for r in gpu_node.apiserver.requests
    ), "off needs no credentials"


async def test_an_unusable_list_keeps_the_rules_in_force_and_is_reported(
    gpu_node: GPUNode,
) -> None:
    pod = gpu_node.frontends["pod"].address
    gpu_node.admit({PORTS[0]: [pod]})
    agent = await gpu_node.agent().ready()
    await gpu_node.until_in_kernel({PORTS[0]: {pod}, PORTS[1]: set()})
    stranger = gpu_node.frontends["stranger"].address
    forged = BackendAccess(
        node_name="another-node", ports=(PortAccess(port=PORTS[0], addresses=(stranger,)),)
    )

    gpu_node.apiserver.mutate(
        "configmaps",
        f"gvirtus-dra-access-{NODE}",
        NAMESPACE,
        lambda obj: obj["data"].update({"access.json": forged.encode()}),
    )

    async with asyncio.timeout(15):
        while not (await agent.inventory())["access"]["error"]:
            await asyncio.sleep(0.05)
    access = (await agent.inventory())["access"]
    assert access["error"] == (
        "the access list is unusable: it is the list of node 'another-node', not of 'gpu-node-1'"
    )
    assert gpu_node.in_kernel() == {PORTS[0]: {pod}, PORTS[1]: set()}
    assert await gpu_node.connect("stranger", PORTS[0]) == "timeout"
    assert await metric(agent, "gvirtus_dra_agent_access_update_failures_total", stage="read") == 1
