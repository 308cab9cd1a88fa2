#!/usr/bin/env python3
"""A stand-in ``gvirtus-backend`` for supervisor tests: the real command line, no GPU.

Started as ``<this> <properties.json>`` like the real backend, it reads its port from
the file, writes what it was given (argv, the GVirtuS environment, the file) to
``$FAKE_BACKEND_RECORD/<port>.json``, prints the real backend's start line and holds
every connection open. ``FAKE_BACKEND_EXIT_AFTER=<seconds>`` makes it exit with code 3.
"""

import json
import os
import pathlib
import socket
import sys
import threading
import time


def main() -> None:
    properties = json.loads(pathlib.Path(sys.argv[1]).read_text())
    endpoint = properties["communicator"][0]["endpoint"]
    port = int(endpoint["port"])
    record = os.environ.get("FAKE_BACKEND_RECORD")
    if record:
        env = {
            k: os.environ.get(k)
            for k in (
                "CUDA_VISIBLE_DEVICES",
                "CUDA_DEVICE_ORDER",
                "GVIRTUS_HOME",
                "GVIRTUS_LOGLEVEL",
                "LD_LIBRARY_PATH",
            )
        }
        # Written whole, then renamed: a test that sees the file must never read half of it.
        written = pathlib.Path(record, f".{port}.json.tmp")
        written.write_text(
            json.dumps({"argv": sys.argv, "env": env, "properties": properties, "pid": os.getpid()})
        )
        written.rename(pathlib.Path(record, f"{port}.json"))
    exit_after = float(os.environ.get("FAKE_BACKEND_EXIT_AFTER", "0"))
    if exit_after:
        threading.Timer(exit_after, lambda: os._exit(3)).start()
    server = socket.create_server(("0.0.0.0", port), reuse_port=False)
    print("GVirtuS backend: 0.0.12 version", flush=True)
    print(f"[Process {os.getpid()}] Up and running!", flush=True)
    clients = []
    while True:
        conn, _ = server.accept()
        clients.append(conn)  # held open, like a frontend session
        time.sleep(0)


if __name__ == "__main__":
    main()
