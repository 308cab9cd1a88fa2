"""The backend agent: runs a GVirtuS backend per GPU on a GPU node and reports on them."""
