"""IVR engine: flows written by IVR designers, a sans-IO interpreter and its drivers.

Filled by the IVR issue.
"""
