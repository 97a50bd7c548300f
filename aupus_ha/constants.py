"""Every magic string and number of aupus-ha, in one place."""

from __future__ import annotations

from typing import Final

QUALITY_GOOD: Final = "bom"
QUALITY_PARTIAL: Final = "parcial"
QUALITY_BAD: Final = "ruim"
QUALITY_LABELS: Final = (QUALITY_GOOD, QUALITY_PARTIAL, QUALITY_BAD)

SOURCE_MQTT: Final = "MQTT"

# Roles as reported on /health/leader and stored in ha_instances.role.
ROLE_LEADER: Final = "leader"
ROLE_STANDBY: Final = "standby"
ROLE_OBSERVER: Final = "observer"  # MQTT_MODE=development: shows data, never writes
ROLE_DISABLED: Final = "disabled"  # MQTT_MODE=disabled: HTTP only
ROLE_STOPPED: Final = "stopped"  # row left by a gracefully stopped process

MODE_PRODUCTION: Final = "production"
MODE_DEVELOPMENT: Final = "development"
MODE_DISABLED: Final = "disabled"
MQTT_MODES: Final = (MODE_PRODUCTION, MODE_DEVELOPMENT, MODE_DISABLED)

# Handover reasons recorded in ha_handovers.reason.
REASON_INITIAL: Final = "initial"  # no leader had ever been recorded
REASON_RELEASED: Final = "released"  # previous leader stepped down cleanly
REASON_EVICTED: Final = "evicted"  # previous leader was silent and got terminated
REASON_LOST: Final = "lost"  # previous leader's session vanished (crash, network)

# Brasília has had no daylight saving time since 2019; the legacy service and the
# meters' text timestamps use a fixed UTC-3.
BRASILIA_UTC_OFFSET_HOURS: Final = -3

# Readings older than this or further in the future than FUTURE_TOLERANCE are absurd.
# DOMAIN v2: a device time more than 15 minutes ahead of arrival is unusable (a clock
# set wrong, or a naive ISO time in UTC read as Brasília: 3 h ahead); a day of tolerance
# let such samples hold rollup minutes, spool segments and PUBACKs for hours.
EARLIEST_READING_YEAR: Final = 2020  # DOMAIN v2: before 2020-01-01 is an RTC reset
FUTURE_TOLERANCE_S: Final = 900
EPOCH_MS_THRESHOLD: Final = 10_000_000_000  # below: epoch seconds, above: milliseconds

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_CONFIG: Final = 2  # bad configuration, identity clash, pooler detected

# How often a standby asks for the lock; cheap, and it bounds the failover gap
# after a crash (the dead leader's backend releases the lock at once).
ACQUIRE_POLL_S: Final = 0.2
TOPIC_REFRESH_S: Final = 2.0
DB_CALL_TIMEOUT_S: Final = 5.0
MQTT_CONNECT_TIMEOUT_S: Final = 10.0
# MQTT 5 session expiry: an instance that is away for up to a day gets every
# message it missed when it comes back (the broker must not cap the queue).
MQTT_SESSION_EXPIRY_S: Final = 86_400
