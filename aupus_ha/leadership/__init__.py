"""Leadership: the advisory-lock election (mechanism) and the HA loop (policy)."""
