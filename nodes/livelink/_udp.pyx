# cython: language_level=3
"""Batched UDP receive and Live Link Face parsing, compiled: ``arkit_source``'s per-packet work in C.

The pure-Python reference is ``nodes.arkit_source`` (its ``_drain`` with ``socket.recvmsg``) and
``nodes.livelink.packet`` (``parse_datagram``, ``parse_tails``); this module must agree with them
datagram for datagram (tests/test_udp_batch.py).

``Receiver.drain`` reads what a socket holds with ``recvmmsg`` (``batch`` datagrams per system
call, until EAGAIN or a cap), each datagram with its kernel receive time (``SCM_TIMESTAMPNS``).
A v6 packet whose header (everything before its fixed 261-byte tail) is in the receiver's table
of known devices, and whose tail is valid (count 61, a positive frame rate, finite numbers), is
parsed here into rows of preallocated arrays: slot, frame, the 61 values (native float32) and
the receive time. Every other datagram (a new device, JSON, anything damaged) goes back to
Python as bytes with its source address, at its place in arrival order, so that the reference
parser handles it and says what is wrong exactly as before.

``send_batch`` sends many datagrams with ``sendmmsg``, for load generators.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EINTR, errno
from libc.math cimport isfinite
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset

import os

import numpy as np

cdef extern from "<sys/uio.h>":
    struct iovec:
        void *iov_base
        size_t iov_len

cdef extern from "<time.h>":
    struct timespec:
        long tv_sec
        long tv_nsec

cdef extern from "<netinet/in.h>":
    ctypedef uint32_t socklen_t
    struct in_addr:
        pass
    struct in6_addr:
        pass
    struct sockaddr_in:
        unsigned short sin_family
        unsigned short sin_port
        in_addr sin_addr
    struct sockaddr_in6:
        unsigned short sin6_family
        unsigned short sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id
    uint16_t ntohs(uint16_t)
    uint32_t ntohl(uint32_t)

cdef extern from "<arpa/inet.h>":
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)

cdef extern from "<sys/socket.h>":
    struct sockaddr_storage:
        unsigned short ss_family
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    cmsghdr *CMSG_FIRSTHDR(msghdr *)
    cmsghdr *CMSG_NXTHDR(msghdr *, cmsghdr *)
    unsigned char *CMSG_DATA(cmsghdr *)
    size_t CMSG_SPACE(size_t)
    int recvmmsg(int, mmsghdr *, unsigned int, int, timespec *) nogil
    int sendmmsg(int, mmsghdr *, unsigned int, int) nogil
    int AF_INET, AF_INET6, SOL_SOCKET, SCM_TIMESTAMPNS, MSG_DONTWAIT, MSG_TRUNC

cdef extern from "<errno.h>":
    int EWOULDBLOCK

cdef enum:
    TAIL = 261  # frame, sub-frame, fps numerator, fps denominator, count, 61 float32 (packet.TAIL_BYTES)
    N_VALUES = 61
    MIN_HEADER = 10  # version, two lengths and a device id of at least one byte
    MAX_PACKET = 780  # packet.MAX_PACKET_BYTES: a longer datagram is never a known device's packet
    MAX_JSON = 16384  # packet.MAX_JSON_BYTES
    CTRL = 64  # room for one SCM_TIMESTAMPNS message (CMSG_SPACE(16) is 32)
    ADDR_TEXT = 64
    # A datagram longer than SLOT is cut by the kernel (MSG_TRUNC says how long it was). Beyond
    # MAX_JSON bytes the reference parser looks only at the length and the first byte (it is
    # "oversized" either way), so such a datagram goes back to Python as its first bytes padded
    # with zeros to its real length: the same verdict, the same message.
    SLOT = MAX_JSON + 64
    MAX_SENDMMSG = 1024  # UIO_MAXIOV: the most messages one sendmmsg takes

SLOT_BYTES = SLOT


cdef inline uint32_t _be32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3]


cdef inline float _bef(const uint8_t *p) noexcept nogil:
    cdef uint32_t u = _be32(p)
    cdef float f
    memcpy(&f, &u, 4)
    return f


cdef inline uint64_t _hash(const uint8_t *p, Py_ssize_t n) noexcept nogil:
    """64-bit multiply-xorshift over 8-byte words: headers are 40 to 520 bytes, compared in full on a hit."""
    cdef uint64_t h = 0x9E3779B97F4A7C15ULL ^ (<uint64_t>n * 0xFF51AFD7ED558CCDULL)
    cdef uint64_t w
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        memcpy(&w, p + i, 8)
        h = (h ^ w) * 0xC4CEB9FE1A85EC53ULL
        h ^= h >> 29
        i += 8
    if i < n:
        w = 0
        memcpy(&w, p + i, n - i)
        h = (h ^ w) * 0xC4CEB9FE1A85EC53ULL
    h ^= h >> 32
    return h


cdef object _addr(const void *raw, socklen_t namelen):
    """A sockaddr as Python's socket module gives it: (host, port) or (host, port, flowinfo, scope_id)."""
    cdef char text[ADDR_TEXT]
    cdef const sockaddr_in *a4
    cdef const sockaddr_in6 *a6
    cdef unsigned short family
    if namelen < 2:
        return None
    memcpy(&family, raw, 2)
    if family == AF_INET:
        a4 = <const sockaddr_in *> raw
        inet_ntop(AF_INET, &a4.sin_addr, text, ADDR_TEXT)
        return (text.decode("ascii"), ntohs(a4.sin_port))
    if family == AF_INET6:
        a6 = <const sockaddr_in6 *> raw
        inet_ntop(AF_INET6, &a6.sin6_addr, text, ADDR_TEXT)
        return (text.decode("ascii"), ntohs(a6.sin6_port), ntohl(a6.sin6_flowinfo), a6.sin6_scope_id)
    return None


cdef class Receiver:
    """Reads datagrams in batches and parses known devices' packets; see the module's doc.

    After ``drain``, rows ``0..n-1`` of ``slot``, ``frame``, ``values`` and ``stamp`` describe the
    datagrams in arrival order: ``slot >= 0`` a parsed packet of a known device, ``slot == -1`` one
    handed back (in the list ``drain`` returns). ``stamp`` is the kernel's CLOCK_REALTIME receive
    time in ns, 0 without one (or with a zero seconds field, as the reference treats it).
    """
    cdef int batch
    cdef int cap
    cdef char *buf
    cdef mmsghdr *msgs
    cdef iovec *iovs
    cdef char *ctrl
    cdef sockaddr_storage *names
    # the header table: open addressing, keys are bytes objects kept alive in self.keys
    cdef uint64_t *t_hash
    cdef int32_t *t_slot  # -1 empty, -2 deleted
    cdef const uint8_t **t_key
    cdef int32_t *t_len
    cdef Py_ssize_t t_cap, t_used, t_dead
    cdef dict keys
    cdef readonly object slot, frame, values, stamp
    cdef Py_ssize_t[::1] _slot
    cdef int64_t[::1] _frame
    cdef float[:, ::1] _values
    cdef int64_t[::1] _stamp

    def __cinit__(self, int cap=4096, int batch=256):
        if cap < 1 or batch < 1:
            raise ValueError("cap and batch must be positive")
        self.cap, self.batch = cap, min(batch, cap)
        self.buf = <char *> malloc(<size_t> self.batch * SLOT)
        self.msgs = <mmsghdr *> calloc(self.batch, sizeof(mmsghdr))
        self.iovs = <iovec *> calloc(self.batch, sizeof(iovec))
        self.ctrl = <char *> calloc(self.batch, CTRL)
        self.names = <sockaddr_storage *> calloc(self.batch, sizeof(sockaddr_storage))
        self.t_cap = 0
        if not (self.buf and self.msgs and self.iovs and self.ctrl and self.names):
            raise MemoryError()
        cdef int i
        for i in range(self.batch):
            self.iovs[i].iov_base = self.buf + <size_t> i * SLOT
            self.iovs[i].iov_len = SLOT
            self.msgs[i].msg_hdr.msg_iov = &self.iovs[i]
            self.msgs[i].msg_hdr.msg_iovlen = 1
        self.keys = {}
        self._table(64)
        self.slot = np.zeros(cap, np.intp)
        self.frame = np.zeros(cap, np.int64)
        self.values = np.zeros((cap, N_VALUES), np.float32)
        self.stamp = np.zeros(cap, np.int64)
        self._slot, self._frame, self._values, self._stamp = self.slot, self.frame, self.values, self.stamp

    def __dealloc__(self):
        free(self.buf)
        free(self.msgs)
        free(self.iovs)
        free(self.ctrl)
        free(self.names)
        free(self.t_hash)
        free(self.t_slot)
        free(self.t_key)
        free(self.t_len)

    # --- the known headers -------------------------------------------------------------------
    cdef void _reset(self, int want) noexcept nogil:
        """Ready the first ``want`` message headers for a ``recvmmsg`` (it overwrites their lengths)."""
        cdef int i
        cdef msghdr *m
        for i in range(want):
            m = &self.msgs[i].msg_hdr
            m.msg_name = &self.names[i]
            m.msg_namelen = sizeof(sockaddr_storage)
            m.msg_control = self.ctrl + i * CTRL
            m.msg_controllen = CTRL
            m.msg_flags = 0

    cdef void _table(self, Py_ssize_t cap) except *:
        """A fresh table of ``cap`` entries (a power of two) holding every key in self.keys."""
        free(self.t_hash)
        free(self.t_slot)
        free(self.t_key)
        free(self.t_len)
        self.t_hash = <uint64_t *> malloc(cap * sizeof(uint64_t))
        self.t_slot = <int32_t *> malloc(cap * sizeof(int32_t))
        self.t_key = <const uint8_t **> malloc(cap * sizeof(void *))
        self.t_len = <int32_t *> malloc(cap * sizeof(int32_t))
        if not (self.t_hash and self.t_slot and self.t_key and self.t_len):
            raise MemoryError()
        cdef Py_ssize_t i
        for i in range(cap):
            self.t_slot[i] = -1
        self.t_cap, self.t_used, self.t_dead = cap, 0, 0
        for key, slot in self.keys.values():
            self._put(key, slot)

    cdef void _put(self, bytes key, int slot) except *:
        cdef const uint8_t *p = <const uint8_t *> PyBytes_AS_STRING(key)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(key)
        cdef uint64_t h = _hash(p, n)
        cdef Py_ssize_t i = h & (self.t_cap - 1)
        while self.t_slot[i] >= 0:
            i = (i + 1) & (self.t_cap - 1)
        if self.t_slot[i] == -2:
            self.t_dead -= 1
        self.t_hash[i] = h
        self.t_slot[i] = slot
        self.t_key[i] = p
        self.t_len[i] = <int32_t> n
        self.t_used += 1

    cdef Py_ssize_t _find(self, const uint8_t *p, Py_ssize_t n, uint64_t h) noexcept nogil:
        """The table index of a key, -1 if absent."""
        cdef Py_ssize_t mask = self.t_cap - 1
        cdef Py_ssize_t i = h & mask
        cdef int32_t s
        while True:
            s = self.t_slot[i]
            if s == -1:
                return -1
            if s >= 0 and self.t_hash[i] == h and self.t_len[i] == n and memcmp(self.t_key[i], p, n) == 0:
                return i
            i = (i + 1) & mask

    def add_header(self, bytes header, int slot) -> None:
        """Packets starting with ``header`` (and a 261-byte tail) belong to ``slot`` from now on."""
        if slot < 0:
            raise ValueError("slot must be >= 0")
        self.remove_header(header)
        self.keys[header] = (header, slot)
        if (self.t_used + self.t_dead + 1) * 2 > self.t_cap:
            self._table(max(64, self.t_cap * 2 if (self.t_used + 1) * 4 > self.t_cap else self.t_cap))
        else:
            self._put(header, slot)

    def remove_header(self, bytes header) -> None:
        """Forget a header (its session left)."""
        entry = self.keys.pop(header, None)
        if entry is None:
            return
        cdef const uint8_t *p = <const uint8_t *> PyBytes_AS_STRING(header)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(header)
        cdef Py_ssize_t i = self._find(p, n, _hash(p, n))
        if i >= 0:
            self.t_slot[i] = -2
            self.t_used -= 1
            self.t_dead += 1

    def clear_headers(self) -> None:
        self.keys.clear()
        self._table(64)

    def headers(self) -> dict:
        """header -> slot, as the table holds them (for tests)."""
        return {k: v[1] for k, v in self.keys.items()}

    # --- receiving ---------------------------------------------------------------------------
    def drain(self, int fd, int limit=0):
        """Read up to ``limit`` (default: the receiver's cap) datagrams from non-blocking ``fd``.

        Returns ``(n, err, handed)``: rows 0..n-1 filled (see the class doc), the errno that ended
        the reading (0 for EAGAIN, EINTR or the cap), and ``[(row, data, addr)]`` for the
        datagrams Python must parse itself."""
        if limit <= 0 or limit > self.cap:
            limit = self.cap
        cdef list handed = []
        cdef int n = 0, got, i, want, err = 0
        cdef unsigned int length
        cdef const uint8_t *p
        cdef Py_ssize_t hlen, at
        cdef uint64_t h
        cdef msghdr *m
        cdef cmsghdr *c
        cdef timespec ts
        cdef int64_t stamp
        cdef int32_t count, num, den
        cdef int k
        cdef bint ok
        cdef float v
        cdef Py_ssize_t[::1] slots = self._slot
        cdef int64_t[::1] frames = self._frame
        cdef float[:, ::1] values = self._values
        cdef int64_t[::1] stamps = self._stamp
        while n < limit:
            want = min(self.batch, limit - n)
            self._reset(want)
            with nogil:
                got = recvmmsg(fd, self.msgs, want, MSG_DONTWAIT | MSG_TRUNC, NULL)
            if got < 0:
                if errno != EAGAIN and errno != EWOULDBLOCK and errno != EINTR:
                    err = errno
                break
            for i in range(got):
                m = &self.msgs[i].msg_hdr
                length = self.msgs[i].msg_len
                p = <const uint8_t *> self.iovs[i].iov_base
                stamp = 0
                c = CMSG_FIRSTHDR(m)
                while c != NULL:
                    if c.cmsg_level == SOL_SOCKET and c.cmsg_type == SCM_TIMESTAMPNS:
                        memcpy(&ts, CMSG_DATA(c), sizeof(timespec))
                        if ts.tv_sec != 0:
                            stamp = <int64_t> ts.tv_sec * 1000000000 + ts.tv_nsec
                        break
                    c = CMSG_NXTHDR(m, c)
                stamps[n] = stamp
                ok = False
                if TAIL + MIN_HEADER <= length <= MAX_PACKET and p[0] == 6:
                    hlen = length - TAIL
                    h = _hash(p, hlen)
                    at = self._find(p, hlen, h)
                    if at >= 0:
                        p += hlen
                        num = <int32_t> _be32(p + 8)
                        den = <int32_t> _be32(p + 12)
                        count = p[16]
                        ok = count == N_VALUES and num > 0 and den > 0 and isfinite(_bef(p + 4))
                        if ok:
                            for k in range(N_VALUES):
                                v = _bef(p + 17 + 4 * k)
                                if not isfinite(v):
                                    ok = False
                                    break
                                values[n, k] = v
                        if ok:
                            slots[n] = self.t_slot[at]
                            frames[n] = <int32_t> _be32(p)
                if not ok:
                    slots[n] = -1
                    p = <const uint8_t *> self.iovs[i].iov_base
                    if length <= SLOT:
                        data = PyBytes_FromStringAndSize(<const char *> p, length)
                    else:  # cut by the kernel: see SLOT_BYTES
                        data = PyBytes_FromStringAndSize(NULL, length)
                        memcpy(PyBytes_AS_STRING(data), p, SLOT)
                        memset(PyBytes_AS_STRING(data) + SLOT, 0, length - SLOT)
                    handed.append((n, data, _addr(m.msg_name, m.msg_namelen)))
                n += 1
            if got < want:
                break
        return n, err, handed

    def store(self, Py_ssize_t lo, Py_ssize_t hi, const int64_t[::1] arrival, bint fresh,
              float[:, ::1] weights, float[:, ::1] pose, int64_t[::1] frame, int64_t[::1] arrival_of,
              int64_t[::1] last_ns, uint8_t[::1] active, const uint8_t[::1] backlogged=None) -> tuple:
        """Rows ``lo..hi-1`` (all parsed packets) into the source's per-slot arrays, in order, as
        ``ArkitSource._store_rows`` does: weights clamped to 0..1 (in place here too, so a deferred
        row is read back clamped) and counted; ``fresh``: a row whose slot is active (or has a
        backlog) is deferred, for the caller's backlog; else the latest row of a slot wins.
        ``arrival`` holds each row's arrival (pts clock) by row index.
        Returns ``(clamped, clamped_packets, superseded, deferred rows)``."""
        cdef Py_ssize_t r, s, k
        cdef long clamped = 0, clamped_packets = 0, superseded = 0
        cdef int off
        cdef float v
        cdef list deferred = []
        cdef Py_ssize_t[::1] slots = self._slot
        cdef float[:, ::1] values = self._values
        cdef int64_t[::1] frames = self._frame
        cdef Py_ssize_t n_slots = active.shape[0]
        if lo < 0 or hi > self.cap or lo > hi or arrival.shape[0] < hi:
            raise IndexError("rows out of range")
        if weights.shape[0] < n_slots or pose.shape[0] < n_slots or frame.shape[0] < n_slots \
                or arrival_of.shape[0] < n_slots or last_ns.shape[0] < n_slots \
                or weights.shape[1] != 52 or pose.shape[1] != 9 \
                or (backlogged is not None and backlogged.shape[0] < n_slots):
            raise ValueError("per-slot arrays of mismatched shapes")
        for r in range(lo, hi):
            s = slots[r]
            if s < 0 or s >= n_slots:
                raise IndexError(f"slot {s} out of range")
            off = 0
            for k in range(52):
                v = values[r, k]
                if v < 0.0:
                    values[r, k] = 0.0
                    off += 1
                elif v > 1.0:
                    values[r, k] = 1.0
                    off += 1
            if off:
                clamped += off
                clamped_packets += 1
            if fresh:
                if active[s] or (backlogged is not None and backlogged[s]):
                    deferred.append(r)
                    continue
            elif active[s]:
                superseded += 1
            for k in range(52):
                weights[s, k] = values[r, k]
            for k in range(9):
                pose[s, k] = values[r, 52 + k]
            frame[s] = frames[r]
            arrival_of[s] = arrival[r]
            last_ns[s] = arrival[r]
            active[s] = 1
        return clamped, clamped_packets, superseded, deferred

    def discard(self, int fd, int limit=0) -> tuple:
        """Read and drop up to ``limit`` datagrams with ``recvmmsg`` (the bare cost of receiving, for
        benchmarks); returns ``(datagrams, bytes, errno)``."""
        if limit <= 0:
            limit = self.cap
        cdef int n = 0, got, i, want, err = 0
        cdef long total = 0
        cdef msghdr *m
        while n < limit:
            want = min(self.batch, limit - n)
            self._reset(want)
            with nogil:
                got = recvmmsg(fd, self.msgs, want, MSG_DONTWAIT, NULL)
            if got < 0:
                if errno != EAGAIN and errno != EWOULDBLOCK and errno != EINTR:
                    err = errno
                break
            for i in range(got):
                total += self.msgs[i].msg_len
            n += got
            if got < want:
                break
        return n, total, err


def send_batch(int fd, list packets, Py_ssize_t lo=0, Py_ssize_t hi=-1) -> tuple:
    """Send ``packets[lo:hi]`` (bytes) on a connected UDP socket with ``sendmmsg``, in order.

    A packet the kernel refuses (e.g. ECONNREFUSED from an earlier ICMP error) is counted and
    skipped, as a ``send`` loop catching OSError would; EAGAIN on a non-blocking socket stops.
    Returns ``(sent, errors)``."""
    if hi < 0 or hi > len(packets):
        hi = len(packets)
    if lo < 0:
        lo = 0
    cdef Py_ssize_t total = hi - lo
    if total <= 0:
        return 0, 0
    cdef Py_ssize_t chunk = min(total, MAX_SENDMMSG)
    cdef mmsghdr *msgs = <mmsghdr *> calloc(chunk, sizeof(mmsghdr))
    cdef iovec *iovs = <iovec *> calloc(chunk, sizeof(iovec))
    if msgs == NULL or iovs == NULL:
        free(msgs)
        free(iovs)
        raise MemoryError()
    cdef Py_ssize_t pos = lo, i, want, sent = 0, errors = 0
    cdef int got
    cdef object pkt
    try:
        while pos < hi:
            want = min(chunk, hi - pos)
            for i in range(want):
                pkt = packets[pos + i]
                if not isinstance(pkt, bytes):
                    raise TypeError("packets must be bytes")
                iovs[i].iov_base = PyBytes_AS_STRING(pkt)
                iovs[i].iov_len = PyBytes_GET_SIZE(pkt)
                msgs[i].msg_hdr.msg_iov = &iovs[i]
                msgs[i].msg_hdr.msg_iovlen = 1
            with nogil:
                got = sendmmsg(fd, msgs, <unsigned int> want, 0)
            if got < 0:
                if errno == EINTR:
                    continue
                if errno == EAGAIN or errno == EWOULDBLOCK:
                    break
                errors += 1  # this packet is refused: skip it
                pos += 1
                continue
            sent += got
            pos += got
    finally:
        free(msgs)
        free(iovs)
    return sent, errors


def errno_text(int err) -> str:
    """What Python's socket module would say for an errno (``str(OSError(err, ...))``)."""
    return str(OSError(err, os.strerror(err)))
