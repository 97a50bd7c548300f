"""The values that flow from the MQTT intake to the store.

Everything downstream of decoding speaks in these two types, so a decoder family
(generic, M-160, inverter) only has to produce them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

Quality = str  # one of constants.QUALITY_LABELS: "bom" | "ruim" | "parcial"
ReadingKey = tuple[str, datetime]
RejectKey = tuple[str, str]


@dataclass(slots=True, frozen=True)
class Equipment:
    """One enabled `equipamentos` row, as the decoder needs it.

    `type_code` (`tipos_equipamentos.codigo`) and `type_category` (the type's
    `categorias_equipamentos.nome`) choose the family before the payload does (DOMAIN
    v2); both are None for an equipment without a type, the category also for a type
    without one.
    """

    id: str
    topic: str
    type_code: str | None = None
    mqtt_schema: object | None = None
    type_category: str | None = None


@dataclass(slots=True)
class Reading:
    """One row of `equipamentos_dados`.

    `timestamp_dados` is timezone-aware UTC at full precision; the store maps it to
    the column's convention (legacy databases keep Brasília local time to the second).
    `dados` is the JSON object already encoded, so it is serialised once per reading
    no matter how often the row is retried or probed.

    Treated as immutable (changes go through `dataclasses.replace`) but not declared
    `frozen`: a frozen dataclass sets each field through `object.__setattr__`, and that
    `__init__` cost 1.4 µs against 0.4 µs, once per reading on every instance.
    """

    equipamento_id: str
    timestamp_dados: datetime
    dados: bytes
    qualidade: Quality = "bom"
    fonte: str = "MQTT"
    energia_kwh: float | None = None
    potencia_ativa_kw: float | None = None
    num_leituras: int | None = None
    timestamp_fim: datetime | None = None
    # False when the payload had no timestamp and arrival time was used: such a row
    # cannot be matched across instances (see docs/architecture.md, "Natural keys").
    matchable: bool = True
    # Set for a sample of a per-minute rollup (inverters): the sample's own instant (UTC).
    # Then `timestamp_dados` is the minute it belongs to and `dados` the raw sample.
    sample_at: datetime | None = None
    # An M-160 summary whose `consumo_phf` is an outlier with a `phf` (m160.py): the flush
    # decides its energy from the equipment's previous reading in device time.
    outlier_guard: bool = False

    @property
    def key(self) -> ReadingKey:
        """Pending-buffer identity: the row's key, or the sample's for rollup samples."""
        return (self.equipamento_id, self.sample_at or self.timestamp_dados)

    @property
    def is_rollup_sample(self) -> bool:
        return self.sample_at is not None


@dataclass(slots=True, frozen=True)
class Reject:
    """A message that could not become a reading; it ends in `ingest_rejects`."""

    topic: str
    payload: bytes
    reason: str
    received_at: datetime
    payload_sha256: str = field(default="")
    # Size of the whole message when `payload` holds only its first bytes (rejects.py
    # stores a bounded prefix); None: `payload` is the whole message.
    payload_bytes: int | None = None

    def __post_init__(self) -> None:
        if not self.payload_sha256:
            digest = hashlib.sha256(self.payload).hexdigest()
            object.__setattr__(self, "payload_sha256", digest)

    @property
    def key(self) -> RejectKey:
        # Every instance derives the same key from the same message, so the row is
        # written once whichever instance leads when it is flushed.
        return (self.topic, self.payload_sha256)


@dataclass(slots=True)
class Decoded:
    """What one MQTT message became."""

    readings: list[Reading] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
