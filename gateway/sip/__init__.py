"""Sans-IO SIP message layer: parse, inspect, edit, re-emit, build, frame.

No sockets, no clock, no asyncio: the transport moves bytes, this package
says what they mean (h11's split). Every refusal is a ``SipError`` carrying
the status to answer with.
"""

from .build import PHRASES, build_request, build_response
from .errors import SipError
from .framing import Ping, StreamFramer
from .headers import COMPACT, Header, split_list
from .message import Message, Request, Response
from .parser import MAX_HEADERS, MAX_LINE, MAX_MESSAGE, MAX_VIAS, parse
from .quick import QuickResponse, quick_response
from .uri import SipUri, header_params, header_uri, parse_uri, user_of
from .via import Via, parse_via

__all__ = [
    "COMPACT",
    "MAX_HEADERS",
    "MAX_LINE",
    "MAX_MESSAGE",
    "MAX_VIAS",
    "PHRASES",
    "Header",
    "Message",
    "Ping",
    "QuickResponse",
    "Request",
    "Response",
    "SipError",
    "SipUri",
    "StreamFramer",
    "Via",
    "build_request",
    "build_response",
    "header_params",
    "header_uri",
    "parse",
    "parse_uri",
    "parse_via",
    "quick_response",
    "split_list",
    "user_of",
]
