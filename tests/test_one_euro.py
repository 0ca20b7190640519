"""OneEuro: smooths a still signal hard, follows fast moves with little lag, one state per slot."""
from __future__ import annotations

import numpy as np

from nodes.face import OneEuro

DT = 1.0 / 60.0


def run(f: OneEuro, signal: np.ndarray, slots: np.ndarray | None = None) -> np.ndarray:
    """Filter a (T, S, N) signal frame by frame."""
    return np.stack([f(x, DT, slots) for x in signal])


def test_reduces_jitter_of_a_noisy_constant() -> None:
    rng = np.random.default_rng(1)
    noisy = 0.5 + rng.normal(0.0, 0.02, (600, 3, 52))
    out = run(OneEuro(52, min_cutoff=1.0, beta=2.0, d_cutoff=2.0), noisy)
    settled = out[60:]
    assert settled.std() < 0.45 * noisy[60:].std()
    assert abs(settled.mean() - 0.5) < 0.005
    # frame-to-frame jitter is what a viewer sees
    assert np.abs(np.diff(settled, axis=0)).mean() < 0.2 * np.abs(np.diff(noisy[60:], axis=0)).mean()


def test_follows_a_fast_step_with_limited_lag() -> None:
    step = np.zeros((120, 1, 4))
    step[30:] = 1.0
    adaptive = run(OneEuro(4, min_cutoff=1.0, beta=2.0, d_cutoff=2.0), step)[:, 0, 0]
    fixed = run(OneEuro(4, min_cutoff=1.0, beta=0.0), step)[:, 0, 0]
    frames_to_90 = int(np.argmax(adaptive >= 0.9)) - 30
    assert 0 < frames_to_90 <= 8  # within ~130 ms
    assert int(np.argmax(fixed >= 0.9)) - 30 > 2 * frames_to_90  # speed adaptation is what buys this
    assert adaptive.max() <= 1.0 + 1e-12  # a first-order filter never overshoots
    assert np.all(np.diff(adaptive) >= -1e-12)


def test_first_frame_passes_and_slots_are_independent() -> None:
    rng = np.random.default_rng(2)
    sig = rng.uniform(0, 1, (50, 2, 5))
    together = run(OneEuro(5, 1.0, 1.0, 1.0), sig)
    apart = OneEuro(5, 1.0, 1.0, 1.0)
    a = run(apart, sig[:, :1], np.array([3]))  # slot 3 grows the state
    b = run(apart, sig[:, 1:], np.array([0]))
    np.testing.assert_allclose(together[0], sig[0])
    np.testing.assert_allclose(a[:, 0], together[:, 0])
    np.testing.assert_allclose(b[:, 0], together[:, 1])


def test_reset_forgets_a_slot() -> None:
    f = OneEuro(2, 1.0, 0.0, 1.0)
    f(np.zeros((2, 2)), DT)
    f.reset([1])
    out = f(np.ones((2, 2)), DT)
    assert np.all(out[1] == 1.0)  # fresh slot: passes unchanged
    assert np.all(out[0] < 0.2)  # old slot: still smoothing
