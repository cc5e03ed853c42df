/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The C API against a running stack: test_client DOM1-SOCKET DOM2-SOCKET, with one v4vd for
 * domain 1 and one for domain 2. Datagrams (boundaries, attested source, truncation, timeouts,
 * refusal), streams as file descriptors (poll, epoll, half-close, orderly end vs reset), and
 * errors as negative errno with a message. Exits 0 when everything held.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <v4v/client.h>

static int failures;

#define CHECK(cond, ...)                                                    \
    do {                                                                    \
        if ( !(cond) )                                                      \
        {                                                                   \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__,          \
                    __LINE__, #cond);                                       \
            fprintf(stderr, __VA_ARGS__);                                   \
            fprintf(stderr, " (last error: %s)\n", v4v_last_error());       \
            failures++;                                                     \
        }                                                                   \
    } while ( 0 )

static void test_datagrams(const char *d1, const char *d2)
{
    struct v4v_dgram *rx = NULL, *tx = NULL;
    static char big[100000], got[100000];
    struct v4v_addr src, dst;
    int rc;
    size_t i;

    rc = v4v_dgram_bind(d2, 0, V4V_DOMID_ANY, &rx);
    CHECK(rc == 0, "bind rx: %d", rc);
    rc = v4v_dgram_bind(d1, 0, V4V_DOMID_ANY, &tx);
    CHECK(rc == 0, "bind tx: %d", rc);
    if ( !rx || !tx )
        return;
    dst.domid = 2;
    dst.port = v4v_dgram_port(rx);

    for ( i = 0; i < sizeof(big); i++ )
        big[i] = (char)(i * 7);
    CHECK(v4v_dgram_send(tx, "one", 3, dst, 0) == 3, "send one");
    CHECK(v4v_dgram_send(tx, big, sizeof(big), dst, 0) == (int)sizeof(big), "send big");
    CHECK(v4v_dgram_send(tx, "", 0, dst, 0) == 0, "send empty");

    /* Readable through its descriptor. */
    {
        struct pollfd p = { .fd = v4v_dgram_fd(rx), .events = POLLIN };
        CHECK(poll(&p, 1, 10000) == 1, "dgram fd polls readable");
    }
    rc = v4v_dgram_recv(rx, got, sizeof(got), &src, 10000);
    CHECK(rc == 3 && memcmp(got, "one", 3) == 0, "first datagram: %d", rc);
    CHECK(src.domid == 1 && src.port == v4v_dgram_port(tx),
          "attested source %u:%u", src.domid, src.port);
    rc = v4v_dgram_recv(rx, got, sizeof(got), &src, 10000);
    CHECK(rc == (int)sizeof(big) && memcmp(got, big, sizeof(big)) == 0,
          "big datagram whole: %d", rc);
    rc = v4v_dgram_recv(rx, got, sizeof(got), NULL, 10000);
    CHECK(rc == 0, "empty datagram kept: %d", rc);

    /* Truncation reports the whole length; nothing more waits. */
    CHECK(v4v_dgram_send(tx, "0123456789", 10, dst, V4V_NONBLOCK) == 10, "send nowait");
    rc = v4v_dgram_recv(rx, got, 4, NULL, 10000);
    CHECK(rc == 10 && memcmp(got, "0123", 4) == 0, "truncated: %d", rc);
    rc = v4v_dgram_recv(rx, got, sizeof(got), NULL, 0);
    CHECK(rc == -EAGAIN, "nothing there: %d", rc);

    /* Timeout 0 takes a datagram that is there. */
    CHECK(v4v_dgram_send(tx, "now", 3, dst, 0) == 3, "send now");
    {
        struct pollfd p = { .fd = v4v_dgram_fd(rx), .events = POLLIN };
        CHECK(poll(&p, 1, 10000) == 1, "readable");
    }
    rc = v4v_dgram_recv(rx, got, sizeof(got), NULL, 0);
    CHECK(rc == 3 && memcmp(got, "now", 3) == 0, "timeout 0 takes it: %d", rc);
    rc = v4v_dgram_recv(rx, got, sizeof(got), NULL, 50);
    CHECK(rc == -EAGAIN, "nothing in 50 ms: %d", rc);

    /* Nobody there: refused, with a message. */
    dst.port = 59999;
    rc = v4v_dgram_send(tx, "x", 1, dst, 0);
    CHECK(rc == -ECONNREFUSED, "refused: %d", rc);
    CHECK(strlen(v4v_last_error()) > 0, "a message");

    /* Pipelined: sends return at once; the refused one (number 3 of this burst) comes back
     * with its number exactly once, from a later send (which then did not send its own
     * datagram: it is sent again) or from the flush; the others arrive. */
    {
        struct v4v_addr good = dst;
        uint64_t base = v4v_dgram_sent(tx);
        int i, reported = 0;

        good.port = v4v_dgram_port(rx);
        CHECK(v4v_dgram_set_window(tx, 0) == -EINVAL, "window 0 refused");
        CHECK(v4v_dgram_set_window(tx, 64) == 0, "window 64");
        for (i = 0; i < 5; i++) {
            rc = v4v_dgram_send(tx, "piped", 5, i == 2 ? dst : good, 0);
            if ( rc == -ECONNREFUSED && i > 2 && !reported ) {
                CHECK(v4v_dgram_failed_seq(tx) == base + 3, "send %d reports number %llu", i,
                      (unsigned long long)v4v_dgram_failed_seq(tx));
                CHECK(strstr(v4v_last_error(), "was not delivered") != NULL, "%s",
                      v4v_last_error());
                CHECK(v4v_dgram_sent(tx) == base + i, "send %d did not send its own", i);
                reported = 1;
                rc = v4v_dgram_send(tx, "piped", 5, good, 0);
            }
            CHECK(rc == 5, "pipelined send %d: %d", i, rc);
        }
        CHECK(v4v_dgram_sent(tx) == base + 5, "numbered");
        rc = v4v_dgram_flush(tx, 10000);
        if ( !reported ) {
            CHECK(rc == -ECONNREFUSED, "flush reports the refused one: %d", rc);
            CHECK(v4v_dgram_failed_seq(tx) == base + 3, "its number: %llu",
                  (unsigned long long)v4v_dgram_failed_seq(tx));
            CHECK(strstr(v4v_last_error(), "was not delivered") != NULL, "%s", v4v_last_error());
            rc = v4v_dgram_flush(tx, 10000);
        }
        CHECK(rc == 0, "then nothing more: %d", rc);
        CHECK(v4v_dgram_failed_seq(tx) == 0, "no failure");
        for (i = 0; i < 4; i++) {
            rc = v4v_dgram_recv(rx, got, sizeof(got), NULL, 10000);
            CHECK(rc == 5 && memcmp(got, "piped", 5) == 0, "pipelined %d arrived: %d", i, rc);
        }
        CHECK(v4v_dgram_set_window(tx, 1) == 0, "back to one");
    }

    /* The port is taken. */
    {
        struct v4v_dgram *again = NULL;
        rc = v4v_dgram_bind(d2, v4v_dgram_port(rx), V4V_DOMID_ANY, &again);
        CHECK(rc == -EADDRINUSE, "port in use: %d", rc);
        CHECK(again == NULL, "nothing returned");
    }

    v4v_dgram_close(rx);
    v4v_dgram_close(tx);
}

static int read_all(int fd, char *buf, size_t len)
{
    size_t have = 0;

    while ( have < len )
    {
        ssize_t n = read(fd, buf + have, len - have);
        if ( n <= 0 )
            return -1;
        have += (size_t)n;
    }
    return 0;
}

static void test_streams(const char *d1, const char *d2)
{
    struct v4v_listener *l = NULL;
    struct v4v_stream_info ci, si;
    struct v4v_addr peer;
    char buf[256];
    int c, s, rc, ep;
    ssize_t n;

    rc = v4v_listen(d2, 0, &l);
    CHECK(rc == 0, "listen: %d", rc);
    if ( !l )
        return;
    peer.domid = 2;
    peer.port = v4v_listener_port(l);

    rc = v4v_accept(l, &si, V4V_NONBLOCK);
    CHECK(rc == -EAGAIN, "nothing to accept yet: %d", rc);

    /* Orderly: half-close both ways, the end reads as orderly. */
    c = v4v_stream_connect(d1, peer, &ci);
    CHECK(c >= 0, "connect: %d", c);
    CHECK(ci.peer.domid == 2 && ci.peer.port == peer.port, "connect info");
    {
        struct pollfd p = { .fd = v4v_listener_fd(l), .events = POLLIN };
        CHECK(poll(&p, 1, 10000) == 1, "listener polls readable");
    }
    s = v4v_accept(l, &si, 0);
    CHECK(s >= 0, "accept: %d", s);
    CHECK(si.peer.domid == 1 && si.peer.port == ci.local_port,
          "attested connector %u:%u", si.peer.domid, si.peer.port);
    if ( c < 0 || s < 0 )
        return;

    CHECK(write(c, "hello", 5) == 5, "write");
    CHECK(shutdown(c, SHUT_WR) == 0, "half-close");
    ep = epoll_create1(0);
    {
        struct epoll_event ev = { .events = EPOLLIN }, out;
        CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev) == 0, "epoll_ctl");
        CHECK(epoll_wait(ep, &out, 1, 10000) == 1, "stream fd in epoll");
    }
    close(ep);
    CHECK(read_all(s, buf, 5) == 0 && memcmp(buf, "hello", 5) == 0, "read hello");
    n = read(s, buf, sizeof(buf));
    CHECK(n == 0, "end of file after the half-close: %zd", n);
    CHECK(v4v_stream_end(d2, si.id) == 0, "orderly end: %d", v4v_stream_end(d2, si.id));
    /* The other direction still works. */
    CHECK(write(s, "world", 5) == 5, "write back");
    close(s);
    CHECK(read_all(c, buf, 5) == 0 && memcmp(buf, "world", 5) == 0, "read world");
    n = read(c, buf, sizeof(buf));
    CHECK(n == 0, "end of file: %zd", n);
    rc = v4v_stream_end(d1, ci.id);
    CHECK(rc == 0, "orderly end on the connector: %d", rc);
    close(c);

    /* Reset: the connector aborts; the acceptor's end reads as a reset. */
    c = v4v_stream_connect(d1, peer, &ci);
    s = v4v_accept(l, &si, 0);
    CHECK(c >= 0 && s >= 0, "second stream: %d %d", c, s);
    if ( c < 0 || s < 0 )
        return;
    CHECK(write(c, "x", 1) == 1, "write");
    CHECK(read_all(s, buf, 1) == 0, "read x");
    rc = v4v_stream_abort(d1, ci.id);
    CHECK(rc == 0, "abort: %d", rc);
    close(c);
    n = read(s, buf, sizeof(buf));
    CHECK(n <= 0, "the connection ended: %zd", n);
    rc = v4v_stream_end(d2, si.id);
    CHECK(rc == -ECONNRESET, "reset: %d", rc);
    CHECK(strstr(v4v_last_error(), "reset") != NULL, "message: %s", v4v_last_error());
    close(s);

    /* Nobody listens. */
    peer.port = 59998;
    rc = v4v_stream_connect(d1, peer, NULL);
    CHECK(rc == -ECONNREFUSED, "refused: %d", rc);

    v4v_listener_close(l);
    v4v_listener_close(NULL);
}

static void test_bad_input(void)
{
    struct v4v_addr a = { .domid = 1, .port = 1 };

    CHECK(v4v_listen("/nonexistent/v4vd.sock", 0, NULL) == -EINVAL, "NULL out");
    CHECK(v4v_stream_connect("/nonexistent/v4vd.sock", a, NULL) == -ENOENT,
          "no daemon: %d", v4v_stream_connect("/nonexistent/v4vd.sock", a, NULL));
    CHECK(strstr(v4v_last_error(), "unreachable") != NULL, "says so: %s",
          v4v_last_error());
    CHECK(v4v_dgram_send(NULL, "x", 1, a, 0) == -EINVAL, "NULL port");
    CHECK(v4v_accept(NULL, NULL, 0) == -EINVAL, "NULL listener");
}

int main(int argc, char **argv)
{
    if ( argc != 3 )
    {
        fprintf(stderr, "usage: %s DOM1-SOCKET DOM2-SOCKET\n", argv[0]);
        return 2;
    }
    /* Writes to a reset stream fail with EPIPE instead of killing the process. */
    signal(SIGPIPE, SIG_IGN);
    test_datagrams(argv[1], argv[2]);
    test_streams(argv[1], argv[2]);
    test_bad_input();
    if ( failures )
    {
        fprintf(stderr, "%d checks failed\n", failures);
        return 1;
    }
    printf("all C API checks passed\n");
    return 0;
}
