"""Operations: what people and machines read (HTTP, health, metrics, status) and
what warns them (alerts, notify)."""
