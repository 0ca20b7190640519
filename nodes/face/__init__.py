"""The face: ARKit names and tables, morph, LOD and viseme tables, layer curves, One Euro, the frame clock."""
from .frameclock import FRAME_CLOCK_PARAMS, FrameClockNode
from .layers import approach, blink_curve, smoothstep, weight_table
from .lod_table import LodTableError, level_masks, load_lod_table
from .morphs import MORPH_CAPS, PROFILES, MorphTable, MorphTableError, load_morph_table, profile_path
from .one_euro import OneEuro
from .slots import batch_slots, known_slots
from .smoothing_meter import SmoothingMeter
from .tables import (
    GRAPHS_DIR,
    TABLE_PATH_ENV,
    TABLE_RULE,
    TableError,
    TablePathError,
    arkit_names,
    arkit_pose_names,
    load_mapping,
    load_table,
    table_dirs,
    table_path,
)
from .visemes import LEAD_ROOM_MS, SIL, VISEMES, VisemeTables, hold_bump, load_viseme_tables, ramp, strip_stress

__all__ = ["FRAME_CLOCK_PARAMS", "FrameClockNode", "GRAPHS_DIR", "LEAD_ROOM_MS", "LodTableError", "MORPH_CAPS", "MorphTable",
           "MorphTableError", "OneEuro", "PROFILES", "SIL", "SmoothingMeter", "TABLE_PATH_ENV", "TABLE_RULE", "TableError",
           "TablePathError", "VISEMES", "VisemeTables", "approach", "arkit_names", "arkit_pose_names",
           "batch_slots", "blink_curve", "hold_bump", "known_slots", "level_masks", "load_lod_table", "load_mapping", "load_morph_table",
           "load_table", "load_viseme_tables", "profile_path", "ramp", "smoothstep", "strip_stress",
           "table_dirs", "table_path", "weight_table"]

