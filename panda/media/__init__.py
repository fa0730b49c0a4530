"""The media relay: rooms of aiortc peer connections forwarding encoded frames."""

from .errors import MediaError, SignalError
from .fanout import Fanout, ForwardingTrack, FrameSink
from .ice import MediaConfig, configure_peer_connection, create_peer_connection
from .room import Participant, Room, RoomRegistry, SendFn, StateFn

__all__ = [
    "Fanout",
    "ForwardingTrack",
    "FrameSink",
    "MediaConfig",
    "MediaError",
    "Participant",
    "Room",
    "RoomRegistry",
    "SendFn",
    "SignalError",
    "StateFn",
    "configure_peer_connection",
    "create_peer_connection",
]
