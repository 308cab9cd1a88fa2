"""The controller: turns backend agents' inventories into ResourceSlices, one pool per node."""
