"""CTI bridge: one telephony interface for the dialer, with AMI and ARI backends.

Filled by the CTI issue. The package exists now so that the layout is fixed from the start.
"""
