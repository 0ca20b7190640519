"""The ``avatar/packet`` codec (``docs/wire-format.md``): encoder, decoder, packet peeking, stream limits."""
from .codec import (
                    MAX_COLUMNS,
                    MAX_KEYFRAME_INTERVAL,
                    MAX_PTS_STEP,
                    MAX_SLOTS,
                    POSE_COLUMNS,
                    POSE_RANGE,
                    SEQ_MOD,
                    TABLE_ARKIT52,
                    TABLE_SIZES,
                    VERSION,
                    WEIGHT_RANGE,
                    Names,
                    Packet,
                    dequantize,
                    max_delta_bytes,
                    names_size,
                    parse_packet,
                    quantize,
                    step,
)
from .decoder import DECODED, LATE, MALFORMED, REFUSED, Batch, CompiledDecoder, Decoder, Frame, Group
from .encoder import Encoded, Encoder
from .keyframe_requests import KeyframeRequests, seq_after
from .layered import MAX_LAYERS, LayerEncoders, LayerSpec, check_layers
from .limits import MAX_SESSION_ID, N_LOD_LEVELS
from .peek import is_keyframe, packet_facts, packet_seq, packet_sid

__all__ = ["DECODED", "LATE", "MALFORMED", "REFUSED", "Batch", "CompiledDecoder", "Group", "LayerEncoders", "LayerSpec",
           "MAX_LAYERS", "check_layers", "MAX_COLUMNS", "MAX_KEYFRAME_INTERVAL", "MAX_PTS_STEP", "MAX_SESSION_ID", "MAX_SLOTS", "N_LOD_LEVELS",
           "POSE_COLUMNS", "POSE_RANGE", "SEQ_MOD", "TABLE_ARKIT52", "TABLE_SIZES", "VERSION", "WEIGHT_RANGE",
           "Decoder", "Encoded", "Encoder", "Frame", "KeyframeRequests", "Names", "Packet", "dequantize", "is_keyframe",
           "max_delta_bytes", "names_size", "packet_facts", "packet_seq", "packet_sid", "parse_packet", "quantize", "seq_after", "step"]
