"""Names derived from CLUSTER_NAME and INSTANCE_ID that must fit a length limit.

PostgreSQL refuses a NOTIFY channel longer than 63 bytes (and silently truncates it in
LISTEN), aupus-ha keeps MQTT client ids to 128 characters, and a file name has at most
255 bytes (the spool directory). Both inputs may be 128 characters long, so a plain cut
would either fail (NOTIFY at step-down and shutdown, the spool at start) or give two
names the same bounded form (two instances fighting over one MQTT session).

`bounded` keeps a name that fits exactly as it is — so a rolling upgrade changes
neither the channel an old and a new instance share nor the client id that owns an
instance's persistent MQTT session — and turns a name that does not fit into a readable
prefix plus a hash of the whole name. The separator `~` is not allowed in CLUSTER_NAME
or INSTANCE_ID, so a bounded form can never equal a name that fitted as it was.
"""

from __future__ import annotations

import hashlib

NOTIFY_CHANNEL_MAX = 63  # PostgreSQL identifiers: NAMEDATALEN - 1 bytes
MQTT_CLIENT_ID_MAX = 128
FILE_NAME_MAX = 255  # NAME_MAX of Linux file systems, in bytes
HASH_CHARS = 16  # 64 bits of SHA-256: collisions among a cluster's names are not a concern
SEPARATOR = "~"


def bounded(name: str, limit: int) -> str:
    """`name` if it fits in `limit` UTF-8 bytes, else a prefix + `~` + a hash of it."""
    encoded = name.encode()
    if len(encoded) <= limit:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:HASH_CHARS]
    room = limit - len(SEPARATOR) - HASH_CHARS
    prefix = encoded[:room].decode(errors="ignore")  # never split a multi-byte character
    return f"{prefix}{SEPARATOR}{digest}"


def notify_channel(cluster_name: str) -> str:
    """The cluster's LISTEN/NOTIFY channel (a leader's release wakes the standbys)."""
    return bounded(f"aupus_ha/{cluster_name}", NOTIFY_CHANNEL_MAX)


def mqtt_client_id(cluster_name: str, instance_id: str) -> str:
    """The MQTT client id: stable across restarts, so the broker keeps the session."""
    return bounded(f"aupus-ha-{cluster_name}-{instance_id}", MQTT_CLIENT_ID_MAX)


def spool_directory_name(cluster_name: str, instance_id: str) -> str:
    """This instance's spool subdirectory of SPOOL_DIR (one per cluster and instance)."""
    return bounded(f"{cluster_name}-{instance_id}", FILE_NAME_MAX)
