"""What a container given a GVirtuS GPU sees: its configuration, its backend, whether it answers.

Run by every demo pod (the script comes from the ConfigMap ``show-gpu``); it
prints, then stays up so ``kubectl logs`` and ``kubectl exec`` can look again.
"""

import json
import os
import socket
import sys
import time

path = os.environ.get("GVIRTUS_CONFIG", "/etc/gvirtus/properties.json")
print(f"GVIRTUS_CONFIG={path}")
with open(path) as handle:
    document = json.load(handle)
print(json.dumps(document, indent=2))
endpoint = document["communicator"][0]["endpoint"]
backend = os.environ.get("GVIRTUS_BACKEND", "")
print(f"GVIRTUS_BACKEND={backend}")
print(f"GPU: {os.environ.get('GVIRTUS_GPU_MODEL')} ({os.environ.get('GVIRTUS_GPU_UUID')})")
try:
    socket.create_connection((endpoint["server_address"], int(endpoint["port"])), timeout=3).close()
    print(f"backend {endpoint['server_address']}:{endpoint['port']} answers")
except OSError as exc:
    print(f"backend {endpoint['server_address']}:{endpoint['port']} does not answer: {exc}")
sys.stdout.flush()
while True:
    time.sleep(3600)
