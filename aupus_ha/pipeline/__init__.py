"""The ingestion pipeline: MQTT → intake/spool → buffer → flusher → store."""
