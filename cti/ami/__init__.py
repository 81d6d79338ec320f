"""The AMI backend: sans-IO framing and channel tracking, and the client on top."""

from cti.ami.tracker import ChannelTracker

__all__ = ["ChannelTracker"]
