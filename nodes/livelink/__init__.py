"""Live Link Face: the v6 UDP packet, its JSON cousin, the packet container file and CSV takes."""
from .packet import (
    CAPS,
    MAX_JSON_BYTES,
    MAX_NAME_BYTES,
    MAX_PACKET_BYTES,
    N_BLENDSHAPES,
    N_POSE,
    N_VALUES,
    SAMPLE_CAPTURE,
    TAIL_BYTES,
    TAIL_DTYPE,
    VERSION,
    LiveLinkFrame,
    PacketError,
    build_container,
    build_json_packet,
    build_packet,
    build_packets,
    export_columns,
    header_of,
    parse_datagram,
    parse_json_packet,
    parse_packet,
    parse_tails,
    pascal,
    read_container,
)
from .take import Take, parse_timecode, read_take

__all__ = ["CAPS", "LiveLinkFrame", "MAX_JSON_BYTES", "MAX_NAME_BYTES", "MAX_PACKET_BYTES", "N_BLENDSHAPES",
           "N_POSE", "N_VALUES", "PacketError", "SAMPLE_CAPTURE", "TAIL_BYTES", "TAIL_DTYPE", "Take",
           "VERSION", "build_container", "build_json_packet", "build_packet", "build_packets",
           "export_columns", "header_of", "parse_datagram", "parse_json_packet", "parse_packet",
           "parse_tails", "parse_timecode", "pascal", "read_container", "read_take"]

