/*
 * loadgen: RTP/SRTP load generator and receiver for the media benchmark.
 *
 * One thread plays both ends of N calls: the "phone" (plain RTP on the LAN side) and the
 * "provider" (SRTP on the WAN side). Each call carries one stream each way at ptime pacing,
 * the 2N streams staggered evenly across the packet interval. Packets are sent at absolute
 * times (no drift), batched with sendmmsg; received with recvmmsg and stamped by the kernel
 * (SO_TIMESTAMPNS), so the figures are wire-to-wire, not scheduler-to-scheduler.
 *
 * SRTP is done here with libsrtp2 (the same library the gateway and rtpengine use) rather than
 * pre-encrypted in Python: a long run at 1000 calls would need ~100 MB of pre-built packets,
 * and the receive side must authenticate what the relay sent anyway.
 *
 * Payload of every packet (160 bytes, G.711 20 ms size):
 *   [0..3] magic "BNCH"  [4..11] send time, ns since epoch (CLOCK_REALTIME, as the kernel
 *   stamps)  [12] 1 when sent inside the measured window.
 *
 * Config (text file, argv[1]), one directive per line:
 *   duration S | warmup S | drain S | ptime_us N | profile P | direct 0|1
 *   phone IP PORT | provider IP PORT            (our two sockets)
 *   call LAN_IP LAN_PORT WAN_IP WAN_PORT TXHEX RXHEX
 *     phone -> LAN_IP:LAN_PORT (plain), provider -> WAN_IP:WAN_PORT (SRTP with TXHEX);
 *     the provider authenticates what it receives with RXHEX.
 *     direct 1: the phone itself protects (RXHEX) and unprotects (TXHEX), so the provider
 *     sees exactly what a relay would have sent and the phone does a relay's crypto too.
 *   via_calls 1 (with direct 1): still send to each call's LAN/WAN address, through a relay
 *     that only forwards bytes (bench/bare_relay.c).
 *
 * Stdout: "measure start" and "measure stop" lines at the window's edges (so the harness can
 * sample the relay's CPU over exactly that window), then one JSON object.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <srtp2/srtp.h>

#ifdef PYLIBSRTP_STUBS
/*
 * Linked against pylibsrtp's extension module, which carries libsrtp 2.7 over OpenSSL's AES:
 * the very build the gateway uses. Debian's libsrtp2 uses NSS and costs ~10x more per packet,
 * enough to make the generator the bottleneck. The module refers to a few CPython symbols
 * that its libsrtp part never calls; these stand-ins satisfy the loader.
 */
char _Py_NoneStruct[64];
#define PY_STUB(name) \
    void name(void);  \
    void name(void) { abort(); }
PY_STUB(PyArg_UnpackTuple)
PY_STUB(PyErr_Occurred)
PY_STUB(PyEval_RestoreThread)
PY_STUB(PyEval_SaveThread)
PY_STUB(PyImport_ImportModule)
PY_STUB(PyLong_FromLong)
PY_STUB(PyLong_FromVoidPtr)
PY_STUB(PyObject_CallMethod)
PY_STUB(PyObject_Free)
PY_STUB(PyObject_Malloc)
PY_STUB(_Py_Dealloc)
#endif

#define PAYLOAD 160
#define HDR 12
#define PKT_MAX 512
#define BATCH 64
#define SSRC_BASE 0x42000000u
#define HIST_US 1000000 /* 1 µs buckets up to 1 s; beyond counts in the last bucket */

typedef struct {
    struct sockaddr_in lan, wan;
    srtp_t prov_tx, prov_rx;   /* provider side: protect to the relay, unprotect from it */
    srtp_t phone_tx, phone_rx; /* direct mode only */
} call_t;

typedef struct {
    uint64_t sent_measured, recv_measured, dup, srtp_fail, bad, late;
    double jitter_ns; /* RFC 3550 §6.4.1 estimate, in ns */
    int64_t last_transit;
    int have_transit;
    uint8_t *seen; /* bitmap by sequence number */
} stream_t;

typedef struct {
    uint32_t *hist;
    uint64_t n, over;
    int64_t max_ns;
    double sum_ns;
} hist_t;

static int ncalls, direct_mode, via_calls, profile = 1;
static double duration = 5, warmup = 1, drain = 0.3;
static int64_t ptime_ns = 20000000;
static call_t *calls;
static stream_t *streams; /* 2 per call: [2i] phone->provider, [2i+1] provider->phone */
static hist_t lat[2], slip;
static int max_seq;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void hist_add(hist_t *h, int64_t ns) {
    if (ns < 0) ns = 0;
    int64_t us = ns / 1000;
    if (us >= HIST_US) {
        us = HIST_US - 1;
        h->over++;
    }
    h->hist[us]++;
    h->n++;
    h->sum_ns += (double)ns;
    if (ns > h->max_ns) h->max_ns = ns;
}

static double hist_q(const hist_t *h, double q) {
    if (h->n == 0) return 0;
    uint64_t target = (uint64_t)ceil(q * (double)h->n), acc = 0;
    if (target == 0) target = 1;
    for (int i = 0; i < HIST_US; i++) {
        acc += h->hist[i];
        if (acc >= target) return i + 0.5; /* bucket middle, µs */
    }
    return HIST_US;
}

static void hist_json(const char *name, const hist_t *h) {
    printf("\"%s\":{\"n\":%llu,\"p50\":%.1f,\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f,"
           "\"mean\":%.1f,\"over_1s\":%llu}",
           name, (unsigned long long)h->n, hist_q(h, 0.5), hist_q(h, 0.99), hist_q(h, 0.999),
           h->max_ns / 1000.0, h->n ? h->sum_ns / h->n / 1000.0 : 0.0,
           (unsigned long long)h->over);
}

static int hexkey(const char *hex, unsigned char *out, int max) {
    int n = (int)strlen(hex) / 2;
    if (n > max) return -1;
    for (int i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) return -1;
        out[i] = (unsigned char)v;
    }
    return n;
}

static srtp_t make_session(const char *hex, int inbound) {
    unsigned char key[64];
    if (hexkey(hex, key, sizeof key) < 0) {
        fprintf(stderr, "loadgen: bad key\n");
        exit(2);
    }
    srtp_policy_t p;
    memset(&p, 0, sizeof p);
    if (srtp_crypto_policy_set_from_profile_for_rtp(&p.rtp, (srtp_profile_t)profile) ||
        srtp_crypto_policy_set_from_profile_for_rtcp(&p.rtcp, (srtp_profile_t)profile)) {
        fprintf(stderr, "loadgen: unknown SRTP profile %d\n", profile);
        exit(2);
    }
    p.ssrc.type = inbound ? ssrc_any_inbound : ssrc_any_outbound;
    p.key = key;
    p.window_size = 1024;
    srtp_t s;
    if (srtp_create(&s, &p) != srtp_err_status_ok) {
        fprintf(stderr, "loadgen: srtp_create failed\n");
        exit(2);
    }
    return s;
}

static int udp_socket(const char *ip, int port) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    int big = 32 << 20, one = 1;
    /* FORCE variants pass rmem_max as root; the plain ones are the fallback. */
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big))
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big))
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one)) die("SO_TIMESTAMPNS");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, ip, &a.sin_addr);
    if (bind(fd, (struct sockaddr *)&a, sizeof a)) die("bind");
    return fd;
}

static void set_addr(struct sockaddr_in *a, const char *ip, int port) {
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    inet_pton(AF_INET, ip, &a->sin_addr);
}

/* Receive side ------------------------------------------------------------------------- */

static unsigned char rbuf[2][BATCH][PKT_MAX];
static char rctl[2][BATCH][64];
static struct mmsghdr rmsg[2][BATCH];
static struct iovec riov[2][BATCH];

static void recv_setup(void) {
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < BATCH; i++) {
            riov[s][i].iov_base = rbuf[s][i];
            riov[s][i].iov_len = PKT_MAX;
            rmsg[s][i].msg_hdr.msg_iov = &riov[s][i];
            rmsg[s][i].msg_hdr.msg_iovlen = 1;
        }
}

static uint64_t rx_total, foreign;

/* side 0: the provider socket (phone->provider packets); side 1: the phone socket. */
static void drain_socket(int fd, int side) {
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            rmsg[side][i].msg_hdr.msg_control = rctl[side][i];
            rmsg[side][i].msg_hdr.msg_controllen = sizeof rctl[side][i];
            rmsg[side][i].msg_hdr.msg_name = NULL;
            rmsg[side][i].msg_hdr.msg_namelen = 0;
        }
        int n = recvmmsg(fd, rmsg[side], BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) return;
        rx_total += n;
        for (int i = 0; i < n; i++) {
            unsigned char *p = rbuf[side][i];
            int len = (int)rmsg[side][i].msg_len;
            int64_t rx_ts = 0;
            for (struct cmsghdr *c = CMSG_FIRSTHDR(&rmsg[side][i].msg_hdr); c;
                 c = CMSG_NXTHDR(&rmsg[side][i].msg_hdr, c))
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                    struct timespec ts;
                    memcpy(&ts, CMSG_DATA(c), sizeof ts);
                    rx_ts = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
                }
            if (!rx_ts) rx_ts = now_ns();
            if (len < HDR) continue;
            uint32_t ssrc = ntohl(*(uint32_t *)(p + 8));
            uint32_t idx = ssrc - SSRC_BASE;
            int dir = side == 0 ? 0 : 1;
            if (idx >= (uint32_t)(2 * ncalls) || (int)(idx & 1) != dir) {
                foreign++; /* not one of our streams (or a rewritten SSRC) */
                continue;
            }
            call_t *c = &calls[idx >> 1];
            stream_t *st = &streams[idx];
            srtp_t sess = side == 0 ? c->prov_rx : (direct_mode ? c->phone_rx : NULL);
            if (sess && srtp_unprotect(sess, p, &len) != srtp_err_status_ok) {
                st->srtp_fail++;
                continue;
            }
            if (len != HDR + PAYLOAD || memcmp(p + HDR, "BNCH", 4)) {
                st->bad++;
                continue;
            }
            int seq = ntohs(*(uint16_t *)(p + 2));
            int64_t sent;
            memcpy(&sent, p + HDR + 4, 8);
            /* RFC 3550 jitter from arrival vs RTP timestamp (the nominal sampling clock). */
            uint32_t rtp_ts = ntohl(*(uint32_t *)(p + 4));
            int64_t transit = rx_ts - (int64_t)rtp_ts * 125000LL; /* 8 kHz -> ns */
            if (st->have_transit) {
                int64_t d = transit - st->last_transit;
                if (d < 0) d = -d;
                st->jitter_ns += ((double)d - st->jitter_ns) / 16.0;
            }
            st->last_transit = transit;
            st->have_transit = 1;
            if (!p[HDR + 12]) continue;
            if (seq >= max_seq) continue;
            if (st->seen[seq >> 3] & (1 << (seq & 7))) {
                st->dup++;
                continue;
            }
            st->seen[seq >> 3] |= (uint8_t)(1 << (seq & 7));
            st->recv_measured++;
            hist_add(&lat[dir], rx_ts - sent);
        }
        if (n < BATCH) return;
    }
}

/* Send side ---------------------------------------------------------------------------- */

static unsigned char sbuf[2][BATCH][PKT_MAX];
static struct mmsghdr smsg[2][BATCH];
static struct iovec siov[2][BATCH];
static int scount[2];
static uint64_t send_errors;

static void flush_side(int fd, int side) {
    int off = 0;
    while (off < scount[side]) {
        int n = sendmmsg(fd, smsg[side] + off, scount[side] - off, 0);
        if (n <= 0) {
            if (errno == EINTR) continue;
            send_errors += scount[side] - off; /* counted; the receiver sees them as lost */
            break;
        }
        off += n;
    }
    scount[side] = 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: loadgen CONFIG\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "r");
    if (!f) die("config");
    char line[512], ip1[64], ip2[64], tx[160], rx[160];
    char phone_ip[64] = "", prov_ip[64] = "";
    int phone_port = 0, prov_port = 0, cap = 0, p1, p2;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "duration %lf", &duration) == 1) continue;
        if (sscanf(line, "warmup %lf", &warmup) == 1) continue;
        if (sscanf(line, "drain %lf", &drain) == 1) continue;
        long long pt;
        if (sscanf(line, "ptime_us %lld", &pt) == 1) {
            ptime_ns = pt * 1000;
            continue;
        }
        if (sscanf(line, "profile %d", &profile) == 1) continue;
        if (sscanf(line, "direct %d", &direct_mode) == 1) continue;
        if (sscanf(line, "via_calls %d", &via_calls) == 1) continue;
        if (sscanf(line, "phone %63s %d", phone_ip, &phone_port) == 2) continue;
        if (sscanf(line, "provider %63s %d", prov_ip, &prov_port) == 2) continue;
        if (sscanf(line, "call %63s %d %63s %d %159s %159s", ip1, &p1, ip2, &p2, tx, rx) == 6) {
            if (ncalls == cap) {
                cap = cap ? cap * 2 : 256;
                calls = realloc(calls, cap * sizeof *calls);
            }
            call_t *c = &calls[ncalls++];
            memset(c, 0, sizeof *c);
            set_addr(&c->lan, ip1, p1);
            set_addr(&c->wan, ip2, p2);
            if (ncalls == 1 && srtp_init() != srtp_err_status_ok) die("srtp_init");
            c->prov_tx = make_session(tx, 0);
            c->prov_rx = make_session(rx, 1);
            if (direct_mode) {
                c->phone_tx = make_session(rx, 0);
                c->phone_rx = make_session(tx, 1);
            }
        }
    }
    fclose(f);
    if (!ncalls || !phone_port || !prov_port) {
        fprintf(stderr, "loadgen: config needs phone, provider and at least one call\n");
        return 2;
    }
    prctl(PR_SET_TIMERSLACK, 1UL); /* wake-ups to the µs, not the default 50 µs slack */
    int fds[2];
    fds[0] = udp_socket(prov_ip, prov_port);
    fds[1] = udp_socket(phone_ip, phone_port);
    int nstreams = 2 * ncalls;
    max_seq = (int)((warmup + duration) * 1e9 / ptime_ns) + 4;
    if (max_seq > 65536) max_seq = 65536;
    streams = calloc(nstreams, sizeof *streams);
    for (int i = 0; i < nstreams; i++) streams[i].seen = calloc((max_seq + 7) / 8, 1);
    for (int d = 0; d < 2; d++) lat[d].hist = calloc(HIST_US, sizeof(uint32_t));
    slip.hist = calloc(HIST_US, sizeof(uint32_t));
    recv_setup();
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < BATCH; i++) {
            siov[s][i].iov_base = sbuf[s][i];
            smsg[s][i].msg_hdr.msg_iov = &siov[s][i];
            smsg[s][i].msg_hdr.msg_iovlen = 1;
            smsg[s][i].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
        }
    struct sockaddr_in phone_addr, prov_addr;
    set_addr(&phone_addr, phone_ip, phone_port);
    set_addr(&prov_addr, prov_ip, prov_port);

    int64_t t0 = now_ns() + 20000000LL; /* a little head room before the first packet */
    int64_t measure_from = t0 + (int64_t)(warmup * 1e9);
    int64_t send_until = measure_from + (int64_t)(duration * 1e9);
    int64_t stop_at = send_until + (int64_t)(drain * 1e9);
    uint64_t k = 0; /* global event index: stream k % nstreams, round k / nstreams */
    int measuring = 0, stopped = 0;
    struct rusage ru0, ru1;
    struct pollfd pfd[2] = {{fds[0], POLLIN, 0}, {fds[1], POLLIN, 0}};

    for (;;) {
        int64_t now = now_ns();
        if (!measuring && now >= measure_from) {
            measuring = 1;
            getrusage(RUSAGE_SELF, &ru0);
            printf("measure start\n");
            fflush(stdout);
        }
        if (!stopped && now >= send_until) {
            stopped = 1;
            getrusage(RUSAGE_SELF, &ru1);
            printf("measure stop\n");
            fflush(stdout);
        }
        if (now >= stop_at) break;
        /* Send everything that is due (absolute schedule: a late loop catches up, no drift). */
        int64_t due = t0 + (int64_t)((k * (uint64_t)ptime_ns) / (uint64_t)nstreams);
        while (due <= now && due < send_until) {
            int sidx = (int)(k % nstreams);
            uint64_t round = k / nstreams;
            int dir = sidx & 1, side = dir; /* dir 0: phone sends (side 1 socket) */
            int sock_side = dir == 0 ? 1 : 0;
            call_t *c = &calls[sidx >> 1];
            stream_t *st = &streams[sidx];
            unsigned char *p = sbuf[sock_side][scount[sock_side]];
            p[0] = 0x80;
            p[1] = 0; /* PCMU */
            *(uint16_t *)(p + 2) = htons((uint16_t)round);
            *(uint32_t *)(p + 4) = htonl((uint32_t)(round * (uint64_t)(ptime_ns / 125000)));
            *(uint32_t *)(p + 8) = htonl(SSRC_BASE + (uint32_t)sidx);
            memcpy(p + HDR, "BNCH", 4);
            int in_window = due >= measure_from;
            p[HDR + 12] = (uint8_t)in_window;
            memset(p + HDR + 13, 0xff, PAYLOAD - 13); /* µ-law silence */
            int64_t ts = now_ns();
            memcpy(p + HDR + 4, &ts, 8);
            int len = HDR + PAYLOAD;
            srtp_t sess = dir == 0 ? (direct_mode ? c->phone_tx : NULL) : c->prov_tx;
            if (sess && srtp_protect(sess, p, &len) != srtp_err_status_ok) {
                st->bad++;
            } else {
                siov[sock_side][scount[sock_side]].iov_len = (size_t)len;
                struct sockaddr_in *dst;
                if (direct_mode && !via_calls)
                    dst = dir == 0 ? &prov_addr : &phone_addr;
                else
                    dst = dir == 0 ? &c->lan : &c->wan;
                smsg[sock_side][scount[sock_side]].msg_hdr.msg_name = dst;
                scount[sock_side]++;
                if (in_window) {
                    st->sent_measured++;
                    hist_add(&slip, ts - due);
                    if (ts - due > 1000000) st->late++;
                }
            }
            (void)side;
            if (scount[sock_side] == BATCH) flush_side(fds[sock_side], sock_side);
            k++;
            due = t0 + (int64_t)((k * (uint64_t)ptime_ns) / (uint64_t)nstreams);
        }
        if (scount[0]) flush_side(fds[0], 0);
        if (scount[1]) flush_side(fds[1], 1);
        drain_socket(fds[0], 0);
        drain_socket(fds[1], 1);
        /* Wait for a packet or the next send time, whichever comes first. */
        now = now_ns();
        int64_t next = due < send_until ? due : stop_at;
        if (!measuring && measure_from < next) next = measure_from;
        if (!stopped && send_until < next) next = send_until;
        int64_t wait = next - now;
        if (wait > 2000) {
            struct timespec to = {wait / 1000000000LL, wait % 1000000000LL};
            ppoll(pfd, 2, &to, NULL);
        }
    }

    double cpu = (ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
                 (ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6 +
                 (ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                 (ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    printf("{\"calls\":%d,\"duration_s\":%.3f,\"direct\":%d,\"profile\":%d,"
           "\"cpu_pct\":%.1f,\"send_errors\":%llu,\"rx_datagrams\":%llu,\"foreign\":%llu,",
           ncalls, duration, direct_mode, profile, 100.0 * cpu / duration,
           (unsigned long long)send_errors, (unsigned long long)rx_total,
           (unsigned long long)foreign);
    hist_json("slip_us", &slip);
    printf(",\"dirs\":[");
    for (int d = 0; d < 2; d++) {
        uint64_t sent = 0, recv = 0, dup = 0, fail = 0, bad = 0, late = 0;
        double jsum = 0, jmax = 0;
        for (int i = d; i < nstreams; i += 2) {
            stream_t *st = &streams[i];
            sent += st->sent_measured;
            recv += st->recv_measured;
            dup += st->dup;
            fail += st->srtp_fail;
            bad += st->bad;
            late += st->late;
            jsum += st->jitter_ns;
            if (st->jitter_ns > jmax) jmax = st->jitter_ns;
        }
        printf("%s{\"name\":\"%s\",\"sent\":%llu,\"received\":%llu,\"duplicates\":%llu,"
               "\"srtp_failures\":%llu,\"bad\":%llu,\"late_sends\":%llu,"
               "\"jitter_us_mean\":%.2f,\"jitter_us_max\":%.2f,",
               d ? "," : "", d ? "provider_to_phone" : "phone_to_provider",
               (unsigned long long)sent, (unsigned long long)recv, (unsigned long long)dup,
               (unsigned long long)fail, (unsigned long long)bad, (unsigned long long)late,
               jsum / ncalls / 1000.0, jmax / 1000.0);
        hist_json("latency_us", &lat[d]);
        printf("}");
    }
    printf("]}\n");
    return 0;
}
