"""Sans-IO proxy core: transactions, dialogs (Record-Route token), next hops (SPEC §6)."""

from .actions import Action, Addr, Admit, Outcome, Refused, Release, Send
from .core import ALLOW, MAGIC, CoreConfig, ProxyCore
from .dialog import DialogInfo, RouteToken
from .hops import HopSet, NextHop

__all__ = [
    "ALLOW",
    "MAGIC",
    "Action",
    "Addr",
    "Admit",
    "CoreConfig",
    "DialogInfo",
    "HopSet",
    "NextHop",
    "Outcome",
    "ProxyCore",
    "Refused",
    "Release",
    "RouteToken",
    "Send",
]
