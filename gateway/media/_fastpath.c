/* Optional C fast path for the media worker's packet loop (gateway/media/worker.py).
 *
 * It does, for the steady state of a stream only, exactly what RelayStream.from_lan_rtp and
 * RelayStream.from_wan_rtp do in Python: one epoll_wait for the whole worker, then per ready
 * RTP socket one recvfrom, the source IP check (RTP bleed), the fixed-header checks, the RFC
 * 3550 A.3/A.8 reception statistics, srtp_protect / srtp_unprotect through pylibsrtp's own
 * libsrtp (function pointers and session handles handed over from Python: no link to libsrtp
 * here) and one sendto to the latched destination. Counters are kept as deltas that Python
 * folds into StreamCounters when it reads them.
 *
 * Everything else goes back to Python untouched: sockets without an active lane (control,
 * RTCP, streams not yet latched or keyed, IPv6) are returned as (fd, mask) events, and a packet
 * the fast path declines before changing any state (wrong source IP, malformed header, RTCP
 * muxed on an RTP port, an SSRC that may be admitted) is returned as (fd, data, source) for
 * the full Python rules. A lane is active only with SRTP keys (fail closed: it never sends
 * plaintext to the WAN).
 *
 * SSRCs: a lane serves the SSRCs its stream keeps (relay.SsrcGate, at most SSRC_SLOTS) and
 * drops, counted, a new one that may not take a slot; one that may (a free slot, or a kept SSRC
 * silent long enough) goes to Python, which alone admits SSRCs and removes libsrtp streams.
 *
 * libsrtp: the lanes call srtp_protect / srtp_unprotect with libsrtp 2's signature (context,
 * buffer, int *length). libsrtp_version() reads the version of the very library those function
 * pointers live in (dladdr, then dlsym on the already-loaded object), so that the worker can
 * refuse the fast path with another major version instead of calling it with wrong arguments.
 *
 * The GIL is released around the blocking epoll_wait only: a round that finds packets at once
 * keeps it (see Engine_poll), and Python threads and signal handlers are never held up by a
 * worker that waits for packets.
 */
#define _GNU_SOURCE /* pthread_setname_np */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>

typedef int (*srtp_fn)(void *ctx, void *buf, int *len);

/* relay.MAX_DATAGRAM: longer datagrams are Python's to drop. The receive buffer is one byte
 * longer, so that a datagram the kernel cut to fit (no MSG_TRUNC is asked for) still shows as
 * too long, exactly as the Python loop sees it. */
#define MAX_DATAGRAM 2048
#define RECV_SIZE (MAX_DATAGRAM + 1)
/* libsrtp's largest SRTP trailer (SRTP_MAX_TRAILER_LEN: tag and MKI), with a margin: what
 * srtp_protect may append in place, so max_len is clamped to leave it free in the buffer. */
#define TRAILER_ROOM 160
#define MAX_EVENTS 1024
#define MAX_DROPOUT 3000
#define MAX_MISORDER 100
#define N_REASONS 64
#define SSRC_SLOTS 2 /* relay.SSRC_SLOTS */

enum { KIND_PROTECT = 0, KIND_UNPROTECT = 1 };
enum { REASON_MALFORMED = 0, REASON_AUTH = 1, REASON_REPLAY = 2 };

/* ---------------------------------------------------------------------------- Lane */

typedef struct {
    PyObject_HEAD
    int kind;
    int active;
    int out_fd;
    uint32_t src_ip; /* network order */
    struct sockaddr_in dest;
    void *ctx;
    srtp_fn fn;
    long max_len;
    PyObject *owner; /* keeps the libsrtp session alive while the lane uses it */
    unsigned char reasons[N_REASONS];
    /* counter deltas since the last take() */
    long long in_packets, in_bytes, out_packets, drop_malformed, drop_auth, drop_replay;
    long long drop_ssrc;
    double last_packet;
    /* relay.SsrcGate as the lane sees it (authoritative for `heard` while active) */
    uint32_t ssrcs[SSRC_SLOTS];
    double heard[SSRC_SLOTS];
    int n_ssrcs;
    int can_retire;
    double ssrc_idle;
    /* RFC 3550 A.3 / A.8 state (authoritative while active) */
    long long max_seq, base, cycles, received, lost_before, transit, jitter16;
    long long clock_rate;
} Lane;

static long long lane_lost(const Lane *l) {
    if (!l->received) return l->lost_before;
    long long expected = l->cycles + l->max_seq - l->base + 1;
    long long gap = expected - l->received;
    return l->lost_before + (gap > 0 ? gap : 0);
}

static void lane_restart(Lane *l, long long seq) {
    if (l->received) l->lost_before = lane_lost(l);
    l->base = l->max_seq = seq;
    l->cycles = l->received = 0;
    l->transit = -(1LL << 40);
}

/* ReceptionStats.packet, operation for operation. */
static void lane_reception(Lane *l, const unsigned char *d, double now) {
    long long seq = (long long)(d[2] << 8 | d[3]);
    long long max_seq = l->max_seq;
    long long delta = (seq - max_seq) & 0xFFFF;
    if (delta < MAX_DROPOUT && l->received) {
        if (seq < max_seq) l->cycles += 0x10000;
        l->max_seq = seq;
    } else if (delta <= 0xFFFF - MAX_MISORDER || !l->received) {
        lane_restart(l, seq);
    }
    l->received += 1;
    long long rate = l->clock_rate;
    long long ts = (long long)((uint32_t)d[4] << 24 | (uint32_t)d[5] << 16 |
                               (uint32_t)d[6] << 8 | (uint32_t)d[7]);
    long long transit = (long long)(now * (double)rate) - ts;
    long long diff = transit - l->transit;
    l->transit = transit;
    if (-rate < diff && diff < rate) {
        long long j = l->jitter16;
        l->jitter16 = j + (diff >= 0 ? diff : -diff) - ((j + 8) >> 4);
    }
}

/* SsrcGate.slot and SsrcGate.admissible (less the retired set, which Python checks): 1 when
 * ssrc is kept (its index in *slot), -1 when it is refused, 0 when Python must decide. */
static int lane_ssrc(const Lane *l, uint32_t ssrc, double now, int *slot) {
    for (int i = 0; i < l->n_ssrcs; i++) {
        if (l->ssrcs[i] == ssrc) {
            *slot = i;
            return 1;
        }
    }
    if (l->n_ssrcs < SSRC_SLOTS) return 0;
    if (!l->can_retire) return -1;
    double oldest = l->heard[0];
    for (int i = 1; i < l->n_ssrcs; i++)
        if (l->heard[i] < oldest) oldest = l->heard[i];
    return now - oldest >= l->ssrc_idle ? 0 : -1;
}

static int Lane_init(Lane *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"kind", "reasons", "clock_rate", "ssrc_idle", NULL};
    int kind;
    const char *reasons;
    Py_ssize_t n_reasons;
    long long clock_rate = 8000;
    double ssrc_idle = 1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iy#|Ld", kwlist, &kind, &reasons, &n_reasons,
                                     &clock_rate, &ssrc_idle))
        return -1;
    self->ssrc_idle = ssrc_idle;
    self->n_ssrcs = 0;
    self->can_retire = 1;
    if (kind != KIND_PROTECT && kind != KIND_UNPROTECT) {
        PyErr_SetString(PyExc_ValueError, "kind must be 0 (protect) or 1 (unprotect)");
        return -1;
    }
    self->kind = kind;
    memset(self->reasons, REASON_MALFORMED, N_REASONS);
    memcpy(self->reasons, reasons, n_reasons < N_REASONS ? (size_t)n_reasons : N_REASONS);
    self->clock_rate = clock_rate;
    self->active = 0;
    self->transit = -(1LL << 40);
    return 0;
}

static void Lane_dealloc(Lane *self) {
    Py_CLEAR(self->owner);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Lane_configure(Lane *self, PyObject *args) {
    int out_fd, dest_port;
    const char *src, *dest;
    Py_ssize_t n_src, n_dest;
    unsigned long long ctx, fn;
    long max_len;
    PyObject *owner;
    if (!PyArg_ParseTuple(args, "iy#y#iKKlO", &out_fd, &src, &n_src, &dest, &n_dest, &dest_port,
                          &ctx, &fn, &max_len, &owner))
        return NULL;
    if (n_src != 4 || n_dest != 4 || !ctx || !fn || dest_port < 0 || dest_port > 65535) {
        PyErr_SetString(PyExc_ValueError, "bad lane configuration");
        return NULL;
    }
    self->out_fd = out_fd;
    memcpy(&self->src_ip, src, 4);
    memset(&self->dest, 0, sizeof self->dest);
    self->dest.sin_family = AF_INET;
    memcpy(&self->dest.sin_addr.s_addr, dest, 4);
    self->dest.sin_port = htons((uint16_t)dest_port);
    self->ctx = (void *)(uintptr_t)ctx;
    self->fn = (srtp_fn)(uintptr_t)fn;
    /* libsrtp works in place in Engine.buf: whatever Python allows, never past its end. */
    if (max_len > RECV_SIZE - TRAILER_ROOM) max_len = RECV_SIZE - TRAILER_ROOM;
    self->max_len = max_len;
    Py_INCREF(owner);
    Py_XSETREF(self->owner, owner);
    self->active = 1;
    Py_RETURN_NONE;
}

static PyObject *Lane_disable(Lane *self, PyObject *Py_UNUSED(ignored)) {
    self->active = 0;
    self->ctx = NULL;
    self->fn = NULL;
    Py_CLEAR(self->owner);
    Py_RETURN_NONE;
}

static PyObject *Lane_take(Lane *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = Py_BuildValue("(LLLLLLLd)", self->in_packets, self->in_bytes,
                                  self->out_packets, self->drop_malformed, self->drop_auth,
                                  self->drop_replay, self->drop_ssrc, self->last_packet);
    if (out == NULL) return NULL;
    self->in_packets = self->in_bytes = self->out_packets = 0;
    self->drop_malformed = self->drop_auth = self->drop_replay = self->drop_ssrc = 0;
    self->last_packet = 0.0;
    return out;
}

static PyObject *Lane_get_reception(Lane *self, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("(LLLLLLL)", self->max_seq, self->base, self->cycles, self->received,
                         self->lost_before, self->transit, self->jitter16);
}

static PyObject *Lane_set_reception(Lane *self, PyObject *args) {
    long long v[7];
    if (!PyArg_ParseTuple(args, "(LLLLLLL)", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6]))
        return NULL;
    self->max_seq = v[0];
    self->base = v[1];
    self->cycles = v[2];
    self->received = v[3];
    self->lost_before = v[4];
    self->transit = v[5];
    self->jitter16 = v[6];
    Py_RETURN_NONE;
}

static PyObject *Lane_get_ssrcs(Lane *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyTuple_New(self->n_ssrcs);
    if (out == NULL) return NULL;
    for (int i = 0; i < self->n_ssrcs; i++) {
        PyObject *item = Py_BuildValue("(kd)", (unsigned long)self->ssrcs[i], self->heard[i]);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, item);
    }
    return out;
}

static PyObject *Lane_set_ssrcs(Lane *self, PyObject *args) {
    PyObject *kept;
    int can_retire;
    if (!PyArg_ParseTuple(args, "O!p", &PyTuple_Type, &kept, &can_retire)) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(kept);
    if (n > SSRC_SLOTS) {
        PyErr_SetString(PyExc_ValueError, "more SSRCs than the lane has slots");
        return NULL;
    }
    uint32_t ssrcs[SSRC_SLOTS];
    double heard[SSRC_SLOTS];
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long ssrc;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(kept, i), "kd", &ssrc, &heard[i])) return NULL;
        if (ssrc > 0xFFFFFFFFUL) {
            PyErr_SetString(PyExc_ValueError, "SSRC out of range");
            return NULL;
        }
        ssrcs[i] = (uint32_t)ssrc;
    }
    memcpy(self->ssrcs, ssrcs, sizeof ssrcs);
    memcpy(self->heard, heard, sizeof heard);
    self->n_ssrcs = (int)n;
    self->can_retire = can_retire;
    Py_RETURN_NONE;
}

static PyObject *Lane_reception_packet(Lane *self, PyObject *args) {
    Py_buffer data;
    double now;
    if (!PyArg_ParseTuple(args, "y*d", &data, &now)) return NULL;
    if (data.len < 8) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "need an RTP header");
        return NULL;
    }
    lane_reception(self, (const unsigned char *)data.buf, now);
    PyBuffer_Release(&data);
    Py_RETURN_NONE;
}

static PyObject *Lane_get_active(Lane *self, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(self->active);
}

/* Read without take(): the idle check looks at every call each interval and must not pay for
 * folding counters and reception state (that pause showed as a ms-scale latency tail). */
static PyObject *Lane_get_last_packet(Lane *self, void *Py_UNUSED(closure)) {
    return PyFloat_FromDouble(self->last_packet);
}

static PyMethodDef Lane_methods[] = {
    {"configure", (PyCFunction)Lane_configure, METH_VARARGS,
     "configure(out_fd, src_ip4, dest_ip4, dest_port, ctx, fn, max_len, owner): activate"},
    {"disable", (PyCFunction)Lane_disable, METH_NOARGS, "Stop handling packets here."},
    {"take", (PyCFunction)Lane_take, METH_NOARGS, "Counter deltas since the last take()."},
    {"get_reception", (PyCFunction)Lane_get_reception, METH_NOARGS, "Reception state."},
    {"set_reception", (PyCFunction)Lane_set_reception, METH_VARARGS, "Set reception state."},
    {"get_ssrcs", (PyCFunction)Lane_get_ssrcs, METH_NOARGS,
     "((ssrc, last heard), ...) of the kept SSRCs."},
    {"set_ssrcs", (PyCFunction)Lane_set_ssrcs, METH_VARARGS,
     "set_ssrcs(((ssrc, last heard), ...), can_retire): the stream's SsrcGate."},
    {"reception_packet", (PyCFunction)Lane_reception_packet, METH_VARARGS,
     "Account one RTP header (for tests)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Lane_getset[] = {
    {"active", (getter)Lane_get_active, NULL, "True while the fast path handles packets", NULL},
    {"last_packet", (getter)Lane_get_last_packet, NULL,
     "Monotonic time of the last packet relayed since the last take() (0.0: none)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gateway.media._fastpath.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One direction of one stream's steady-state packet path.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lane_init,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_methods = Lane_methods,
    .tp_getset = Lane_getset,
};

/* -------------------------------------------------------------------------- Engine */

static double monotonic_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

typedef struct {
    PyObject_HEAD
    int epfd;
    double gap_avg;   /* moving average of the wait before packets came (seconds) */
    double hot_until; /* the keeper spins until then (monotonic seconds; atomic access) */
    int keeper_stop;  /* atomic access */
    int has_keeper;
    pthread_t keeper;
    Py_ssize_t n_slots;
    Lane **slots; /* indexed by fd, owned references */
    struct epoll_event events[MAX_EVENTS];
    unsigned char buf[RECV_SIZE];
} Engine;

/* The core keeper: a SCHED_IDLE thread beside the worker that spins while packets are dense,
 * so the core never enters idle between them. Measured on this project's 2-vCPU VM (perf
 * sched): a worker that slept between packets waited 1 to 3 ms for the halted vCPU to be woken
 * by the next packet's interrupt, the largest part of the p99.9 latency. A SCHED_IDLE thread
 * runs only when nothing else wants the core and is preempted at once by the worker's wake-up
 * (or by a kernel thread), so it takes nothing from anyone; unlike the worker polling
 * itself, which left no idle gaps for the kernel's own threads and so was preempted by them
 * mid-burst (p99 got worse). It inherits the worker's CPU affinity and sleeps when media is
 * sparse. */
#define KEEPER_ENGAGE_GAP 200e-6 /* spin only while packets come closer than this on average */
#define KEEPER_HOLD 2e-3         /* and for this long after the last one */

static void *keeper_main(void *arg) {
    Engine *e = arg;
    while (!__atomic_load_n(&e->keeper_stop, __ATOMIC_RELAXED)) {
        double until;
        __atomic_load(&e->hot_until, &until, __ATOMIC_RELAXED);
        if (monotonic_now() < until) {
            for (int i = 0; i < 512; i++) cpu_relax();
        } else {
            struct timespec nap = {0, 1000000}; /* 1 ms */
            nanosleep(&nap, NULL);
        }
    }
    return NULL;
}

static int Engine_init(Engine *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"epfd", "keep_core_awake", NULL};
    int keep_awake = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|p", kwlist, &self->epfd, &keep_awake))
        return -1;
    self->gap_avg = 1.0; /* start cold: no spinning until packets come close together */
    if (keep_awake && !self->has_keeper) {
        /* Created with every signal blocked: a process-directed signal must go to the
         * packet loop's thread, whose epoll_wait it interrupts so that Python's handler runs
         * at once; taken by the keeper, it would wait for the loop's next return. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
        int err = pthread_create(&self->keeper, NULL, keeper_main, self);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (err) {
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        /* Named and demoted by the creator, so both hold when this call returns. A keeper
         * that cannot be SCHED_IDLE (a seccomp filter, say) would compete with the worker
         * for its core: then there is none. */
        struct sched_param param = {0};
        if (pthread_setschedparam(self->keeper, SCHED_IDLE, &param) != 0) {
            __atomic_store_n(&self->keeper_stop, 1, __ATOMIC_RELAXED);
            pthread_join(self->keeper, NULL);
            self->keeper_stop = 0;
            return 0;
        }
        self->has_keeper = 1;
        (void)pthread_setname_np(self->keeper, "core-keeper");
    }
    return 0;
}

static void Engine_dealloc(Engine *self) {
    if (self->has_keeper) {
        __atomic_store_n(&self->keeper_stop, 1, __ATOMIC_RELAXED);
        Py_BEGIN_ALLOW_THREADS
        pthread_join(self->keeper, NULL);
        Py_END_ALLOW_THREADS
    }
    for (Py_ssize_t i = 0; i < self->n_slots; i++) Py_XDECREF(self->slots[i]);
    PyMem_Free(self->slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Engine_attach(Engine *self, PyObject *args) {
    int fd;
    PyObject *lane;
    if (!PyArg_ParseTuple(args, "iO!", &fd, &LaneType, &lane)) return NULL;
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "bad fd");
        return NULL;
    }
    if (fd >= self->n_slots) {
        Py_ssize_t n = self->n_slots ? self->n_slots : 256;
        while (n <= fd) n *= 2;
        Lane **slots = PyMem_Realloc(self->slots, (size_t)n * sizeof(Lane *));
        if (slots == NULL) return PyErr_NoMemory();
        memset(slots + self->n_slots, 0, (size_t)(n - self->n_slots) * sizeof(Lane *));
        self->slots = slots;
        self->n_slots = n;
    }
    Py_INCREF(lane);
    Py_XSETREF(self->slots[fd], (Lane *)lane);
    Py_RETURN_NONE;
}

static PyObject *Engine_detach(Engine *self, PyObject *args) {
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd)) return NULL;
    if (fd >= 0 && fd < self->n_slots) Py_CLEAR(self->slots[fd]);
    Py_RETURN_NONE;
}

static PyObject *source_tuple(const struct sockaddr_in *src) {
    char text[INET_ADDRSTRLEN];
    if (inet_ntop(AF_INET, &src->sin_addr, text, sizeof text) == NULL) text[0] = '\0';
    return Py_BuildValue("(si)", text, (int)ntohs(src->sin_port));
}

/* Handle one datagram on an active lane. Returns 1 when handled, 0 to decline (no state was
 * changed: the caller gives it to Python). */
static int lane_packet(Lane *l, unsigned char *d, ssize_t n, uint32_t source_ip, double now) {
    if (source_ip != l->src_ip || n > MAX_DATAGRAM) return 0;
    int slot = 0;
    if (l->kind == KIND_PROTECT) {
        if (n < 12 || (d[0] & 0xC0) != 0x80) return 0;
        if (d[1] >= 200 && d[1] <= 204) return 0; /* RTCP muxed by the phone (RFC 5761 §4) */
        uint32_t ssrc = (uint32_t)d[8] << 24 | (uint32_t)d[9] << 16 | (uint32_t)d[10] << 8 | d[11];
        int verdict = lane_ssrc(l, ssrc, now, &slot);
        if (verdict == 0) return 0;
        l->in_packets++;
        l->in_bytes += n;
        if (verdict < 0) {
            l->drop_ssrc++;
            return 1;
        }
        l->heard[slot] = now;
        l->last_packet = now;
        lane_reception(l, d, now);
        if (n > l->max_len) {
            l->drop_malformed++;
            return 1;
        }
        int len = (int)n;
        int status = l->fn(l->ctx, d, &len);
        if (status) {
            l->drop_malformed++;
            return 1;
        }
        l->out_packets++;
        (void)sendto(l->out_fd, d, (size_t)len, 0, (const struct sockaddr *)&l->dest,
                     sizeof l->dest);
        return 1;
    }
    /* unprotect: SRTP from the provider; RTCP muxed on this port goes to Python */
    if (n < 12 || (d[0] & 0xC0) != 0x80) return 0;
    unsigned pt = d[1] & 0x7F;
    if (pt >= 64 && pt <= 95) return 0;
    uint32_t ssrc = (uint32_t)d[8] << 24 | (uint32_t)d[9] << 16 | (uint32_t)d[10] << 8 | d[11];
    int verdict = lane_ssrc(l, ssrc, now, &slot);
    if (verdict == 0) return 0; /* a new SSRC is kept only after it authenticates: Python */
    l->in_packets++;
    l->in_bytes += n;
    if (verdict < 0) {
        l->drop_ssrc++;
        return 1;
    }
    if (n > l->max_len) {
        l->drop_malformed++;
        return 1;
    }
    int len = (int)n;
    int status = l->fn(l->ctx, d, &len);
    if (status) {
        unsigned char reason = (status > 0 && status < N_REASONS) ? l->reasons[status]
                                                                  : REASON_MALFORMED;
        if (reason == REASON_AUTH)
            l->drop_auth++;
        else if (reason == REASON_REPLAY)
            l->drop_replay++;
        else
            l->drop_malformed++;
        return 1;
    }
    l->heard[slot] = now;
    l->last_packet = now;
    lane_reception(l, d, now); /* the RTP header is not encrypted (RFC 3711 §3.1) */
    l->out_packets++;
    (void)sendto(l->out_fd, d, (size_t)len, 0, (const struct sockaddr *)&l->dest,
                 sizeof l->dest);
    return 1;
}

/* poll(timeout_ms) -> (now, events, packets)
 *   events:  [(fd, mask)] for fds the fast path does not serve (Python reads them);
 *   packets: [(fd, data, (ip, port))] datagrams it read but declined (Python decides).
 * Rounds that the fast path serves entirely stay in C: it returns only with something for
 * Python or when timeout_ms (negative: none) has passed, so a steady stream of packets costs
 * no interpreter round trip and no list allocations per epoll round. */
static PyObject *Engine_poll(Engine *self, PyObject *args) {
    int timeout_ms;
    if (!PyArg_ParseTuple(args, "i", &timeout_ms)) return NULL;
    PyObject *events = PyList_New(0);
    PyObject *packets = PyList_New(0);
    if (events == NULL || packets == NULL) goto fail;
    double now = monotonic_now();
    double deadline = now + (double)timeout_ms * 1e-3;
    double idle_since = now; /* when this wait for packets began */
    for (;;) {
        int wait_ms = -1;
        if (timeout_ms >= 0) {
            double left = (deadline - now) * 1e3;
            wait_ms = left > 0 ? (int)left + (left > (int)left) : 0; /* ceil: never early */
        }
        /* Under load a round finds packets at once: that look keeps the GIL (its release and
         * re-take cost per round). Only a wait that may block lets go of it, so that other
         * Python threads (a worker run in a thread, tests) and the main thread's signal
         * handlers are not held up for the whole wait. */
        int n = epoll_wait(self->epfd, self->events, MAX_EVENTS, 0);
        int err = errno;
        if (n == 0 && wait_ms != 0) {
            Py_BEGIN_ALLOW_THREADS
            n = epoll_wait(self->epfd, self->events, MAX_EVENTS, wait_ms);
            err = errno;
            Py_END_ALLOW_THREADS
        }
        if (n < 0) {
            if (err != EINTR) {
                errno = err;
                PyErr_SetFromErrno(PyExc_OSError);
                goto fail;
            }
            if (PyErr_CheckSignals() < 0) goto fail;
            now = monotonic_now();
            break; /* let Python see the signal's effects */
        }
        now = monotonic_now();
        if (n > 0 && self->has_keeper) {
            self->gap_avg += (now - idle_since - self->gap_avg) * 0.125;
            if (self->gap_avg < KEEPER_ENGAGE_GAP) {
                double until = now + KEEPER_HOLD;
                __atomic_store(&self->hot_until, &until, __ATOMIC_RELAXED);
            }
        }
        for (int i = 0; i < n; i++) {
            int fd = self->events[i].data.fd;
            uint32_t mask = self->events[i].events;
            Lane *lane = (fd >= 0 && fd < self->n_slots) ? self->slots[fd] : NULL;
            if (lane == NULL || !lane->active || !(mask & EPOLLIN)) {
                PyObject *item = Py_BuildValue("(iI)", fd, (unsigned)mask);
                if (item == NULL || PyList_Append(events, item) < 0) {
                    Py_XDECREF(item);
                    goto fail;
                }
                Py_DECREF(item);
                continue;
            }
            struct sockaddr_in src;
            socklen_t src_len = sizeof src;
            ssize_t got =
                recvfrom(fd, self->buf, RECV_SIZE, 0, (struct sockaddr *)&src, &src_len);
            if (got < 0) continue; /* EAGAIN after all, or a queued ICMP error: read on later */
            if (src.sin_family == AF_INET &&
                lane_packet(lane, self->buf, got, src.sin_addr.s_addr, now))
                continue;
            PyObject *source = source_tuple(&src);
            if (source == NULL) goto fail;
            PyObject *item = Py_BuildValue("(iy#N)", fd, (const char *)self->buf,
                                           (Py_ssize_t)got, source);
            if (item == NULL || PyList_Append(packets, item) < 0) {
                Py_XDECREF(item);
                goto fail;
            }
            Py_DECREF(item);
        }
        if (PyList_GET_SIZE(events) || PyList_GET_SIZE(packets)) break;
        if (timeout_ms >= 0 && now >= deadline) break;
        idle_since = now;
    }
    return Py_BuildValue("(dNN)", now, events, packets);
fail:
    Py_XDECREF(events);
    Py_XDECREF(packets);
    return NULL;
}

static PyObject *fastpath_libsrtp_version(PyObject *Py_UNUSED(module), PyObject *args) {
    unsigned long long fn;
    if (!PyArg_ParseTuple(args, "K", &fn)) return NULL;
    Dl_info info;
    if (!fn || !dladdr((void *)(uintptr_t)fn, &info) || info.dli_fname == NULL) {
        PyErr_SetString(PyExc_OSError, "no loaded library holds that function");
        return NULL;
    }
    /* RTLD_NOLOAD: the object pylibsrtp loaded, never another copy. */
    void *lib = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
    if (lib == NULL) {
        const char *why = dlerror();
        PyErr_Format(PyExc_OSError, "%s: %s", info.dli_fname, why ? why : "not loaded");
        return NULL;
    }
    unsigned int (*get_version)(void) = (unsigned int (*)(void))dlsym(lib, "srtp_get_version");
    const char *(*get_text)(void) = (const char *(*)(void))dlsym(lib, "srtp_get_version_string");
    PyObject *out;
    if (get_version == NULL)
        out = PyErr_Format(PyExc_OSError, "%s has no srtp_get_version", info.dli_fname);
    else
        out = Py_BuildValue("(Is)", get_version(), get_text ? get_text() : "");
    dlclose(lib);
    return out;
}

static PyMethodDef fastpath_functions[] = {
    {"libsrtp_version", fastpath_libsrtp_version, METH_VARARGS,
     "libsrtp_version(fn) -> (srtp_get_version(), srtp_get_version_string()) of the library "
     "holding the function at address fn"},
    {NULL, NULL, 0, NULL},
};

static PyObject *Engine_get_keeper(Engine *self, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(self->has_keeper);
}

static PyGetSetDef Engine_getset[] = {
    {"keeps_core_awake", (getter)Engine_get_keeper, NULL,
     "True when a core-keeper thread runs beside this engine", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Engine_methods[] = {
    {"attach", (PyCFunction)Engine_attach, METH_VARARGS, "attach(fd, lane)"},
    {"detach", (PyCFunction)Engine_detach, METH_VARARGS, "detach(fd)"},
    {"poll", (PyCFunction)Engine_poll, METH_VARARGS,
     "poll(timeout_ms) -> (now, [(fd, mask)], [(fd, data, source)])"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gateway.media._fastpath.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "epoll loop serving active lanes in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
    .tp_getset = Engine_getset,
};

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gateway.media._fastpath",
    .m_doc = "C fast path for the media worker's steady-state RTP relay.",
    .m_size = -1,
    .m_methods = fastpath_functions,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&LaneType) < 0 || PyType_Ready(&EngineType) < 0) return NULL;
    PyObject *m = PyModule_Create(&fastpath_module);
    if (m == NULL) return NULL;
    Py_INCREF(&LaneType);
    if (PyModule_AddObject(m, "Lane", (PyObject *)&LaneType) < 0) goto fail;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0) goto fail;
    if (PyModule_AddIntConstant(m, "PROTECT", KIND_PROTECT) < 0 ||
        PyModule_AddIntConstant(m, "UNPROTECT", KIND_UNPROTECT) < 0 ||
        PyModule_AddIntConstant(m, "MAX_EVENTS", MAX_EVENTS) < 0 ||
        PyModule_AddIntConstant(m, "SSRC_SLOTS", SSRC_SLOTS) < 0)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
