"""Decoding: one MQTT message of a known device family → readings or a reject."""
