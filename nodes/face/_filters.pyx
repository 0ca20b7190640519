# distutils: extra_compile_args = -ffp-contract=off
"""Compiled hot paths of the face: the One Euro filter, the blender's per-row layers, and the per-row
bookkeeping of the face nodes (a batch's slots, lod's frame counts).

The references are the numpy code in ``nodes/face/one_euro.py`` and ``nodes/blender.py`` (used when
this module is not built, or with AVATAR_PURE_PYTHON=1). Every value here is computed with the same
IEEE double operations in the same order as there (no fused multiply-add: ``-ffp-contract=off``;
numpy's clip, ``x < lo ? lo : x`` then ``x > hi ? hi : x``, NaN kept), so the results are
bit-identical, not merely close. The one transcendental numpy computes differently from the C
library (``exp``, vectorised in numpy) is computed by the caller with numpy and passed in; ``sin``
and ``cos`` are the C library's in both (the tests check it).

Why compiled: the reference runs a few dozen numpy calls per batch over (rows, 52) arrays, each a
pass over memory plus a fixed cost; here one pass over the rows does capture, idle motion,
emotion, micro-expressions, clamping and the One Euro filter with the row in registers/L1.
"""
from cpython.dict cimport PyDict_GetItem
from cpython.list cimport PyList_GET_ITEM, PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF
from cpython.long cimport PyLong_AsSsize_t, PyLong_CheckExact
from cpython.object cimport PyObject
from libc.math cimport cos, fabs, sin, M_PI
from libc.stdint cimport INT64_MAX, int64_t
from libc.stdint cimport int32_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp

import numpy as np

cdef enum:
    N_W = 52  # ARKit weights
    N_P = 9   # ARKit pose
    N_X = 61  # N_W + N_P: what the One Euro filter smooths
cdef double NEVER = -1e18
cdef double SIN_PI = sin(M_PI)  # a finished micro-expression's phase (the usual case), as libm gives it

# flags prepare() returns: which batch-wide branches the reference takes
cdef enum:
    F_NEED_IDLE = 1    # some row is not fully on capture: idle motion is computed for the whole batch
    F_EMO_BLEND = 2    # some row is in an emotion transition: every row is eased (from + (to - from) * s)
    F_TALKING = 4      # some row speaks: the articulated channels fade, the visemes' mouth is mixed in
    F_BLINK_DUE = 8    # some row's next blink is due (the caller draws its random schedule)
    F_GAZE_DUE = 16    # some row's next saccade is due
    F_MICRO_DUE = 32   # some row's next micro-expression is due
NEED_IDLE, EMO_BLEND, TALKING = F_NEED_IDLE, F_EMO_BLEND, F_TALKING
BLINK_DUE, GAZE_DUE, MICRO_DUE = F_BLINK_DUE, F_GAZE_DUE, F_MICRO_DUE


cdef inline double clip(double x, double lo, double hi) noexcept nogil:
    """numpy's clip: NaN stays NaN, -0.0 stays -0.0 (only x < lo is replaced)."""
    if x < lo:
        x = lo
    if x > hi:
        x = hi
    return x


cdef inline double smoothstep(double x) noexcept nogil:
    x = clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


cdef inline double maximum0(double x) noexcept nogil:
    """np.maximum(x, 0): ``x > 0 ? x : 0``."""
    return x if x > 0.0 else 0.0


cdef extern from *:
    """
    /* The per-row kernels, in C so that the compiler vectorises them (restrict pointers, -O3 for
       these functions) with one clone per instruction set, picked when the module loads (x86-64
       GCC with glibc; elsewhere one plain build). No clone contracts a*b+c into a fused
       multiply-add (fp-contract=off): each operation rounds as numpy's does, lane by lane. */
    #include <math.h>
    #include <stdint.h>
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
    #define FACE_KERNEL __attribute__((target_clones("avx512f", "avx2", "default"), optimize("O3", "fp-contract=off")))
    #elif defined(__GNUC__) && !defined(__clang__)
    #define FACE_KERNEL __attribute__((optimize("O3", "fp-contract=off")))
    #else
    #define FACE_KERNEL
    #endif
    #define FACE_TWO_PI 6.283185307179586  /* 2.0 * np.pi, exactly */
    #define FACE_N_W 52
    #define FACE_N_X 61

    /* numpy's clip: x < lo -> lo, then x > hi -> hi; NaN and -0.0 stay as they are */
    #define FACE_CLIP01(v) ((v) > 1.0 ? 1.0 : ((v) < 0.0 ? 0.0 : (v)))

    /* One value of OneEuro.__call__, in its order of operations: from x and the previous value and
       speed (prev, dprev) to the filtered value and speed (out, edx; they may be prev and dprev).
       A macro, so it is compiled inside each FACE_KERNEL function, with its settings. */
    #define FACE_EURO_STEP(X, PREV, DPREV, OUT, EDX) do {  \
            double p_ = (PREV), dp_ = (DPREV);             \
            double d_ = (X) - p_;                          \
            double e_ = d_ / dt;                           \
            e_ = e_ - dp_;                                 \
            e_ = e_ * alpha;                               \
            e_ = e_ + dp_;                                 \
            double a_ = fabs(e_);                          \
            a_ = a_ * beta;                                \
            a_ = a_ + min_cutoff;                          \
            a_ = a_ * tdt;                                 \
            a_ = a_ / (a_ + 1.0);                          \
            d_ = d_ * a_;                                  \
            (OUT) = d_ + p_;                               \
            (EDX) = e_;                                    \
        } while (0)

    /* One row of OneEuro.__call__ (n values). */
    static FACE_KERNEL void face_euro(const double *restrict x, const double *restrict prev,
                                      const double *restrict dprev, int primed, int n, double dt,
                                      double min_cutoff, double beta, double d_cutoff,
                                      double *restrict out, double *restrict edx) {
        double r = FACE_TWO_PI * d_cutoff * dt;
        double alpha = r / (1.0 + r);
        double tdt = FACE_TWO_PI * dt;
        int j;
        if (!primed) {  /* a slot's first frame passes unchanged with zero speed */
            for (j = 0; j < n; j++) { out[j] = x[j]; edx[j] = 0.0; }
            return;
        }
        for (j = 0; j < n; j++) {
            FACE_EURO_STEP(x[j], prev[j], dprev[j], out[j], edx[j]);
        }
    }

    /* face_euro with the state rows updated in place (the blender's slots are distinct in a batch) */
    static FACE_KERNEL void face_euro_inplace(const double *restrict x, double *restrict state,
                                              double *restrict dstate, int primed, double dt,
                                              double min_cutoff, double beta, double d_cutoff) {
        double r = FACE_TWO_PI * d_cutoff * dt;
        double alpha = r / (1.0 + r);
        double tdt = FACE_TWO_PI * dt;
        int j;
        if (!primed) {
            for (j = 0; j < FACE_N_X; j++) { state[j] = x[j]; dstate[j] = 0.0; }
            return;
        }
        for (j = 0; j < FACE_N_X; j++) {
            FACE_EURO_STEP(x[j], state[j], dstate[j], state[j], dstate[j]);
        }
    }

    /* A capture row into its slot: float32 -> float64 (exact). */
    static FACE_KERNEL void face_ingest(const float *restrict w, const float *restrict pose,
                                        double *restrict cw, double *restrict cp) {
        int j;
        for (j = 0; j < FACE_N_W; j++) cw[j] = w[j];
        if (pose) { for (j = 0; j < FACE_N_X - FACE_N_W; j++) cp[j] = pose[j]; }
        else { for (j = 0; j < FACE_N_X - FACE_N_W; j++) cp[j] = 0.0; }
    }

    /* Blender.frame from the base (x: 52 weights + 9 pose, the capture or its mix with idle motion;
       when x is NULL the capture rows cw, cp themselves) on: emotion (eased or not), micro-expression, the fade of articulated channels while
       speaking, the clamp, the One Euro filter (its state rows ex, edx updated), the visemes'
       mouth, the final clamp and the float32 rows. */
    static FACE_KERNEL void face_row(const double *restrict x, const double *restrict cw,
                                     const double *restrict cp, const double *restrict efrom,
                                     const double *restrict eto, int ease, double ss,
                                     const double *restrict mrow, double bump,
                                     const unsigned char *restrict art, const unsigned char *restrict mouth,
                                     int talking, double s, const double *restrict vis,
                                     double *restrict ex, double *restrict edx, unsigned char *primed,
                                     double dt, double min_cutoff, double beta, double d_cutoff,
                                     float *restrict ow, float *restrict op) {
        double e[FACE_N_W], w[FACE_N_X];
        int j;
        if (x) { for (j = 0; j < FACE_N_X; j++) w[j] = x[j]; }
        else {
            for (j = 0; j < FACE_N_W; j++) w[j] = cw[j];
            for (j = 0; j < FACE_N_X - FACE_N_W; j++) w[FACE_N_W + j] = cp[j];
        }
        if (ease) { for (j = 0; j < FACE_N_W; j++) e[j] = efrom[j] + (eto[j] - efrom[j]) * ss; }
        else { for (j = 0; j < FACE_N_W; j++) e[j] = eto[j]; }
        if (mrow) { for (j = 0; j < FACE_N_W; j++) e[j] = e[j] + mrow[j] * bump; }
        else { for (j = 0; j < FACE_N_W; j++) e[j] = e[j] + 0.0; }
        if (talking) {
            double f = 1.0 - s;
            for (j = 0; j < FACE_N_W; j++) e[j] = art[j] ? e[j] * f : e[j];
        }
        for (j = 0; j < FACE_N_W; j++) {
            double v = w[j] + e[j];
            v = v < 0.0 ? 0.0 : v;
            w[j] = v > 1.0 ? 1.0 : v;
        }
        face_euro_inplace(w, ex, edx, *primed, dt, min_cutoff, beta, d_cutoff);
        *primed = 1;
        double *o = w;
        for (j = 0; j < FACE_N_X; j++) o[j] = ex[j];
        if (talking) {
            for (j = 0; j < FACE_N_W; j++) o[j] = mouth[j] ? o[j] + s * (vis[j] - o[j]) : o[j];
        }
        for (j = 0; j < FACE_N_W; j++) {
            double v = o[j];
            v = v < 0.0 ? 0.0 : v;
            o[j] = v > 1.0 ? 1.0 : v;
        }
        for (j = 0; j < FACE_N_W; j++) ow[j] = (float)o[j];
        for (j = 0; j < FACE_N_X - FACE_N_W; j++) op[j] = (float)o[FACE_N_W + j];
    }
    """
    void face_euro(const double* x, const double* prev, const double* dprev, int primed, int n, double dt,
                   double min_cutoff, double beta, double d_cutoff, double* out, double* edx) noexcept nogil
    void face_ingest(const float* w, const float* pose, double* cw, double* cp) noexcept nogil
    void face_row(const double* x, const double* cw, const double* cp, const double* efrom, const double* eto, int ease, double ss, const double* mrow,
                  double bump, const unsigned char* art, const unsigned char* mouth, int talking, double s,
                  const double* vis, double* ex, double* edx, unsigned char* primed, double dt, double min_cutoff,
                  double beta, double d_cutoff, float* ow, float* op) noexcept nogil


def one_euro(const double[:, ::1] x, double dt, const double[::1] dts, const Py_ssize_t[::1] slots,
             double[:, ::1] state_x, double[:, ::1] state_dx, unsigned char[::1] primed,
             const double[:, ::1] prm, double[:, ::1] out, double[:, ::1] edx) -> bool:
    """``OneEuro.__call__``: row i of ``x`` is slot ``slots[i]``; ``dts`` (per row) or ``dt``;
    ``prm``: each slot's min_cutoff, beta, d_cutoff.
    False (nothing done: the caller runs the reference) if a slot is out of range.

    Every row reads the state as it was before the call, then the state is written in row order,
    so a slot twice in one batch ends as numpy's fancy assignment leaves it (the last row wins)."""
    cdef Py_ssize_t n = x.shape[1], rows = x.shape[0], i, j, k, cap = state_x.shape[0]
    if slots.shape[0] != rows or out.shape[0] < rows or edx.shape[0] < rows or out.shape[1] != n \
            or edx.shape[1] != n or state_x.shape[1] != n or state_dx.shape[1] != n \
            or state_dx.shape[0] < cap or primed.shape[0] < cap or (dts is not None and dts.shape[0] != rows) \
            or prm.shape[0] < cap or prm.shape[1] != 3:
        raise ValueError("one_euro: shapes do not match")
    for i in range(rows):
        if slots[i] < 0 or slots[i] >= cap:
            return False
    for i in range(rows):
        k = slots[i]
        face_euro(&x[i, 0], &state_x[k, 0], &state_dx[k, 0], primed[k], <int>n, dts[i] if dts is not None else dt,
                  prm[k, 0], prm[k, 1], prm[k, 2], &out[i, 0], &edx[i, 0])
    for i in range(rows):
        k = slots[i]
        for j in range(n):
            state_x[k, j] = out[i, j]
            state_dx[k, j] = edx[i, j]
        primed[k] = 1
    return True


cdef inline double blink_curve(double p) noexcept nogil:
    """layers.blink_curve for one phase."""
    if p < 0.0 or p > 1.0:
        return 0.0
    if p < 0.35:
        return 0.5 - 0.5 * cos(M_PI * clip(p / 0.35, 0.0, 1.0))
    return 0.5 + 0.5 * cos(M_PI * clip((p - 0.35) / 0.65, 0.0, 1.0))


cdef class BlendCore:
    """The blender's per-slot state (its numpy arrays, bound here as memoryviews) and per-batch passes.

    ``bind`` must be called again whenever the node replaces an array (capacity growth, new tables)."""

    cdef double[::1] seen, cap_t, cap_mix, out_t, vis_t, speak_mix, emo_t0, emo_dur
    cdef double[::1] blink_t0, blink_len, blink_next, breath_hz, breath_phase, gaze_next
    cdef double[::1] micro_t0, micro_len, micro_amp, micro_next
    cdef double[:, ::1] cap_w, cap_pose, vis_w, emo_from, emo_to, gaze, gaze_goal, ex, edx, prm, micro
    cdef unsigned char[::1] cap_flag, cap_fresh, vis_flag, primed, articulated, mouth
    cdef int64_t[::1] cap_arrival, micro_idx, stamp
    cdef int64_t gen
    cdef Py_ssize_t capacity, n_micro
    cdef int col_blink_l, col_blink_r, col_jaw, col_nose_l, col_nose_r, col_brow, pose_pitch
    cdef int col_out_l, col_in_r, col_in_l, col_out_r, col_up_l, col_up_r, col_down_l, col_down_r
    cdef int pose_lyaw, pose_lpitch, pose_ryaw, pose_rpitch
    # per batch
    cdef double[::1] dt, cap, spk, ssx
    cdef unsigned char[::1] act, spkg
    cdef Py_ssize_t[::1] sel
    cdef public object dt_array   # numpy view of ``dt`` (the caller computes the gaze step's exp with numpy)
    cdef public object sel_array  # numpy view of ``sel``: the slots ingest() selected for frames

    def __init__(self, dict col, dict pose_col) -> None:
        self.col_blink_l, self.col_blink_r = col["eyeBlinkLeft"], col["eyeBlinkRight"]
        self.col_jaw, self.col_brow = col["jawOpen"], col["browInnerUp"]
        self.col_nose_l, self.col_nose_r = col["noseSneerLeft"], col["noseSneerRight"]
        self.col_out_l, self.col_in_r = col["eyeLookOutLeft"], col["eyeLookInRight"]
        self.col_in_l, self.col_out_r = col["eyeLookInLeft"], col["eyeLookOutRight"]
        self.col_up_l, self.col_up_r = col["eyeLookUpLeft"], col["eyeLookUpRight"]
        self.col_down_l, self.col_down_r = col["eyeLookDownLeft"], col["eyeLookDownRight"]
        self.pose_pitch = pose_col["headPitch"]
        self.pose_lyaw, self.pose_lpitch = pose_col["leftEyeYaw"], pose_col["leftEyePitch"]
        self.pose_ryaw, self.pose_rpitch = pose_col["rightEyeYaw"], pose_col["rightEyePitch"]
        self.capacity = 0
        self._scratch(64)

    def _scratch(self, Py_ssize_t n) -> None:
        self.dt_array = np.zeros(n)
        self.dt = self.dt_array
        self.cap, self.spk, self.ssx = np.zeros(n), np.zeros(n), np.zeros(n)
        self.act, self.spkg = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
        self.sel_array = np.zeros(n, np.intp)
        self.sel = self.sel_array

    def bind(self, node) -> None:
        """Take the node's state arrays (shared memory: numpy and this see the same values)."""
        cdef Py_ssize_t cap = node.cap_w.shape[0]
        euro = node.euro
        if euro.x.shape[0] < cap or euro.x.shape[1] != N_X:
            raise ValueError("BlendCore.bind: the One Euro state is smaller than the slots")
        for name in ("seen", "cap_t", "cap_mix", "out_t", "vis_t", "speak_mix", "emo_t0", "emo_dur", "blink_t0",
                     "blink_len", "blink_next", "breath_hz", "breath_phase", "gaze_next", "micro_t0", "micro_len",
                     "micro_amp", "micro_next", "cap_flag", "cap_fresh", "vis_flag", "cap_arrival", "micro_idx",
                     "cap_w", "cap_pose", "vis_w", "emo_from", "emo_to", "gaze", "gaze_goal"):
            if getattr(node, name).shape[0] != cap:
                raise ValueError(f"BlendCore.bind: {name} has {getattr(node, name).shape[0]} rows, not {cap}")
        self.seen, self.cap_t, self.cap_mix, self.out_t = node.seen, node.cap_t, node.cap_mix, node.out_t
        self.vis_t, self.speak_mix, self.emo_t0, self.emo_dur = node.vis_t, node.speak_mix, node.emo_t0, node.emo_dur
        self.blink_t0, self.blink_len, self.blink_next = node.blink_t0, node.blink_len, node.blink_next
        self.breath_hz, self.breath_phase, self.gaze_next = node.breath_hz, node.breath_phase, node.gaze_next
        self.micro_t0, self.micro_len = node.micro_t0, node.micro_len
        self.micro_amp, self.micro_next = node.micro_amp, node.micro_next
        self.cap_w, self.cap_pose, self.vis_w = node.cap_w, node.cap_pose, node.vis_w
        self.emo_from, self.emo_to, self.gaze, self.gaze_goal = node.emo_from, node.emo_to, node.gaze, node.gaze_goal
        self.cap_flag, self.cap_fresh = node.cap_flag.view(np.uint8), node.cap_fresh.view(np.uint8)
        self.vis_flag = node.vis_flag.view(np.uint8)
        self.cap_arrival, self.micro_idx = node.cap_arrival.view(np.int64), node.micro_idx.view(np.int64)
        if euro.prm.shape[0] < cap or euro.prm.shape[1] != 3:
            raise ValueError("BlendCore.bind: the One Euro params are fewer than the slots")
        self.ex, self.edx, self.primed, self.prm = euro.x, euro.dx, euro.primed.view(np.uint8), euro.prm
        self.micro = np.ascontiguousarray(node.micro, dtype=np.float64).reshape(-1, N_W)
        self.n_micro = self.micro.shape[0]
        self.articulated = np.ascontiguousarray(node.articulated, dtype=bool).view(np.uint8)
        self.mouth = np.ascontiguousarray(node.mouth, dtype=bool).view(np.uint8)
        if self.articulated.shape[0] != N_W or self.mouth.shape[0] != N_W:
            raise ValueError("BlendCore.bind: the viseme channel masks must have 52 entries")
        self.stamp = np.zeros(cap, np.int64)
        self.gen = 0
        self.capacity = cap

    cdef int _unique(self, const Py_ssize_t[::1] slots) except -2:
        """1 if every slot is in range and none twice, else 0 (the caller then runs the reference)."""
        cdef Py_ssize_t i, k, n = slots.shape[0]
        self.gen += 1
        for i in range(n):
            k = slots[i]
            if k < 0 or k >= self.capacity:
                raise IndexError(f"BlendCore: slot {k} out of range (capacity {self.capacity}): bind() missed")
            if self.stamp[k] == self.gen:
                return 0
            self.stamp[k] = self.gen
        if self.dt.shape[0] < n:
            self._scratch(max(n, 2 * self.dt.shape[0]))
        return 1

    def unique(self, const Py_ssize_t[::1] slots) -> bool:
        """True if no slot is in the batch twice (the fused passes assume it, as rows update state)."""
        return self._unique(slots) == 1

    cdef void _check_bound(self) except *:
        if self.capacity <= 0:
            raise RuntimeError("BlendCore: bind() first")

    def ingest(self, const Py_ssize_t[::1] slots, const float[:, ::1] w, const float[:, ::1] pose, list active,
               const int64_t[::1] arrival, double t, bint frames, double half) -> int:
        """A capture batch into the slots (``Blender.process``, capture pad): weights, pose (None:
        zeros), active flags (None: all), arrival times (None: none). With ``frames``, selects the
        active slots whose last frame is at least ``half`` old into ``sel_array``; returns how many
        (-1: a flag is not a bool, or a slot is in the batch twice: nothing was changed, the caller
        runs the reference)."""
        cdef Py_ssize_t n = slots.shape[0], i, j, k, m = 0
        cdef bint a
        self._check_bound()
        if w.shape[0] != n or w.shape[1] != N_W or (pose is not None and (pose.shape[0] != n or pose.shape[1] != N_P)) \
                or (arrival is not None and arrival.shape[0] != n) or (active is not None and len(active) != n):
            raise ValueError("BlendCore.ingest: shapes do not match")
        if active is not None:
            for i in range(n):
                if active[i] is not True and active[i] is not False:
                    return -1
        if not self._unique(slots):
            return -1
        cdef double* cap_w = &self.cap_w[0, 0]
        cdef double* cap_pose = &self.cap_pose[0, 0]
        cdef unsigned char* cap_flag = &self.cap_flag[0]
        cdef unsigned char* cap_fresh = &self.cap_fresh[0]
        cdef double* cap_t = &self.cap_t[0]
        cdef double* out_t = &self.out_t[0]
        cdef int64_t* cap_arrival = &self.cap_arrival[0]
        cdef Py_ssize_t* sel = &self.sel[0]
        cdef const float* wp
        for i in range(n):
            k = slots[i]
            wp = NULL
            if pose is not None:
                wp = &pose[i, 0]
            face_ingest(&w[i, 0], wp, cap_w + k * N_W, cap_pose + k * N_P)
            a = True if active is None else active[i] is True
            cap_flag[k] = a
            cap_t[k] = t
            if arrival is not None:
                cap_arrival[k] = arrival[i]
                if a:
                    cap_fresh[k] = 1
            if frames and a and t - out_t[k] >= half:
                sel[m] = k
                m += 1
        return m

    def prepare(self, const Py_ssize_t[::1] slots, double t, double period, bint follow, double cap_timeout,
                double vis_timeout, double cap_fade_ms, double speech_fade_ms) -> int:
        """First pass of a frame batch (``Blender._emit_frames`` up to the layers): each row's step,
        the capture / speech flags and cross-fades, the emotion easing; returns the flags above
        (-1: a slot twice, the caller runs the reference, nothing was changed)."""
        cdef Py_ssize_t n = slots.shape[0], i, k
        cdef int flags = 0
        cdef double dt, last, step, x, dur, c, s
        cdef bint a, sp
        self._check_bound()
        if not self._unique(slots):
            return -1
        cdef double* out_t = &self.out_t[0]
        cdef double* cap_t = &self.cap_t[0]
        cdef double* vis_t = &self.vis_t[0]
        cdef double* cap_mix = &self.cap_mix[0]
        cdef double* speak_mix = &self.speak_mix[0]
        cdef double* emo_dur = &self.emo_dur[0]
        cdef double* emo_t0 = &self.emo_t0[0]
        cdef double* blink_next = &self.blink_next[0]
        cdef double* gaze_next = &self.gaze_next[0]
        cdef double* micro_next = &self.micro_next[0]
        cdef unsigned char* cap_flag = &self.cap_flag[0]
        cdef unsigned char* vis_flag = &self.vis_flag[0]
        cdef double* dts = &self.dt[0]
        cdef double* caps = &self.cap[0]
        cdef double* spks = &self.spk[0]
        cdef double* ssx = &self.ssx[0]
        cdef unsigned char* act = &self.act[0]
        cdef unsigned char* spkg = &self.spkg[0]
        for i in range(n):
            k = slots[i]
            if follow:
                last = out_t[k]
                dt = period if last == NEVER else clip(t - last, 1e-3, 4 * period)
            else:
                dt = period
            dts[i] = dt
            out_t[k] = t
            a = cap_flag[k] and (t - cap_t[k] <= cap_timeout)
            sp = vis_flag[k] and (t - vis_t[k] <= vis_timeout)
            act[i] = a
            spkg[i] = sp
            step = 1.0 if cap_fade_ms <= 0 else dt * 1000.0 / cap_fade_ms
            cap_mix[k] = clip(cap_mix[k] + (step if a else -step), 0.0, 1.0)
            step = 1.0 if speech_fade_ms <= 0 else dt * 1000.0 / speech_fade_ms
            speak_mix[k] = clip(speak_mix[k] + (step if sp else -step), 0.0, 1.0)
            c = smoothstep(cap_mix[k])
            s = smoothstep(speak_mix[k])
            caps[i] = c
            spks[i] = s
            if not c >= 1.0:
                flags |= F_NEED_IDLE
            if s > 0.0:
                flags |= F_TALKING
            dur = emo_dur[k]
            x = (t - emo_t0[k]) / (dur if dur > 1e-9 else 1e-9) if dur > 0 else 1.0
            if not x >= 1.0:
                flags |= F_EMO_BLEND
            ssx[i] = smoothstep(x)
            if blink_next[k] <= t:
                flags |= F_BLINK_DUE
            if gaze_next[k] <= t:
                flags |= F_GAZE_DUE
            if micro_next[k] <= t:
                flags |= F_MICRO_DUE
        return flags

    def blend(self, const Py_ssize_t[::1] slots, double t, int flags, double breath_amount, const double[::1] gaze_step,
              float[:, ::1] out_w, float[:, ::1] out_pose, int64_t[::1] arrival) -> tuple:
        """Second pass, after ``prepare`` and the random schedules: every layer of ``Blender.frame``
        and the One Euro filter, row by row; fills weights (L, 52), pose (L, 9) and arrival (L,);
        returns the lists of the active and speaking flags. ``gaze_step``: 1 - exp(-dt / tau) per row
        (numpy's exp), needed only with NEED_IDLE."""
        cdef Py_ssize_t n = slots.shape[0], i, j, k, idx = 0, n_micro = self.n_micro
        cdef bint idle = flags & F_NEED_IDLE, ease = flags & F_EMO_BLEND, talking = flags & F_TALKING
        cdef double c, s, dt, lid, b, up, g0, g1, left, right, upv, down, phase, sn, bump = 0.0, e, ss
        cdef double w[N_X]
        cdef double iw[N_W]
        cdef double ip[N_P]
        cdef double pitch_gain = 0.01 * breath_amount
        self._check_bound()
        if out_w.shape[0] != n or out_w.shape[1] != N_W or out_pose.shape[0] != n or out_pose.shape[1] != N_P \
                or arrival.shape[0] != n or self.dt.shape[0] < n or (idle and gaze_step.shape[0] < n):
            raise ValueError("BlendCore.blend: shapes do not match")
        cdef int64_t* micro_idx = &self.micro_idx[0]
        for i in range(n):
            if slots[i] < 0 or slots[i] >= self.capacity:
                raise IndexError(f"BlendCore: slot {slots[i]} out of range (capacity {self.capacity})")
            if n_micro and (micro_idx[slots[i]] < 0 or micro_idx[slots[i]] >= n_micro):
                raise IndexError(f"index {micro_idx[slots[i]]} is out of bounds for axis 0 with size {n_micro}")
        cdef double* cap_w = &self.cap_w[0, 0]
        cdef double* cap_pose = &self.cap_pose[0, 0]
        cdef double* vis_w = &self.vis_w[0, 0]
        cdef double* emo_from = &self.emo_from[0, 0]
        cdef double* emo_to = &self.emo_to[0, 0]
        cdef double* gaze = &self.gaze[0, 0]
        cdef double* gaze_goal = &self.gaze_goal[0, 0]
        cdef double* ex = &self.ex[0, 0]
        cdef double* edx = &self.edx[0, 0]
        cdef double* prm = &self.prm[0, 0]
        cdef unsigned char* primed = &self.primed[0]
        cdef double* micro = &self.micro[0, 0] if n_micro else NULL
        cdef double* blink_t0 = &self.blink_t0[0]
        cdef double* blink_len = &self.blink_len[0]
        cdef double* breath_hz = &self.breath_hz[0]
        cdef double* breath_phase = &self.breath_phase[0]
        cdef double* micro_t0 = &self.micro_t0[0]
        cdef double* micro_len = &self.micro_len[0]
        cdef double* micro_amp = &self.micro_amp[0]
        cdef unsigned char* cap_fresh = &self.cap_fresh[0]
        cdef int64_t* cap_arrival = &self.cap_arrival[0]
        cdef unsigned char* articulated = &self.articulated[0]
        cdef unsigned char* mouth = &self.mouth[0]
        cdef double* caps = &self.cap[0]
        cdef double* spks = &self.spk[0]
        cdef double* dts = &self.dt[0]
        cdef double* ssx = &self.ssx[0]
        cdef unsigned char* act = &self.act[0]
        cdef unsigned char* spkg = &self.spkg[0]
        cdef object flag
        cdef list active, speaking
        cdef double* cw
        cdef double* mrow
        active, speaking = PyList_New(n), PyList_New(n)
        for i in range(n):
            k = slots[i]
            c, s, dt = caps[i], spks[i], dts[i]
            # 1. base: capture, cross-faded with idle motion
            cw = cap_w + k * N_W
            if idle:
                for j in range(N_W):
                    iw[j] = 0.0
                for j in range(N_P):
                    ip[j] = 0.0
                lid = blink_curve((t - blink_t0[k]) / blink_len[k])
                iw[self.col_blink_l] = lid
                iw[self.col_blink_r] = lid
                b = sin(2 * M_PI * breath_hz[k] * t + breath_phase[k])
                up = breath_amount * (0.5 + 0.5 * b)
                iw[self.col_jaw] += 0.015 * up
                iw[self.col_nose_l] += 0.02 * up
                iw[self.col_nose_r] += 0.02 * up
                iw[self.col_brow] += 0.012 * up
                ip[self.pose_pitch] = pitch_gain * b
                g0 = gaze[2 * k] + (gaze_goal[2 * k] - gaze[2 * k]) * gaze_step[i]
                g1 = gaze[2 * k + 1] + (gaze_goal[2 * k + 1] - gaze[2 * k + 1]) * gaze_step[i]
                gaze[2 * k], gaze[2 * k + 1] = g0, g1
                left, right = maximum0(g0) / 0.6, maximum0(-g0) / 0.6
                upv, down = maximum0(g1) / 0.6, maximum0(-g1) / 0.6
                iw[self.col_out_l] += left
                iw[self.col_in_r] += left
                iw[self.col_in_l] += right
                iw[self.col_out_r] += right
                iw[self.col_up_l] += upv
                iw[self.col_up_r] += upv
                iw[self.col_down_l] += down
                iw[self.col_down_r] += down
                ip[self.pose_lyaw], ip[self.pose_ryaw] = g0, g0
                ip[self.pose_lpitch], ip[self.pose_rpitch] = g1, g1
                for j in range(N_W):
                    w[j] = c * cw[j] + (1.0 - c) * clip(iw[j], 0.0, 1.0)
                for j in range(N_P):
                    w[N_W + j] = c * cap_pose[k * N_P + j] + (1.0 - c) * ip[j]
            # 3. emotion and micro-expressions on top, 4. the One Euro filter, 2. the visemes' mouth after it
            mrow = NULL
            if n_micro:
                phase = clip((t - micro_t0[k]) / micro_len[k], 0.0, 1.0)
                sn = SIN_PI if phase == 1.0 else sin(M_PI * phase)
                bump = sn * sn * micro_amp[k]
                mrow = micro + micro_idx[k] * N_W
            face_row(w if idle else NULL, cw, cap_pose + k * N_P, emo_from + k * N_W, emo_to + k * N_W, ease, ssx[i], mrow, bump, articulated, mouth, talking,
                     s, vis_w + k * N_W, ex + k * N_X, edx + k * N_X, primed + k, dt, prm[3 * k], prm[3 * k + 1], prm[3 * k + 2],
                     &out_w[i, 0], &out_pose[i, 0])
            arrival[i] = cap_arrival[k] if cap_fresh[k] else 0
            cap_fresh[k] = 0
            flag = True if act[i] else False
            Py_INCREF(flag)
            PyList_SET_ITEM(active, i, flag)
            flag = True if spkg[i] else False
            Py_INCREF(flag)
            PyList_SET_ITEM(speaking, i, flag)
        return active, speaking


def slots_of(dict slot_of, list sessions, Py_ssize_t[::1] out) -> bool:
    """``out[i] = slot_of[sessions[i]]`` for a batch of known sessions; False as soon as one is not
    known (or not hashable): the caller then takes the slow path that adds it. The per-row cost of a
    batch is hashing its (freshly decoded) session ids, once each."""
    cdef Py_ssize_t i, n = len(sessions)
    cdef PyObject* v
    if out.shape[0] < n:
        raise ValueError("slots_of: out is too short")
    for i in range(n):
        v = PyDict_GetItem(slot_of, <object>PyList_GET_ITEM(sessions, i))
        if v is NULL or not PyLong_CheckExact(<object>v):
            return False
        out[i] = PyLong_AsSsize_t(<object>v)
    return True


def hinted_slots(const Py_ssize_t[::1] known, const int32_t[::1] hint, const unsigned char[:, ::1] keys,
                 const unsigned char[:, ::1] ids, Py_ssize_t[::1] out) -> int:
    """``runtime.SessionSlots.lookup_ids``'s guess, row by row: ``out[i] = known[hint[i]]`` where
    that slot's key is the row's id (the same width: the caller makes it so), else -1. Returns how
    many rows missed (they take the dict)."""
    cdef Py_ssize_t i, s, h, n = hint.shape[0], nk = known.shape[0], cap = keys.shape[0], w = keys.shape[1]
    cdef Py_ssize_t misses = 0
    if ids.shape[0] != n or ids.shape[1] != w or out.shape[0] < n:
        raise ValueError("hinted_slots: shapes do not match")
    for i in range(n):
        h = hint[i]
        s = known[h] if 0 <= h < nk else -1
        if 0 <= s < cap and (w == 0 or memcmp(&keys[s, 0], &ids[i, 0], w) == 0):
            out[i] = s
        else:
            out[i] = -1
            misses += 1
    return misses


def lod_step(const Py_ssize_t[::1] slots, int64_t[::1] count, int64_t[::1] last_pts, int64_t pts,
             const int64_t[::1] level, const int64_t[::1] every, unsigned char[::1] due) -> int:
    """``lod``'s per-row bookkeeping in one pass, as its numpy reference does it:
    ``last_pts[slots] = pts; due = count[slots] % every[level[slots]] == 0; count[slots] += 1``
    (numpy's fancy ``+=``: a slot twice in the batch is counted once). Returns how many rows are
    due, or -1 (nothing changed: the caller runs the reference) if a slot, a level or a count is out
    of the range this handles."""
    cdef Py_ssize_t n = slots.shape[0], cap = count.shape[0], i, k, m = 0
    cdef int64_t lv
    cdef int64_t* old
    if last_pts.shape[0] < cap or level.shape[0] < cap or due.shape[0] < n:
        raise ValueError("lod_step: shapes do not match")
    for i in range(n):
        k = slots[i]
        if k < 0 or k >= cap:
            return -1
        lv = level[k]
        if lv < 0 or lv >= every.shape[0] or every[lv] < 1 or count[k] < 0 or count[k] == INT64_MAX:
            return -1
    old = <int64_t*>malloc(max(n, 1) * sizeof(int64_t))
    if old is NULL:
        raise MemoryError()
    for i in range(n):
        old[i] = count[slots[i]]
    for i in range(n):
        k = slots[i]
        last_pts[k] = pts
        due[i] = old[i] % every[level[k]] == 0
        m += due[i]
        count[k] = old[i] + 1
    free(old)
    return m
