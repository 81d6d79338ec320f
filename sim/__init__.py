"""Simulators: the discrete-event campaign model, the Asterisk emulator and SIP endpoints.

Filled by the pacing, CTI and SIP simulator issues.
"""
