/*
 * bare_relay: the least a userspace UDP relay can do per packet, as a floor for the media
 * benchmark (bench/bare.py). One thread, one epoll; each ready socket gets one recvfrom and
 * the datagram goes out unchanged with one sendto to a fixed destination. The source address
 * is read (a real relay checks it) but not checked,
 * no RTP parsing, no SRTP (the generator does the crypto itself in this mode), no counters.
 * What it costs per packet is what the kernel costs: the price any relay built on the socket
 * API pays before it does anything of its own.
 *
 * Usage: bare_relay LAN_IP WAN_IP FIRST_PORT N PHONE_IP PHONE_PORT PROVIDER_IP PROVIDER_PORT
 *   binds LAN_IP:FIRST_PORT+i and WAN_IP:FIRST_PORT+i for i < N; LAN datagrams go to the
 *   provider, WAN datagrams to the phone. Prints "ready" once every socket is bound.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_EVENTS 1024

static struct sockaddr_in address(const char *ip, int port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
        fprintf(stderr, "bare_relay: bad address %s\n", ip);
        exit(2);
    }
    return a;
}

static int bound(const char *ip, int port) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    int size = 1 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    struct sockaddr_in a = address(ip, port);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        fprintf(stderr, "bare_relay: bind %s:%d: %s\n", ip, port, strerror(errno));
        exit(2);
    }
    return fd;
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: bare_relay LAN_IP WAN_IP FIRST_PORT N PHONE_IP PHONE_PORT "
                        "PROVIDER_IP PROVIDER_PORT\n");
        return 2;
    }
    int first = atoi(argv[3]), n = atoi(argv[4]);
    struct sockaddr_in to_phone = address(argv[5], atoi(argv[6]));
    struct sockaddr_in to_provider = address(argv[7], atoi(argv[8]));
    int epfd = epoll_create1(0);
    /* fd -> where its datagrams go: 0 = provider (a LAN socket), 1 = phone (a WAN socket) */
    int slots = 0;
    unsigned char *side = NULL;
    for (int i = 0; i < n; i++) {
        int fds[2] = {bound(argv[1], first + i), bound(argv[2], first + i)};
        for (int k = 0; k < 2; k++) {
            if (fds[k] >= slots) {
                int grown = (fds[k] + 1) * 2;
                side = realloc(side, (size_t)grown);
                memset(side + slots, 0, (size_t)(grown - slots));
                slots = grown;
            }
            side[fds[k]] = (unsigned char)k;
            struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[k]};
            epoll_ctl(epfd, EPOLL_CTL_ADD, fds[k], &ev);
        }
    }
    printf("ready\n");
    fflush(stdout);
    struct epoll_event events[MAX_EVENTS];
    unsigned char buf[2048];
    for (;;) {
        int ready = epoll_wait(epfd, events, MAX_EVENTS, -1);
        for (int i = 0; i < ready; i++) {
            int fd = events[i].data.fd;
            struct sockaddr_in from; /* read, as any relay that checks sources must */
            socklen_t from_len = sizeof from;
            ssize_t got = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &from_len);
            if (got < 0) continue;
            const struct sockaddr_in *to = side[fd] ? &to_phone : &to_provider;
            (void)sendto(fd, buf, (size_t)got, 0, (const struct sockaddr *)to, sizeof *to);
        }
    }
}
