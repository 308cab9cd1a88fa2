"""Process life cycle shared by the components: stop signals, a lean steady state."""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal

log = logging.getLogger(__name__)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, so a component can shut down in order."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, event.set)
    return event


def freeze_startup_objects() -> None:
    """Exclude everything built at start-up from the cyclic garbage collector.

    The API client's thousands of model classes live as long as the process; left
    in the collector's oldest generation, every full collection walks them and
    stalls whatever request is running by tens of milliseconds.
    """
    gc.collect()
    gc.freeze()


def raise_file_limit(wanted: int = 65536) -> None:
    """Raise the soft limit of open files towards the hard one.

    A controller keeps a connection to every backend agent; a thousand nodes need
    more descriptors than the common default soft limit of 1024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        log.debug("raised the open file limit from %d to %d", soft, target)
