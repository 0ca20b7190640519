"""The ``avatar/packet`` encoder's per-row work in C: the compiled twin of ``encoder.py``'s numpy path.

``Encoder.encode_batch`` (``encoder.py``) validates the batch, finds the slots (``lookup_slots``)
and hands the rows to ``encode_rows``, which quantizes each row, decides keyframe or delta, writes
the packet's bytes sequentially (msgpack framing and bit stream, ``docs/wire-format.md``) and
updates the session's state in the encoder's own slot arrays, in place. The numpy code in
``encoder.py`` and ``codec.py`` stays the reference: the tests assert byte-identical packets and
identical state. Each step below names the reference line it mirrors.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*) except NULL


cdef extern from *:
    """
    #include <math.h>
    #if defined(__x86_64__) || defined(_M_X64)
    #include <emmintrin.h>
    /* cvtsd2si: the current rounding mode (half to even, as rint and np.rint), one instruction */
    static inline long long avatar_round_even(double v) { return _mm_cvtsd_si64(_mm_set_sd(v)); }
    #else
    static inline long long avatar_round_even(double v) { return (long long)rint(v); }
    #endif
    """
    long long avatar_round_even(double) nogil
    int __builtin_clzll(unsigned long long) nogil
    uint32_t __builtin_bswap32(uint32_t) nogil


cdef enum:
    SEQ_MASK = 0xFFFF  # codec.SEQ_MOD - 1
    POSE_COLUMNS = 9  # codec.POSE_COLUMNS
    VERSION = 2  # codec.VERSION
cdef int64_t MAX_PTS_STEP = <int64_t>1 << 31  # codec.MAX_PTS_STEP


# --- the bit writer: MSB first, 32 bits stored at a time ----------------------------------------
ctypedef struct Writer:
    unsigned char* p  # the next byte to write
    uint64_t acc  # pending bits, in the low ``n`` bits (the bits above are stale)
    int n  # pending bits (< 32 between calls)


cdef inline void w_init(Writer* w, unsigned char* at) noexcept nogil:
    w.p = at
    w.acc = 0
    w.n = 0


cdef inline int64_t w_bits(const Writer* w, const unsigned char* start) noexcept nogil:
    """Bits written since ``start``."""
    return 8 * (w.p - start) + w.n


cdef inline void put(Writer* w, uint64_t v, int n) noexcept nogil:
    """n <= 32 bits of v (v < 2**n)."""
    cdef uint32_t word
    w.acc = (w.acc << n) | v
    w.n += n
    if w.n >= 32:
        w.n -= 32
        word = __builtin_bswap32(<uint32_t>(w.acc >> w.n))
        memcpy(w.p, &word, 4)
        w.p += 4


cdef inline void flush(Writer* w) noexcept nogil:
    """The pending bits, then zero bits to the end of the byte."""
    while w.n >= 8:
        w.n -= 8
        w.p[0] = <unsigned char>(w.acc >> w.n)
        w.p += 1
    if w.n:
        w.p[0] = <unsigned char>(w.acc << (8 - w.n))
        w.p += 1
        w.n = 0


cdef inline int bit_length(uint64_t x) noexcept nogil:
    return 0 if x == 0 else 64 - __builtin_clzll(x)


cdef inline void eg(Writer* w, uint64_t v, int k) noexcept nogil:
    """codec._eg: Exp-Golomb of order k, one field of 2 * bit_length(v + 2**k) - 1 - k bits."""
    cdef uint64_t x = v + ((<uint64_t>1) << k)
    cdef int nb = bit_length(x)
    cdef int width = 2 * nb - 1 - k
    if width <= 32:
        put(w, x, width)
    else:
        eg_long(w, x, nb, width - nb)


cdef void eg_long(Writer* w, uint64_t x, int nb, int zeros) noexcept nogil:
    while zeros > 32:
        put(w, 0, 32)
        zeros -= 32
    put(w, 0, zeros)
    if nb > 32:
        put(w, x >> 32, nb - 32)
        put(w, x & ((<uint64_t>1 << 32) - 1), 32)
    else:
        put(w, x, nb)


cdef inline uint64_t zz(int64_t r) noexcept nogil:
    """codec._zigzag."""
    return <uint64_t>(2 * r) if r >= 0 else <uint64_t>(-2 * r - 1)


# --- quantization (codec.quantize: nan_to_num, clip, rint half-even) -----------------------------
cdef inline int64_t quant(double x, double lo, double hi, double nan_value, double scale) noexcept nogil:
    x = nan_value if x != x else x
    x = lo if x < lo else x  # clip also turns -inf into lo and +inf into hi, as nan_to_num does
    x = hi if x > hi else x
    return avatar_round_even((x - lo) * scale)  # half to even, as np.rint (and no a * b + c to fuse)


# --- a value section (codec.predict + codec.section_fields) ---------------------------------------
ctypedef struct Scratch:
    int64_t* floor  # the FLOOR list's residuals, in column order
    int64_t* quiet  # the QUIET list's residuals
    unsigned char* moving  # the MOVING columns' codes, written as the columns are classified


cdef void section(Writer* w, const int64_t* q, const int64_t* ref, const int64_t* prev, Py_ssize_t m, int bits,
                  bint motion, bint wide, Scratch* sc) noexcept nogil:
    """The columns' codes: FLOOR list, QUIET list, MOVING columns (``prev`` is used only with motion).

    One pass over the columns: MOVING codes go straight to a second writer, the lists' residuals
    are kept; then the lists are written and the MOVING bits appended."""
    cdef int64_t top = (1 << bits) - 1, r, mo, p, d, a
    cdef int wide_k = bits - 4 if bits > 4 else 0, k
    cdef Py_ssize_t i, n_floor = 0, n_quiet = 0
    cdef bint any_floor = False, any_quiet = False
    cdef Writer mv
    w_init(&mv, sc.moving)
    for i in range(m):
        r = ref[i]
        mo = r - prev[i] if motion else 0
        p = r + ((3 * mo + 2) >> 2)  # floor((3m + 2) / 4)
        if p < 0:
            p = 0
        elif p > top:
            p = top
        d = q[i] - p
        if p == 0:
            sc.floor[n_floor] = d
            n_floor += 1
            any_floor |= d != 0
        elif wide:
            moving_code(&mv, zz(d), wide_k)
        elif mo == 0:
            sc.quiet[n_quiet] = d
            n_quiet += 1
            any_quiet |= d != 0
        else:
            a = mo if mo > 0 else -mo
            k = bit_length(<uint64_t>a) - 2
            moving_code(&mv, zz(d), k if k > 0 else 0)
    if n_floor:
        zero_list(w, sc.floor, n_floor, any_floor, 1)
    if n_quiet:
        zero_list(w, sc.quiet, n_quiet, any_quiet, 0)
    append(w, &mv, sc.moving)


cdef inline void moving_code(Writer* w, uint64_t z, int k) noexcept nogil:
    """codec._moving_code: Exp-Golomb k; with k = 0, z < 3 in 2 bits, else 11 and Exp-Golomb 0 of z - 3."""
    cdef uint64_t x
    cdef int width
    if k:
        eg(w, z, k)
    elif z < 3:
        put(w, z, 2)
    else:
        x = z - 2
        width = 2 * bit_length(x) - 1
        if width <= 30:
            put(w, ((<uint64_t>3) << width) | x, width + 2)
        else:
            put(w, 3, 2)
            eg(w, z - 3, 0)


cdef inline void zero_list(Writer* w, const int64_t* res, Py_ssize_t n, bint any, int run_k) noexcept nogil:
    """A FLOOR or QUIET list of n residuals: a flag, then (zero run, value) per nonzero, then the run to the end."""
    put(w, 1 if any else 0, 1)
    if not any:
        return
    cdef Py_ssize_t j, last = -1
    for j in range(n):
        if res[j] != 0:
            eg(w, <uint64_t>(j - last - 1), run_k)
            eg(w, zz(res[j]) - 1, 1)
            last = j
    if n - 1 - last > 0:
        eg(w, <uint64_t>(n - 1 - last), run_k)


cdef inline void append(Writer* w, const Writer* src, const unsigned char* start) noexcept nogil:
    """The bits ``src`` wrote from ``start`` (its whole words, then its pending bits), onto ``w``."""
    cdef const unsigned char* b = start
    cdef uint32_t word
    while b < src.p:  # src stores whole 32-bit words
        memcpy(&word, b, 4)
        put(w, __builtin_bswap32(word), 32)
        b += 4
    if src.n:
        put(w, src.acc & (((<uint64_t>1) << src.n) - 1), src.n)


# --- msgpack framing --------------------------------------------------------------------------
cdef inline unsigned char* be(unsigned char* p, uint64_t v, int nbytes) noexcept nogil:
    cdef int i
    for i in range(nbytes):
        p[i] = <unsigned char>(v >> (8 * (nbytes - 1 - i)))
    return p + nbytes


cdef inline unsigned char* pack_int(unsigned char* p, int64_t v) noexcept nogil:
    """A msgpack int in its smallest form, as msgpack.Packer writes it."""
    if v >= 0:
        if v < 128:
            p[0] = <unsigned char>v
            return p + 1
        if v < 256:
            p[0] = 0xCC
            return be(p + 1, <uint64_t>v, 1)
        if v < 65536:
            p[0] = 0xCD
            return be(p + 1, <uint64_t>v, 2)
        if v < (<int64_t>1 << 32):
            p[0] = 0xCE
            return be(p + 1, <uint64_t>v, 4)
        p[0] = 0xCF
        return be(p + 1, <uint64_t>v, 8)
    if v >= -32:
        p[0] = <unsigned char>(v & 0xFF)
        return p + 1
    if v >= -128:
        p[0] = 0xD0
        return be(p + 1, <uint64_t>v, 1)
    if v >= -32768:
        p[0] = 0xD1
        return be(p + 1, <uint64_t>v, 2)
    if v >= -(<int64_t>1 << 31):
        p[0] = 0xD2
        return be(p + 1, <uint64_t>v, 4)
    p[0] = 0xD3
    return be(p + 1, <uint64_t>v, 8)


cdef inline int bin_header_size(Py_ssize_t n) noexcept nogil:
    return 2 if n < 256 else (3 if n < 65536 else 5)


cdef inline unsigned char* pack_bin_header(unsigned char* p, Py_ssize_t n) noexcept nogil:
    if n < 256:
        p[0] = 0xC4
        return be(p + 1, <uint64_t>n, 1)
    if n < 65536:
        p[0] = 0xC5
        return be(p + 1, <uint64_t>n, 2)
    p[0] = 0xC6
    return be(p + 1, <uint64_t>n, 4)


cdef inline unsigned char* pack_str_header(unsigned char* p, Py_ssize_t n) noexcept nogil:
    if n < 32:
        p[0] = <unsigned char>(0xA0 | n)
        return p + 1
    if n < 256:
        p[0] = 0xD9
        return be(p + 1, <uint64_t>n, 1)
    if n < 65536:
        p[0] = 0xDA
        return be(p + 1, <uint64_t>n, 2)
    p[0] = 0xDB
    return be(p + 1, <uint64_t>n, 4)


# --- the batch ---------------------------------------------------------------------------------
def lookup_slots(tuple sessions, dict slots, Py_ssize_t max_len, Py_ssize_t n_slots, int64_t[::1] out) -> int:
    """Each session's slot into ``out`` (-1: a new session); returns the number of new sessions, or
    -1 when a session id is not a string of at most ``max_len`` characters, -2 when one appears
    twice: the reference's two checks, in its order, with nothing changed."""
    cdef Py_ssize_t n = len(sessions), i, new = 0
    cdef PyObject* found
    cdef Py_ssize_t slot
    for s in sessions:
        if not isinstance(s, str) or len(s) > max_len:
            return -1
    cdef unsigned char* seen = <unsigned char*>calloc(n_slots + 1, 1)
    if seen == NULL:
        raise MemoryError()
    fresh = None
    try:
        for i in range(n):
            s = sessions[i]
            found = PyDict_GetItem(slots, s)
            if found == NULL:
                if fresh is None:
                    fresh = set()
                elif s in fresh:
                    return -2
                fresh.add(s)
                out[i] = -1
                new += 1
            else:
                slot = <object>found
                if seen[slot]:
                    return -2
                seen[slot] = 1
                out[i] = slot
    finally:
        free(seen)
    return new


def encode_rows(const int64_t[::1] slots, const double[:, ::1] w64, const float[:, ::1] w32,
                const double[:, ::1] pose, int64_t pts_ms, int bits, int pose_bits,
                double lo, double hi, double nan_value, double scale,
                double pose_lo, double pose_hi, double pose_nan, double pose_scale,
                int64_t keyframe_interval, int64_t ref_interval,
                unsigned char[::1] force, unsigned char[::1] has_pose_of, unsigned char[::1] has_prev,
                int64_t[::1] since_key, int64_t[::1] seq_of, int64_t[::1] ref_seq, int64_t[::1] prev_seq,
                int64_t[::1] ref_pts, int64_t[::1] prev_pts,
                int64_t[:, ::1] ref_q, int64_t[:, ::1] prev_q, int64_t[:, ::1] ref_pose, int64_t[:, ::1] prev_pose,
                tuple sessions, object names_packed, object pack_names,
                unsigned char[::1] key_out, int64_t[::1] seq_out, int64_t sid_base=0) -> tuple:
    """Encode every row: ``(packets, keyframes, bytes, names_packed)``, the slot arrays updated in place.

    Weights come as float64 (``w64``) or float32 (``w32``, the other one None), ``pose`` as float64
    or None; each channel's range, NaN value and scale as ``codec.quantize`` computes them; the
    names table as msgpack bytes, or None: ``pack_names()`` makes them (returned for the next call).
    Mirrors ``Encoder._encode_reference``: the same keyframe decision, the same packets, the same
    state afterwards, and the same errors before any state changes.
    """
    cdef Py_ssize_t s_rows = slots.shape[0], m, i, j, slot
    cdef bint has_pose = pose is not None, is32 = w64 is None
    m = w32.shape[1] if is32 else w64.shape[1]
    cdef Py_ssize_t pcols = POSE_COLUMNS if has_pose else 0
    cdef Py_ssize_t body_bytes = (m * bits + pcols * pose_bits + 7) // 8
    cdef const char* utf8
    cdef Py_ssize_t utf8_len
    # Every session id as UTF-8 first (cached in the str): one that has none (a lone surrogate)
    # raises here, before any state changes, as the reference raises before its state updates.
    # Such a session never got a packet, so it is forced to a keyframe in every batch it is in;
    # likewise a names table is packed (or refused) before anything changes.
    for i in range(s_rows):
        PyUnicode_AsUTF8AndSize(sessions[i], &utf8_len)
    if names_packed is None:
        if not s_rows:
            return [], 0, 0, None
        names_packed = pack_names()
    if not isinstance(names_packed, bytes):
        raise TypeError("names_packed must be bytes")
    cdef Py_ssize_t names_len = PyBytes_GET_SIZE(names_packed)
    cdef const char* names_at = PyBytes_AS_STRING(names_packed)
    # scratch: the row's values, residuals, classes, two delta candidates, a keyframe
    cdef Py_ssize_t cols = m + POSE_COLUMNS
    cdef Py_ssize_t delta_cap = 64 + 16 * cols
    cdef Py_ssize_t key_cap = 64 + 5 + 4 * 1024 + names_len + 5 + body_bytes
    cdef int64_t* q = <int64_t*>malloc(3 * cols * sizeof(int64_t))
    cdef unsigned char* buf = <unsigned char*>malloc(3 * delta_cap + key_cap)
    if q == NULL or buf == NULL:
        free(q)
        free(buf)
        raise MemoryError()
    cdef int64_t* qp = q + m
    cdef Scratch sc
    sc.floor, sc.quiet, sc.moving = q + cols, q + 2 * cols, buf + 2 * delta_cap + key_cap
    cdef unsigned char* buf_a = buf
    cdef unsigned char* buf_b = buf + delta_cap
    cdef unsigned char* kbuf = buf + 2 * delta_cap
    cdef unsigned char* p
    cdef Writer wa, wb
    cdef Writer* chosen
    cdef int64_t seq, back, pts_res, expect, since, link, nbytes, total_bytes = 0, n_key = 0
    cdef bint motion, key, ref, wide
    cdef int h
    cdef const double* row64
    cdef const float* row32
    cdef const double* prow
    packets = [None] * s_rows
    try:
        for i in range(s_rows):
            slot = slots[i]
            # quantize the row (codec.quantize)
            if is32:
                row32 = &w32[i, 0]
                for j in range(m):
                    q[j] = quant(<double>row32[j], lo, hi, nan_value, scale)
            else:
                row64 = &w64[i, 0]
                for j in range(m):
                    q[j] = quant(row64[j], lo, hi, nan_value, scale)
            if has_pose:
                prow = &pose[i, 0]
                for j in range(POSE_COLUMNS):
                    qp[j] = quant(prow[j], pose_lo, pose_hi, pose_nan, pose_scale)
            # the keyframe decision (Encoder._encode_reference)
            seq = seq_of[slot]
            back = (seq - ref_seq[slot]) & SEQ_MASK
            motion = has_prev[slot] and back == 1 and ((ref_seq[slot] - prev_seq[slot]) & SEQ_MASK) == 1
            expect = ref_pts[slot] - prev_pts[slot] if motion else 0
            pts_res = pts_ms - ref_pts[slot] - expect
            since = since_key[slot] + 1
            key = (force[slot] or since >= keyframe_interval or (has_pose_of[slot] != 0) != has_pose
                   or pts_res >= MAX_PTS_STEP or pts_res <= -MAX_PTS_STEP or back == 0)
            if key:
                since = 0
            ref = key or (ref_interval != 0 and since % ref_interval == 0)
            if key:
                # msgpack [VERSION, sid, seq, pts, session, names, bits, pose_bits, values]
                utf8 = PyUnicode_AsUTF8AndSize(sessions[i], &utf8_len)
                if utf8_len > 4 * 1024:
                    raise ValueError("session id too long")
                p = kbuf
                p[0] = 0x99
                p[1] = VERSION
                p = pack_int(p + 2, slot + sid_base)
                p = pack_int(p, seq)
                p = pack_int(p, pts_ms)
                p = pack_str_header(p, utf8_len)
                memcpy(p, utf8, utf8_len)
                p += utf8_len
                memcpy(p, names_at, names_len)
                p += names_len
                p = pack_int(p, bits)
                p = pack_int(p, pose_bits if has_pose else 0)
                p = pack_bin_header(p, body_bytes)
                w_init(&wa, p)
                for j in range(m):
                    put(&wa, <uint64_t>q[j], bits)
                for j in range(pcols):
                    put(&wa, <uint64_t>qp[j], pose_bits)
                flush(&wa)
                packets[i] = PyBytes_FromStringAndSize(<char*>kbuf, wa.p - kbuf)
                total_bytes += wa.p - kbuf
                n_key += 1
            else:
                # the delta's bit stream (Encoder._deltas), after room for the bin header
                link = 2 * (back - 1) + (0 if ref else 1)
                w_init(&wa, buf_a + 5)
                eg(&wa, <uint64_t>(slot + sid_base), 0)
                put(&wa, <uint64_t>seq, 16)
                eg(&wa, <uint64_t>link, 0)
                eg(&wa, zz(pts_res), 0)
                if motion:
                    section(&wa, q, &ref_q[slot, 0], &prev_q[slot, 0], m, bits, True, False, &sc)
                    if has_pose:
                        section(&wa, qp, &ref_pose[slot, 0], &prev_pose[slot, 0], POSE_COLUMNS, pose_bits,
                                True, False, &sc)
                    chosen = &wa
                else:  # no motion: the normal and the wide coding, whichever is smaller (normal on a tie)
                    wb = wa
                    wb.p = buf_b + 5 + (wa.p - (buf_a + 5))
                    memcpy(buf_b + 5, buf_a + 5, wa.p - (buf_a + 5))
                    put(&wa, 0, 1)
                    put(&wb, 1, 1)
                    section(&wa, q, &ref_q[slot, 0], &ref_q[slot, 0], m, bits, False, False, &sc)
                    section(&wb, q, &ref_q[slot, 0], &ref_q[slot, 0], m, bits, False, True, &sc)
                    if has_pose:
                        section(&wa, qp, &ref_pose[slot, 0], &ref_pose[slot, 0], POSE_COLUMNS, pose_bits,
                                False, False, &sc)
                        section(&wb, qp, &ref_pose[slot, 0], &ref_pose[slot, 0], POSE_COLUMNS, pose_bits,
                                False, True, &sc)
                    chosen = &wb if w_bits(&wb, buf_b) < w_bits(&wa, buf_a) else &wa
                flush(chosen)
                p = buf_b if chosen == &wb else buf_a
                nbytes = chosen.p - (p + 5)
                h = bin_header_size(nbytes)
                pack_bin_header(p + 5 - h, nbytes)
                packets[i] = PyBytes_FromStringAndSize(<char*>(p + 5 - h), nbytes + h)
                total_bytes += nbytes + h
            key_out[i] = key
            seq_out[i] = seq
            # the session's state
            if ref:
                memcpy(&prev_q[slot, 0], &ref_q[slot, 0], m * sizeof(int64_t))
                memcpy(&ref_q[slot, 0], q, m * sizeof(int64_t))
                prev_seq[slot] = ref_seq[slot]
                ref_seq[slot] = seq
                prev_pts[slot] = ref_pts[slot]
                ref_pts[slot] = pts_ms
                if has_pose:
                    memcpy(&prev_pose[slot, 0], &ref_pose[slot, 0], POSE_COLUMNS * sizeof(int64_t))
                    memcpy(&ref_pose[slot, 0], qp, POSE_COLUMNS * sizeof(int64_t))
                has_prev[slot] = not key
            if key:
                has_pose_of[slot] = has_pose
            since_key[slot] = since
            seq_of[slot] = (seq + 1) & SEQ_MASK
            force[slot] = 0
    finally:
        free(q)
        free(buf)
    return packets, n_key, total_bytes, names_packed
