"""Call strategies and the compliance filter: pure code, no I/O, no clock reads.

`next_action(contact, attempts, campaign, now)` decides which number and channel to try next and
when, or closes the contact with the reason. The compliance rules it applies live in
`strategies.compliance`; every refusal names its rule.
"""

from strategies.model import (
    BUILTIN_STRATEGIES,
    AttemptView,
    CampaignPolicy,
    Close,
    ContactView,
    Dial,
    NextAction,
    Step,
    Strategy,
    StrategyError,
)
from strategies.planner import next_action

__all__ = [
    "BUILTIN_STRATEGIES",
    "AttemptView",
    "CampaignPolicy",
    "Close",
    "ContactView",
    "Dial",
    "NextAction",
    "Step",
    "Strategy",
    "StrategyError",
    "next_action",
]
