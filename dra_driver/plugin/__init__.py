"""The kubelet plugin: registers with the kubelet and prepares claims on its node."""
