"""Results of the tools as JSON: numpy scalars become numbers, NaN and infinities null."""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def jsonable(x: Any, digits: int = 6) -> Any:
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else round(x, digits)
    if isinstance(x, dict):
        return {str(k): jsonable(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v, digits) for v in x]
    if isinstance(x, np.generic):
        return jsonable(x.item(), digits)
    return x
