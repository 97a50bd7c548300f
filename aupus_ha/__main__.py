"""`python -m aupus_ha` == the `aupus-ha` command."""

from aupus_ha.cli import main

raise SystemExit(main())
