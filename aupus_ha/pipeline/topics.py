"""The topic catalogue: which equipment listens on which MQTT topic.

Built from `equipamentos` rows (enabled, with a topic, not deleted) and refreshed every
few seconds, so adding or disabling equipment needs no restart. Whitespace around a
stored topic is trimmed first, as the platform does (DOMAIN v2), so a topic typed with a
stray space still gets its readings. The topic must then be a plain topic: wildcards,
empty levels at either end or an empty string would subscribe to far more than one
device, so such rows are skipped, logged and reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from aupus_ha.pipeline.readings import Equipment

MAX_TOPIC_BYTES = 65535


def topic_problem(topic: str | None) -> str | None:
    """Why a stored topic cannot be subscribed once trimmed, or None when it is fine."""
    if topic is None or not topic.strip():
        return "empty topic"
    topic = topic.strip()
    if "+" in topic or "#" in topic:
        return "contains an MQTT wildcard (+ or #)"
    if topic.startswith("/") or topic.endswith("/"):
        return "leading or trailing '/'"
    if "\x00" in topic or len(topic.encode()) > MAX_TOPIC_BYTES:
        return "not a valid MQTT topic name"
    return None


@dataclass(frozen=True, slots=True)
class InvalidTopic:
    equipamento_id: str
    topic: str | None
    problem: str


@dataclass(slots=True)
class TopicCatalog:
    by_topic: dict[str, tuple[Equipment, ...]] = field(default_factory=dict)
    invalid: list[InvalidTopic] = field(default_factory=list)

    @classmethod
    def build(cls, equipment: Iterable[Equipment]) -> TopicCatalog:
        grouped: dict[str, list[Equipment]] = {}
        invalid: list[InvalidTopic] = []
        for item in equipment:
            problem = topic_problem(item.topic)
            if problem:
                invalid.append(InvalidTopic(item.id, item.topic, problem))
                continue
            trimmed = replace(item, topic=item.topic.strip())
            grouped.setdefault(trimmed.topic, []).append(trimmed)
        return cls({t: tuple(items) for t, items in grouped.items()}, invalid)

    def equipment_for(self, topic: str) -> Sequence[Equipment]:
        return self.by_topic.get(topic, ())

    @property
    def topics(self) -> list[str]:
        return sorted(self.by_topic)
