"""Acoustic articulation fused with phoneme shapes: what the voice says about the mouth sets how much
and exactly when it opens; the phones choose the shapes acoustics cannot see.

JALI (Edwards et al., SIGGRAPH 2016) drives jaw and lip activity as separate signals from the
speech's sound and lets the phonetic content select the visemes; NVIDIA's Audio2Face likewise
takes the amount of motion from the audio. Here, per session and frame:

- where phones are known (``cover``: their summed dominance, 0..1), the jaw opens by the acoustic
  jaw amount times the phone's own opening (an /a/ opens wide, an /i/ little, both only as far as
  the voice does), lip aperture and rounding keep the phone's shape scaled by the acoustic cues,
  and the other lip gestures (spread, press, roll) are the phone's;
- where no phone is known yet (a live source's phones come late), the acoustic pose alone: jaw,
  lip aperture and a rounding cue;
- voice activity gates everything: in silence the mouth closes, whatever the phones say.

The hard constraints (lips closed at P/B/M, lip on teeth at F/V) are applied after this by the
viseme node, so closures land fully whatever the acoustics did.
"""
from __future__ import annotations

import numpy as np

from .tables import arkit_names

_JAW_ACOUSTIC = 0.55  # jawOpen of a fully open voice with no phone known (an /a/'s table pose: 0.6)
_JAW_BASE = 0.25  # with a phone: jawOpen = acoustic jaw x (this + the phone's own jawOpen)
_APERTURE = {"mouthLowerDownLeft": 0.3, "mouthLowerDownRight": 0.3, "mouthUpperUpLeft": 0.12, "mouthUpperUpRight": 0.12}
_ROUND = {"mouthFunnel": 0.4, "mouthPucker": 0.3}


class Fusion:
    """Vectorised over sessions: ``fuse(weights, cover, articulation)``."""

    def __init__(self) -> None:
        col = {n: i for i, n in enumerate(arkit_names())}
        self.n = len(col)
        self.jaw = col["jawOpen"]
        self.aperture = np.array([col[k] for k in _APERTURE])
        self.round = np.array([col[k] for k in _ROUND])
        self.acoustic = np.zeros((3, self.n))  # the pose per unit of jaw, lips, round
        self.acoustic[0, self.jaw] = _JAW_ACOUSTIC
        for k, v in _APERTURE.items():
            self.acoustic[1, col[k]] = v
        for k, v in _ROUND.items():
            self.acoustic[2, col[k]] = v

    def fuse(self, weights: np.ndarray, cover: np.ndarray, art: np.ndarray) -> np.ndarray:
        """weights (k, 52): the phones' co-articulated shapes; cover (k,) 0..1; art (k, 4): jaw,
        lips, round, voice. Returns the fused (k, 52)."""
        jaw, lips, rnd, voice = art[:, 0:1], art[:, 1:2], art[:, 2:3], art[:, 3:4]
        shaped = weights.copy()
        shaped[:, self.jaw] = np.minimum(1.0, jaw[:, 0] * (_JAW_BASE + weights[:, self.jaw]))
        shaped[:, self.aperture] *= 0.4 + 0.9 * lips
        shaped[:, self.round] *= 0.7 + 0.6 * rnd
        acoustic = art[:, :3] @ self.acoustic
        c = np.clip(cover, 0.0, 1.0)[:, None]
        return np.clip((c * shaped + (1.0 - c) * acoustic) * np.clip(voice, 0.0, 1.0), 0.0, 1.0)
