/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * A V4V stream echo in C, on libv4v's C API (<v4v/client.h>).
 *
 *   v4v-echo serve PORT [COUNT]   echo every stream (COUNT of them, else forever), one at a time
 *   v4v-echo send DOM:PORT TEXT   send TEXT, half-close, print the echo and how the stream ended
 *
 * The daemon's socket comes from V4V_SOCKET. Build against the installed library:
 *   gcc -o v4v-echo v4v-echo.c $(pkg-config --cflags --libs libv4v)
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <v4v/client.h>

/* Reports how a stream's connection ended: orderly, or the reset and why. */
static int report_end(const char *who, uint64_t id)
{
    int rc = v4v_stream_end(NULL, id);

    if ( rc == 0 )
        fprintf(stderr, "%s: closed orderly\n", who);
    else
        fprintf(stderr, "%s: %s (%s)\n", who, v4v_last_error(), strerror(-rc));
    return rc;
}

static int serve(uint32_t port, long count)
{
    struct v4v_listener *l;
    struct v4v_stream_info info;
    char buf[16384], who[64];
    int rc = v4v_listen(NULL, port, &l);

    if ( rc < 0 )
    {
        fprintf(stderr, "listen: %s\n", v4v_last_error());
        return 1;
    }
    fprintf(stderr, "echoing streams on port %u\n", v4v_listener_port(l));
    while ( count < 0 || count-- > 0 )
    {
        int fd = v4v_accept(l, &info, 0);
        ssize_t n;

        if ( fd < 0 )
        {
            fprintf(stderr, "accept: %s\n", v4v_last_error());
            break;
        }
        snprintf(who, sizeof(who), "%u:%u", info.peer.domid, info.peer.port);
        while ( (n = read(fd, buf, sizeof(buf))) > 0 )
            if ( write(fd, buf, (size_t)n) != n )
                break;
        if ( n == 0 )
            shutdown(fd, SHUT_WR);
        report_end(who, info.id);
        close(fd);
    }
    v4v_listener_close(l);
    return 0;
}

static int send_text(const char *addr, const char *text)
{
    struct v4v_stream_info info;
    struct v4v_addr peer;
    unsigned int dom, port;
    char buf[16384];
    size_t len = strlen(text);
    ssize_t n;
    int fd;

    if ( sscanf(addr, "%u:%u", &dom, &port) != 2 )
    {
        fprintf(stderr, "bad address %s (DOM:PORT)\n", addr);
        return 2;
    }
    peer.domid = (uint16_t)dom;
    peer.port = port;
    fd = v4v_stream_connect(NULL, peer, &info);
    if ( fd < 0 )
    {
        fprintf(stderr, "connect: %s\n", v4v_last_error());
        return 1;
    }
    if ( write(fd, text, len) != (ssize_t)len || shutdown(fd, SHUT_WR) )
        perror("write");
    while ( (n = read(fd, buf, sizeof(buf))) > 0 )
        fwrite(buf, 1, (size_t)n, stdout);
    fflush(stdout);
    n = report_end(addr, info.id);
    close(fd);
    return n == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if ( argc >= 3 && strcmp(argv[1], "serve") == 0 )
        return serve((uint32_t)strtoul(argv[2], NULL, 10),
                     argc > 3 ? strtol(argv[3], NULL, 10) : -1);
    if ( argc == 4 && strcmp(argv[1], "send") == 0 )
        return send_text(argv[2], argv[3]);
    fprintf(stderr, "usage: v4v-echo serve PORT [COUNT] | send DOM:PORT TEXT\n");
    return 2;
}
