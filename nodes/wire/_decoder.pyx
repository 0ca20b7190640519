# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled core of ``nodes.wire.decoder``: packet parsing, the bit reader, value sections and the
per-stream reference frames in C, for the same results as the pure-Python reference.

``nodes.wire.decoder.Decoder`` uses it when ``nodes.compiled.load("nodes.wire._decoder")`` returns
it; the reference (``codec.parse_packet``, ``BitReader``, ``read_values``, ``Decoder._decode``) stays
the specification and the tests compare the two on every result: frames, statuses, counts, the
streams' state and the ValueError texts. Python's per-value and per-packet overheads are what the
compiled code removes: a delta is read in one pass over its bytes.

Packets go through a fast C parser for the shapes an encoder writes (a msgpack ``bin`` delta, a
9-element keyframe array of ints, strings and a ``bin``); anything else, valid or not, goes to
``codec.parse_packet``, so a malformed packet raises its ValueError with the reference's text. A
delta's bit stream is always read here, with the reference's checks and texts.
"""
from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport INT64_MAX, INT64_MIN, int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcmp, memcpy, memset

import numpy as np

from nodes.wire.codec import (
    MAX_COLUMNS,
    MAX_EG_ZEROS,
    MAX_SESSION_ID,
    MAX_SLOTS,
    POSE_COLUMNS,
    POSE_RANGE,
    SEQ_MOD,
    TABLE_SIZES,
    VERSION,
    WEIGHT_RANGE,
    dequantize,
    parse_packet,
)

cdef extern from *:
    """
    typedef __int128 avatar_i128;
    static inline int avatar_clz64(unsigned long long x) { return __builtin_clzll(x); }
    static inline unsigned long long avatar_load_be64(const unsigned char *p) {
        unsigned long long v;
        __builtin_memcpy(&v, p, 8);
    #if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        v = __builtin_bswap64(v);
    #endif
        return v;
    }
    """
    ctypedef long long i128 "avatar_i128"  # wide enough that no pts sum overflows (Python ints are unbounded)
    int clz64 "avatar_clz64"(unsigned long long x) nogil
    unsigned long long load_be64 "avatar_load_be64"(const unsigned char *p) nogil

# outcomes, also the values of ``Batch.status`` (decoder.py: DECODED, REFUSED, LATE, MALFORMED)
cdef enum:
    DECODED = 0
    REFUSED = 1
    LATE = 2
    MALFORMED = 3
    NO_STATUS = 4

cdef int c_max_columns = MAX_COLUMNS
cdef int c_max_eg_zeros = MAX_EG_ZEROS
cdef int c_max_session_id = MAX_SESSION_ID
cdef int c_max_slots = MAX_SLOTS
cdef int c_pose_columns = POSE_COLUMNS
cdef int c_seq_mask = SEQ_MOD - 1
cdef int c_version = VERSION
cdef int c_seq_half = SEQ_MOD // 2
_STATUS_TEXT = ("decoded", "refused", "late", "malformed", "")


# --- the bit reader (codec.BitReader) ----------------------------------------------------------
# Reads never raise (so they inline): the first error is kept in ``err`` and the caller raises it
# (``raise_err``) before any check of its own, so the reference's first error is the one reported.
cdef enum:
    ERR_CUT = 1
    ERR_EG = 2


cdef struct Reader:
    const uint8_t *d
    Py_ssize_t nbytes  # readable bytes: the stream's, or 8 more zero bytes in a padded copy
    int64_t size  # bits
    int64_t pos
    int err  # 0, ERR_CUT or ERR_EG


cdef inline uint64_t peek64(const Reader *r) noexcept nogil:
    """The 64 bits from ``pos``: at least 57 of the stream's own, zeros past its end."""
    cdef Py_ssize_t i = r.pos >> 3
    cdef uint64_t v = 0
    cdef Py_ssize_t j
    if i + 8 <= r.nbytes:
        v = load_be64(r.d + i)
    else:
        for j in range(i, i + 8):
            v <<= 8
            if j < r.nbytes:
                v |= r.d[j]
    return v << (r.pos & 7)


cdef inline int64_t rd(Reader *r, int width) noexcept nogil:
    """``width`` bits (1..57), MSB first; 0 and ERR_CUT past the end."""
    cdef uint64_t v
    if r.pos + width > r.size:
        if not r.err:
            r.err = ERR_CUT
        return 0
    v = peek64(r) >> (64 - width)
    r.pos += width
    return <int64_t>v


cdef inline int64_t eg(Reader *r, int k) noexcept nogil:
    """One Exp-Golomb code of order k (k <= 16): at most MAX_EG_ZEROS zero bits, then zeros + k + 1
    bits; 0 and an error when the stream ends first or the prefix is too long."""
    cdef uint64_t w = peek64(r)
    cdef int zeros
    cdef int64_t v
    if w == 0 or clz64(w) > c_max_eg_zeros:  # w == 0: no 1 bit in the stream's next 57
        if not r.err:
            r.err = ERR_EG
        return 0
    zeros = clz64(w)
    r.pos += zeros
    v = rd(r, zeros + k + 1)  # >= 2**k when read (its first bit is the 1)
    return v - ((<int64_t>1) << k) if v else 0


cdef int raise_err(const Reader *r) except -1:
    if r.err == ERR_CUT:
        raise ValueError("bit stream is cut short")
    raise ValueError("bit stream: Exp-Golomb code cut short or too long")


cdef int finish(Reader *r) except -1:
    """The stream must end here, padded with zero bits to the end of its byte."""
    cdef int64_t rest = r.size - r.pos
    if r.err:
        raise_err(r)
    if rest >= 8:
        raise ValueError(f"bit stream: {rest // 8} byte(s) after the end")
    if rest and (peek64(r) >> (64 - rest)):
        raise ValueError("bit stream: padding bits must be zero")
    return 0


cdef inline int64_t unzigzag(int64_t z) noexcept nogil:
    if z & 1:
        return -((z + 1) >> 1)
    return z >> 1


# --- per-stream state ----------------------------------------------------------------------------
cdef struct Buf:
    int32_t *q  # n weights, then 9 pose values when pose
    int n
    bint pose
    int cap


cdef int buf_reserve(Buf *b, int size) except -1:
    cdef int32_t *q
    if size > b.cap:
        q = <int32_t *>realloc(b.q, size * sizeof(int32_t))
        if q == NULL:
            raise MemoryError()
        b.q, b.cap = q, size
    return 0


cdef class _Key:
    """A frame shape (names, pose or not): the decompressor's groups; one object per shape, so a
    batch groups rows by identity."""
    cdef object names
    cdef bint pose
    cdef int m
    cdef int64_t epoch  # the batch that last used it, and its group there
    cdef int group


cdef class _St:
    """What the decoder holds for one sid (decoder._Stream): the reference frame R and the one
    before it R', and a scratch frame; an applied REF delta rotates the three."""
    cdef int64_t last_seq
    cdef bint waiting
    cdef object seen_ns
    cdef object session
    cdef object names
    cdef _Key key
    cdef int bits, pose_bits
    cdef int64_t ref_seq, prev_seq
    cdef i128 ref_pts, prev_pts
    cdef Buf ref, prev, cur

    def __cinit__(self):
        self.last_seq = -1
        self.seen_ns = 0
        self.ref_seq = -1
        self.prev_seq = -1

    def __dealloc__(self):
        free(self.ref.q)
        free(self.prev.q)
        free(self.cur.q)


# --- parsed packet -------------------------------------------------------------------------------
cdef struct Head:
    bint keyframe
    int sid
    int seq
    bint ref
    int back
    int64_t pts  # keyframe: absolute; delta: the coded residual
    int m  # keyframe: weight columns
    int bits
    int pose_bits
    const uint8_t *body  # keyframe: the values bin
    Py_ssize_t body_len
    Reader r  # delta: positioned after the header


# msgpack readers for the fast path: 0 means "not this shape" (the reference then decides)
cdef inline bint mp_int(const uint8_t **pp, const uint8_t *end, int64_t *out) noexcept nogil:
    cdef const uint8_t *p = pp[0]
    cdef uint8_t b
    cdef int n
    cdef uint64_t u = 0
    cdef int i
    if p >= end:
        return 0
    b = p[0]
    if b <= 0x7F:
        out[0] = b
        pp[0] = p + 1
        return 1
    if b >= 0xE0:
        out[0] = <int64_t>b - 256
        pp[0] = p + 1
        return 1
    if 0xCC <= b <= 0xCF:
        n = 1 << (b - 0xCC)
    elif 0xD0 <= b <= 0xD3:
        n = 1 << (b - 0xD0)
    else:
        return 0
    if end - p < 1 + n:
        return 0
    for i in range(n):
        u = (u << 8) | p[1 + i]
    if b <= 0xCF:
        if u > <uint64_t>INT64_MAX:
            return 0
        out[0] = <int64_t>u
    elif n == 1:
        out[0] = <int64_t>(<signed char>u)
    elif n == 2:
        out[0] = <int64_t>(<short>u)
    elif n == 4:
        out[0] = <int64_t>(<int>u)
    else:
        out[0] = <int64_t>u
    pp[0] = p + 1 + n
    return 1


cdef inline bint mp_len(const uint8_t **pp, const uint8_t *end, int fix_lo, int fix_hi, int first,
                        Py_ssize_t *out) noexcept nogil:
    """A length-prefixed msgpack header: a fix form (fix_lo..fix_hi) or 8/16/32-bit forms from ``first``
    (first < 0: none 8-bit, as for arrays); the body must fit in the buffer (arrays: at 1 byte an element)."""
    cdef const uint8_t *p = pp[0]
    cdef uint8_t b
    cdef Py_ssize_t n
    cdef int size, i
    if p >= end:
        return 0
    b = p[0]
    if fix_lo <= b <= fix_hi:
        n, size = b - fix_lo, 0
    elif first >= 0 and first <= b <= first + 2:
        size = 1 << (b - first)
    elif first < 0 and (b == 0xDC or b == 0xDD):
        size = 2 if b == 0xDC else 4
    else:
        return 0
    if size:
        if end - p < 1 + size:
            return 0
        n = 0
        for i in range(size):
            n = (n << 8) | p[1 + i]
    p += 1 + size
    if n > end - p:
        return 0
    pp[0] = p
    out[0] = n
    return 1


cdef inline bint mp_str(const uint8_t **pp, const uint8_t *end, const uint8_t **s, Py_ssize_t *n) noexcept nogil:
    if not mp_len(pp, end, 0xA0, 0xBF, 0xD9, n):
        return 0
    s[0] = pp[0]
    pp[0] += n[0]
    return 1


cdef inline bint mp_bin(const uint8_t **pp, const uint8_t *end, const uint8_t **s, Py_ssize_t *n) noexcept nogil:
    if not mp_len(pp, end, 1, 0, 0xC4, n):  # no fix form
        return 0
    s[0] = pp[0]
    pp[0] += n[0]
    return 1


cdef inline bint mp_array(const uint8_t **pp, const uint8_t *end, Py_ssize_t *n) noexcept nogil:
    return mp_len(pp, end, 0x90, 0x9F, -1, n)


cdef object utf8(const uint8_t *s, Py_ssize_t n):
    """The str, or None when the bytes are not UTF-8 (msgpack then fails: the reference says how)."""
    try:
        return PyUnicode_DecodeUTF8(<const char *>s, n, NULL)
    except UnicodeDecodeError:
        return None


# --- dequantization tables: the reference dequantize of every value, so the floats are the same --
cdef float *_wtab[17]
cdef float *_ptab[17]
_tables = []  # keeps the arrays behind the pointers alive


cdef const float *table(int bits, bint pose) except NULL:
    cdef float[::1] view
    cdef float **tabs = &_wtab[0]
    if pose:
        tabs = &_ptab[0]
    if tabs[bits] == NULL:
        lo, hi = POSE_RANGE if pose else WEIGHT_RANGE
        arr = np.ascontiguousarray(dequantize(np.arange(1 << bits, dtype=np.int64), bits, lo, hi), dtype=np.float32)
        _tables.append(arr)
        view = arr
        tabs[bits] = &view[0]
    return tabs[bits]


cdef object _i128_int(i128 v):
    if v >= INT64_MIN and v <= INT64_MAX:
        return <int64_t>v
    return (int(<int64_t>(v >> 64)) << 64) | int(<uint64_t>v)


cdef class _Group:
    """One frame shape's rows of a batch, in C buffers reused from batch to batch."""
    cdef _Key key
    cdef float *w
    cdef float *p
    cdef Py_ssize_t *rows
    cdef Py_ssize_t n, cap

    def __dealloc__(self):
        free(self.w)
        free(self.p)
        free(self.rows)

    cdef int reserve(self, Py_ssize_t rows) except -1:
        cdef Py_ssize_t cap = rows if rows > 16 else 16
        if cap <= self.cap:
            return 0
        w = <float *>realloc(self.w, cap * self.key.m * sizeof(float))
        if w == NULL:
            raise MemoryError()
        self.w = w
        p = <float *>realloc(self.p, cap * 9 * sizeof(float))
        if p == NULL:
            raise MemoryError()
        self.p = p
        r = <Py_ssize_t *>realloc(self.rows, cap * sizeof(Py_ssize_t))
        if r == NULL:
            raise MemoryError()
        self.rows, self.cap = r, cap
        return 0


# --- the decoder -----------------------------------------------------------------------------------
cdef class Core:
    """The state and the work of a compiled ``Decoder``: ``decode`` and ``decode_batch`` as the
    reference's, the counts as C integers (``counts()``), the streams as C buffers (``snapshot()``)."""
    cdef public bint resume_after_loss
    cdef public int64_t last_loss
    cdef int status_code
    cdef int64_t n_packets, n_keyframes, n_decoded, n_gaps, n_lost, n_refused, n_late, n_malformed
    cdef dict streams  # sid -> _St, in the reference's order
    cdef void **slots  # sid -> _St (borrowed from ``streams``)
    cdef dict keys  # (names, pose) -> _Key
    cdef _Key last_key
    cdef object frame_type, batch_type, group_type
    cdef bytes names_raw  # the latest keyframe names array's bytes, and its tuple
    cdef object names_obj
    cdef object keep  # a fallback-parsed packet's body, alive while it is read
    cdef object h_session, h_names
    cdef int64_t *acc  # scratch of read_values
    cdef int32_t *cols
    cdef int32_t *ks
    cdef uint8_t *pad  # a delta's or keyframe's bytes, then 8 zero bytes
    cdef int64_t epoch
    cdef list groups

    def __cinit__(self, bint resume_after_loss=False, frame_type=None, batch_type=None, group_type=None):
        self.slots = <void **>calloc(c_max_slots, sizeof(void *))
        self.acc = <int64_t *>calloc(c_max_columns + 16, sizeof(int64_t))
        self.cols = <int32_t *>calloc(2 * (c_max_columns + 16), sizeof(int32_t))
        self.ks = <int32_t *>calloc(c_max_columns + 16, sizeof(int32_t))
        self.pad = <uint8_t *>calloc(8 * (c_max_columns + c_pose_columns) + 32 + 16, 1)  # max_delta_bytes + 8
        if self.slots == NULL or self.acc == NULL or self.cols == NULL or self.ks == NULL or self.pad == NULL:
            raise MemoryError()
        self.resume_after_loss = resume_after_loss
        self.status_code = NO_STATUS
        self.streams, self.keys, self.groups = {}, {}, []
        self.frame_type, self.batch_type, self.group_type = frame_type, batch_type, group_type

    def __dealloc__(self):
        free(self.slots)
        free(self.acc)
        free(self.cols)
        free(self.ks)
        free(self.pad)

    # --- public -----------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        return _STATUS_TEXT[self.status_code]

    def counts(self) -> dict:
        return {"packets": self.n_packets, "keyframes": self.n_keyframes, "decoded": self.n_decoded,
                "gaps": self.n_gaps, "lost": self.n_lost, "refused": self.n_refused, "late": self.n_late,
                "malformed": self.n_malformed}

    def waiting(self) -> list:
        return [(sid, (<_St>st).session) for sid, st in self.streams.items() if (<_St>st).waiting]

    def forget_idle(self, now_ns, idle_ns) -> int:
        """Drop the state of streams not seen for ``idle_ns``; returns how many."""
        limit = now_ns - idle_ns
        old = [sid for sid, st in self.streams.items() if (<_St>st).seen_ns < limit]
        for sid in old:
            del self.streams[sid]
            self.slots[<int>sid] = NULL
        if len(self.keys) > 2 * len(self.streams) + 16:  # shapes no stream has any more
            live = {id((<_St>st).key) for st in self.streams.values()}
            self.keys = {k: v for k, v in self.keys.items() if id(v) in live}
            self.last_key = None
        return len(old)

    def snapshot(self, stream_type) -> dict:
        """The streams as the reference holds them (``decoder._Stream``), for comparisons."""
        out = {}
        for sid, o in self.streams.items():
            st = <_St>o
            out[sid] = stream_type(
                last_seq=st.last_seq, waiting=st.waiting, seen_ns=st.seen_ns, session=st.session, names=st.names,
                bits=st.bits, pose_bits=st.pose_bits, ref_seq=st.ref_seq, ref_pts=_i128_int(st.ref_pts),
                ref_q=_buf_list(&st.ref, 0), ref_pose=_buf_list(&st.ref, 1), prev_seq=st.prev_seq,
                prev_pts=_i128_int(st.prev_pts), prev_q=_buf_list(&st.prev, 0), prev_pose=_buf_list(&st.prev, 1))
        return out

    def decode(self, packet, now_ns=0):
        """The frame a packet carries, or None if it cannot be applied (loss, late); ValueError if malformed."""
        cdef Head h
        cdef _St st
        cdef const int32_t *q = NULL
        cdef i128 pts = 0
        cdef int outcome
        self.n_packets += 1
        self.last_loss = 0
        self.status_code = MALFORMED
        try:
            self._parse(packet, &h)
            st = self._stream(h.sid)
            outcome = self._apply(&h, st, now_ns, &q, &pts)
        except ValueError:
            self.n_malformed += 1
            raise
        finally:
            self.keep = None
        if outcome != DECODED:
            return None
        self.status_code = DECODED
        return self._frame(&h, st, q, pts)

    def decode_batch(self, packets, now_ns=0):
        """Every packet decoded in order as ``decode`` would, the frames' values written into one
        array per frame shape (``decoder.Batch``)."""
        cdef Py_ssize_t s = len(packets), i, j
        cdef Head h
        cdef _St st
        cdef _Group g
        cdef _Key key
        cdef const int32_t *q = NULL
        cdef const float *wt
        cdef const float *pt
        cdef float *w
        cdef float *p
        cdef i128 pts = 0
        cdef int outcome, m, ngroups = 0
        cdef uint8_t *codes
        cdef Py_buffer view
        status = np.empty(s, dtype=np.uint8)
        PyObject_GetBuffer(status, &view, PyBUF_WRITABLE)  # held until the end: status is ours alone
        codes = <uint8_t *>view.buf
        errors, losses = {}, {}
        self.epoch += 1
        try:
            for i in range(s):
                packet = packets[i]
                self.n_packets += 1
                self.last_loss = 0
                self.status_code = MALFORMED
                try:
                    self._parse(packet, &h)
                    st = self._stream(h.sid)
                    outcome = self._apply(&h, st, now_ns, &q, &pts)
                except ValueError as exc:
                    self.n_malformed += 1
                    self.keep = None
                    codes[i] = MALFORMED
                    errors[i] = str(exc)
                    continue
                self.keep = None
                if self.last_loss:
                    losses[i] = self.last_loss
                codes[i] = outcome
                if outcome != DECODED:
                    continue
                self.status_code = DECODED
                key = st.key
                if key.epoch != self.epoch:  # the batch's first row of this shape: a group
                    key.epoch, key.group = self.epoch, ngroups
                    if ngroups == len(self.groups):
                        self.groups.append(_Group())
                    g = <_Group>self.groups[ngroups]
                    if g.key is not key:
                        if g.key is None or g.key.m != key.m:
                            free(g.w)
                            g.w, g.cap = NULL, 0
                        g.key = key
                    g.n = 0
                    g.reserve(s)
                    ngroups += 1
                else:
                    g = <_Group>self.groups[key.group]
                m = key.m
                g.rows[g.n] = i
                wt = table(st.bits, 0)
                w = g.w + g.n * m
                for j in range(m):
                    w[j] = wt[q[j]]
                if key.pose:
                    pt = table(st.pose_bits, 1)
                    p = g.p + g.n * 9
                    for j in range(9):
                        p[j] = pt[q[m + j]]
                g.n += 1
        finally:
            PyBuffer_Release(&view)
        out = []
        for i in range(ngroups):
            g = <_Group>self.groups[i]
            out.append(self.group_type(g.key.names, _copy_rows(g.rows, g.n), _copy_floats(g.w, g.n, g.key.m),
                                       _copy_floats(g.p, g.n, 9) if g.key.pose else None))
        return self.batch_type(status, losses, errors, out)

    # --- internals --------------------------------------------------------------------------------
    cdef _St _stream(self, int sid):
        cdef void *o = self.slots[sid]
        if o == NULL:
            return _St()
        return <_St>o

    cdef object _frame(self, Head *h, _St st, const int32_t *q, i128 pts):
        cdef int m = st.ref.n  # a delta's too: the frame has its reference's columns
        weights = _floats(q, m, table(st.bits, 0))
        pose = _floats(q + m, 9, table(st.pose_bits, 1)) if st.pose_bits else None
        return self.frame_type(h.sid, h.seq, st.session or "", h.keyframe, _i128_int(pts), st.names, weights, pose,
                               st.bits)

    cdef int _parse(self, object packet, Head *h) except -1:
        """``codec.parse_packet`` into ``h``: the fast path for bytes, else the reference's parse."""
        cdef const uint8_t *d
        cdef const uint8_t *p
        cdef const uint8_t *end
        cdef const uint8_t *s
        cdef const uint8_t *start
        cdef Py_ssize_t n, size, k, length
        cdef int64_t v
        cdef uint8_t b
        if not PyBytes_CheckExact(packet):
            return self._parse_reference(packet, h)
        d = <const uint8_t *>PyBytes_AS_STRING(packet)
        size = PyBytes_GET_SIZE(packet)
        if size == 0:
            return self._parse_reference(packet, h)
        b = d[0]
        if 0xC4 <= b <= 0xC6:  # a delta: a bin, exactly the packet
            p, end = d, d + size
            if not mp_bin(&p, end, &s, &n) or p != end:
                return self._parse_reference(packet, h)
            h.keyframe = 0
            h.r.d, h.r.nbytes, h.r.size, h.r.pos, h.r.err = s, n, 8 * n, 0, 0
            return self._delta_header(h)
        # a keyframe: [version, sid, seq, pts, session, names, bits, pose_bits, values]
        p, end = d, d + size
        if not mp_array(&p, end, &n) or n != 9:
            return self._parse_reference(packet, h)
        if not mp_int(&p, end, &v) or v != c_version:
            return self._parse_reference(packet, h)
        if not mp_int(&p, end, &v) or v < 0 or v >= c_max_slots:
            return self._parse_reference(packet, h)
        h.sid = <int>v
        if not mp_int(&p, end, &v) or v < 0 or v > c_seq_mask:
            return self._parse_reference(packet, h)
        h.seq = <int>v
        if not mp_int(&p, end, &h.pts):
            return self._parse_reference(packet, h)
        if not mp_str(&p, end, &s, &n) or n > 4 * c_max_session_id + 4:
            return self._parse_reference(packet, h)
        session = utf8(s, n)
        if session is None or len(session) > c_max_session_id:
            return self._parse_reference(packet, h)
        if mp_int(&p, end, &v):
            size_obj = TABLE_SIZES.get(v)
            if size_obj is None:
                return self._parse_reference(packet, h)
            names = v
            h.m = size_obj
        else:
            start = p
            if not mp_array(&p, end, &n) or n < 1 or n > c_max_columns:
                return self._parse_reference(packet, h)
            h.m = <int>n
            for k in range(n):
                if not mp_str(&p, end, &s, &length):
                    return self._parse_reference(packet, h)
            names = self._names(start, p, h.m)
            if names is None:
                return self._parse_reference(packet, h)
        if not mp_int(&p, end, &v) or v < 1 or v > 16:
            return self._parse_reference(packet, h)
        h.bits = <int>v
        if not mp_int(&p, end, &v) or v < 0 or v > 16:
            return self._parse_reference(packet, h)
        h.pose_bits = <int>v
        if not mp_bin(&p, end, &h.body, &h.body_len) or p != end:
            return self._parse_reference(packet, h)
        h.keyframe, h.ref, h.back = 1, 1, 0
        self.h_session, self.h_names = session, names
        return 0

    cdef object _names(self, const uint8_t *start, const uint8_t *end, int m):
        """A names array's tuple; the same object as the last keyframe's when its bytes are the same."""
        cdef Py_ssize_t size = end - start, n = 0
        cdef const uint8_t *p = start
        cdef const uint8_t *s = NULL
        cdef int k
        raw = self.names_raw
        if raw is not None and PyBytes_GET_SIZE(raw) == size and memcmp(PyBytes_AS_STRING(raw), start, size) == 0:
            return self.names_obj
        mp_array(&p, end, &n)
        out = []
        for k in range(m):
            mp_str(&p, end, &s, &n)
            name = utf8(s, n)
            if name is None:
                return None
            out.append(name)
        self.names_obj = tuple(out)
        self.names_raw = (<const char *>start)[:size]
        return self.names_obj

    cdef int _delta_header(self, Head *h) except -1:
        cdef int64_t v, link
        h.r.err = 0
        v = eg(&h.r, 0)
        if h.r.err:
            raise_err(&h.r)
        if v >= c_max_slots:
            raise ValueError(f"sid {v} is above {c_max_slots - 1}")
        h.sid = <int>v
        h.seq = <int>rd(&h.r, 16)
        link = eg(&h.r, 0)
        if h.r.err:
            raise_err(&h.r)
        if (link >> 1) + 1 > c_seq_mask:
            raise ValueError(f"back {(link >> 1) + 1} is above {c_seq_mask}")
        h.back = <int>((link >> 1) + 1)
        h.ref = not (link & 1)
        h.pts = unzigzag(eg(&h.r, 0))
        if h.r.err:
            raise_err(&h.r)
        return 0

    cdef int _parse_reference(self, object packet, Head *h) except -1:
        """The reference's parse (its ValueError, or a Packet of a shape the fast path does not take)."""
        cdef const uint8_t *d
        pk = parse_packet(packet)
        h.sid, h.seq, h.ref, h.back = pk.sid, pk.seq, pk.ref, pk.back
        if pk.keyframe:
            h.keyframe, h.pts = 1, pk.pts
            self.h_session, self.h_names = pk.session, pk.names
            h.m = TABLE_SIZES[pk.names] if isinstance(pk.names, int) else len(pk.names)
            h.bits, h.pose_bits = pk.bits, pk.pose_bits
            self.keep = bytes(pk.body)
            h.body, h.body_len = <const uint8_t *>PyBytes_AS_STRING(self.keep), PyBytes_GET_SIZE(self.keep)
            return 0
        h.keyframe, h.pts = 0, pk.pts
        br = pk.body
        self.keep = br.x.to_bytes(br.size // 8, "big")
        d = <const uint8_t *>PyBytes_AS_STRING(self.keep)
        h.r.d, h.r.nbytes, h.r.size, h.r.pos, h.r.err = d, PyBytes_GET_SIZE(self.keep), br.size, br.pos, 0
        return 0

    cdef _Key _key(self, object names, bint pose, int m):
        cdef _Key key = self.last_key
        if key is not None and key.names is names and key.pose == pose:
            return key
        k = (names, pose)
        key = self.keys.get(k)
        if key is None:
            key = _Key()
            key.names, key.pose, key.m, key.epoch = names, pose, m, 0
            self.keys[k] = key
        self.last_key = key
        return key

    cdef int _apply(self, Head *h, _St st, object now_ns, const int32_t **out, i128 *out_pts) except -1:
        """``Decoder._decode``: DECODED (``out``: the frame's values), REFUSED or LATE; ValueError
        before any change of state."""
        cdef int64_t lost = 0
        cdef bint motion, wide
        cdef i128 pts
        cdef int m, total, i, shift
        cdef int64_t need
        cdef Reader r
        cdef Buf tmp
        if st.last_seq >= 0:
            lost = (h.seq - st.last_seq - 1) & c_seq_mask
            if lost >= c_seq_half:  # behind the newest packet: a duplicate or reordered one
                self.n_late += 1
                self.status_code = LATE
                return LATE
        if h.keyframe:
            m = h.m
            need = (<int64_t>m * h.bits + c_pose_columns * h.pose_bits + 7) // 8
            if h.body_len != need:
                raise ValueError(f"keyframe values: {h.body_len} bytes, {m} weights of {h.bits} bits"
                                 + (f" and pose of {h.pose_bits}" if h.pose_bits else "") + f" need {need}")
            shift = (<int64_t>m * h.bits + c_pose_columns * h.pose_bits) & 7
            if shift and h.body[need - 1] & ((1 << (8 - shift)) - 1):
                raise ValueError("keyframe values: padding bits must be zero")
            total = m + (c_pose_columns if h.pose_bits else 0)
            buf_reserve(&st.ref, total)
            memcpy(self.pad, h.body, h.body_len)  # a copy with 8 zero bytes after it: every read is one load
            memset(self.pad + h.body_len, 0, 8)
            r.d, r.nbytes, r.size, r.pos, r.err = self.pad, h.body_len + 8, 8 * h.body_len, 0, 0
            for i in range(m):
                st.ref.q[i] = <int32_t>(peek64(&r) >> (64 - h.bits))
                r.pos += h.bits
            for i in range(m, total):
                st.ref.q[i] = <int32_t>(peek64(&r) >> (64 - h.pose_bits))
                r.pos += h.pose_bits
            st.ref.n, st.ref.pose = m, h.pose_bits > 0
            st.session, st.names, st.bits, st.pose_bits, st.waiting = self.h_session, self.h_names, h.bits, h.pose_bits, 0
            st.key = self._key(self.h_names, h.pose_bits > 0, m)
            st.ref_seq, st.ref_pts, st.prev_seq = h.seq, h.pts, -1
            self._seen(h, st, lost, now_ns, 1)
            self.n_keyframes += 1
            out[0], out_pts[0] = st.ref.q, st.ref_pts
            return DECODED
        if lost and not self.resume_after_loss:
            st.waiting = 1
        if st.waiting or st.ref_seq < 0 or ((h.seq - h.back) & c_seq_mask) != st.ref_seq:
            st.waiting = 1
            self._seen(h, st, lost, now_ns, 0)
            self.n_refused += 1
            self.status_code = REFUSED
            return REFUSED
        motion = h.back == 1 and st.prev_seq >= 0 and ((st.ref_seq - st.prev_seq) & c_seq_mask) == 1
        pts = st.ref_pts
        pts += h.pts
        if motion:
            pts += st.ref_pts - st.prev_pts
        m = st.ref.n
        total = m + (c_pose_columns if st.pose_bits else 0)
        if h.r.size > 8 * (8 * <int64_t>total + 32):
            raise ValueError(f"a delta of {h.r.size // 8} bytes is longer than any for its {m} columns")
        memcpy(self.pad, h.r.d, h.r.nbytes)  # as for keyframes
        memset(self.pad + h.r.nbytes, 0, 8)
        h.r.d = self.pad
        h.r.nbytes += 8
        wide = 0 if motion else rd(&h.r, 1)
        buf_reserve(&st.cur, total)
        self._values(&h.r, st.ref.q, st.prev.q if motion else NULL, m, st.bits, wide, st.cur.q)
        if st.pose_bits:
            self._values(&h.r, st.ref.q + m, st.prev.q + st.prev.n if motion else NULL, c_pose_columns,
                         st.pose_bits, wide, st.cur.q + m)
        finish(&h.r)
        st.cur.n, st.cur.pose = m, st.pose_bits > 0
        out_pts[0] = pts
        if h.ref:
            tmp = st.prev
            st.prev, st.ref, st.cur = st.ref, st.cur, tmp
            st.prev_seq, st.prev_pts, st.ref_seq, st.ref_pts = st.ref_seq, st.ref_pts, h.seq, pts
            out[0] = st.ref.q
        else:
            out[0] = st.cur.q
        self._seen(h, st, lost, now_ns, 1)
        return DECODED

    cdef int _seen(self, Head *h, _St st, int64_t lost, object now_ns, bint decoded) except -1:
        """Commit: the stream is known from now on, its last seq is this packet's."""
        if self.slots[h.sid] == NULL:
            self.streams[h.sid] = st
            self.slots[h.sid] = <void *>st
        st.last_seq = h.seq
        st.seen_ns = now_ns
        if decoded:
            self.n_decoded += 1
        if lost:
            self.last_loss = lost
            self.n_gaps += 1
            self.n_lost += lost
        return 0

    cdef int _values(self, Reader *r, const int32_t *ref, const int32_t *prev, int n, int bits, bint wide,
                     int32_t *out) except -1:
        """``codec.read_values``: one value section of n columns into ``out``."""
        cdef int64_t top = (1 << bits) - 1
        cdef int64_t *q = self.acc
        cdef int32_t *fl = self.cols  # FLOOR columns
        cdef int32_t *ql = self.cols + c_max_columns + 16  # QUIET columns
        cdef int32_t *ks = self.ks  # MOVING columns and their k, as column * 32 + k
        cdef int nf = 0, nq = 0, nm = 0, i, c, k, cnt, bad
        cdef int wide_k = bits - 4 if bits > 4 else 0
        cdef int64_t rv, mo, pr, pos, z, am
        if prev == NULL:  # no motion: every column's is 0
            prev = ref
        for i in range(n):
            rv = ref[i]
            mo = rv - prev[i]
            pr = rv + ((3 * mo + 2) >> 2)  # floor((3m + 2) / 4)
            if pr < 0:
                pr = 0
            elif pr > top:
                pr = top
            q[i] = pr
            if pr == 0:
                fl[nf] = i
                nf += 1
            elif wide:
                ks[nm] = i * 32 + wide_k
                nm += 1
            elif mo == 0:
                ql[nq] = i
                nq += 1
            else:
                am = mo if mo > 0 else -mo
                k = 62 - clz64(<uint64_t>am)  # bit_length(|m|) - 2
                ks[nm] = i * 32 + (k if k > 0 else 0)
                nm += 1
        for c in range(2):  # the FLOOR list, then the QUIET list
            cnt = nf if c == 0 else nq
            if not cnt or not rd(r, 1):
                continue
            pos = 0
            while True:
                pos += eg(r, 1 - c)
                if pos > cnt:
                    if r.err:
                        raise_err(r)
                    raise ValueError("value section: a zero run goes past the end of its list")
                if pos == cnt:
                    break
                i = fl[pos] if c == 0 else ql[pos]
                q[i] += unzigzag(eg(r, 1) + 1)
                pos += 1
                if pos == cnt:
                    break
        for c in range(nm):
            i, k = ks[c] >> 5, ks[c] & 31
            if k:
                z = eg(r, k)
            else:
                z = rd(r, 2)
                if z == 3:
                    z += eg(r, 0)
            q[i] += unzigzag(z)
        if r.err:
            raise_err(r)
        bad = 0
        for i in range(n):
            z = q[i]
            bad |= (z < 0) | (z > top)
            out[i] = <int32_t>z
        if bad:
            raise ValueError(f"value section: a decoded value is outside 0..{top}")
        return 0


cdef object _buf_list(Buf *b, bint pose):
    if pose:
        return [b.q[b.n + i] for i in range(c_pose_columns)] if b.pose else None
    return [b.q[i] for i in range(b.n)]


cdef object _floats(const int32_t *q, int n, const float *tab):
    """A new float32 array of the values ``tab[q[i]]``."""
    cdef Py_buffer view
    cdef float *out
    arr = np.empty(n, dtype=np.float32)
    PyObject_GetBuffer(arr, &view, PyBUF_WRITABLE)
    out = <float *>view.buf
    for i in range(n):
        out[i] = tab[q[i]]
    PyBuffer_Release(&view)
    return arr


cdef object _copied(object arr, const void *src, Py_ssize_t nbytes):
    """``arr`` (new, C-contiguous) with ``nbytes`` copied into it from ``src``."""
    cdef Py_buffer view
    if nbytes:
        PyObject_GetBuffer(arr, &view, PyBUF_WRITABLE)
        memcpy(view.buf, src, nbytes)
        PyBuffer_Release(&view)
    return arr


cdef object _copy_floats(const float *src, Py_ssize_t rows, int cols):
    return _copied(np.empty((rows, cols), dtype=np.float32), src, rows * cols * sizeof(float))


cdef object _copy_rows(const Py_ssize_t *src, Py_ssize_t n):
    return _copied(np.empty(n, dtype=np.intp), src, n * sizeof(Py_ssize_t))
