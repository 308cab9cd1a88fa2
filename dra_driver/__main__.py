"""``python -m dra_driver`` is the ``gvirtus-dra`` command."""

from dra_driver.cli import main

raise SystemExit(main())
