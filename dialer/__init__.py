"""The predictive dialer: data core, contact import, leasing, and (later) pacing and the engine."""
