"""Access to the Kubernetes API: the client adapter, its errors, list-watch."""
