"""aupus-ha: a high-availability MQTT -> PostgreSQL ingestion cluster.

Every instance subscribes and buffers; only the holder of the cluster's PostgreSQL
advisory lock writes, and every write is fenced by an epoch.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
