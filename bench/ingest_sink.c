/* ingest_sink.c — B4's baseline: the least a libuv process must do to ingest node frames.
 *
 *   ingest_sink HOST:PORT TOKEN
 *
 * The same loop and the same reading as the coordinator (engine/net/coord.c): libuv,
 * 64 KiB reads into a per-connection buffer, every frame decoded by sl_proto_decode.
 * Beyond decoding it does only what bench/ingest_load needs to run: HELLO checked and
 * answered with WELCOME, and AGENT messages addressed to another node (the load's
 * markers) routed to it unchanged. Nothing else is looked at: no core, no views, no logs.
 *
 * Prints `ingest_sink: port=N` once listening; runs until SIGTERM or SIGINT and then
 * prints how many frames it decoded. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "net/proto.h"

typedef struct sconn {
    uv_tcp_t tcp;
    struct sconn *next;
    char node[SL_ID_MAX];
    uint8_t *rbuf;
    size_t rlen, rcap;
} sconn_t;

typedef struct {
    uv_write_t req;
    uv_buf_t buf;
} wreq_t;

static uv_loop_t *loop;
static uv_tcp_t listener;
static uv_signal_t sigterm, sigint;
static sconn_t *conns;
static const char *token;
static sl_frame_item_t *items;
static unsigned long long frames;

static void on_written(uv_write_t *req, int status)
{
    wreq_t *w = (wreq_t *)req;
    free(w->buf.base);
    free(w);
}

static void send_bytes(sconn_t *k, const void *p, size_t n)
{
    wreq_t *w = malloc(sizeof *w);
    char *copy = malloc(n);
    if (!w || !copy) abort();
    memcpy(copy, p, n);
    w->buf = uv_buf_init(copy, (unsigned)n);
    if (uv_write(&w->req, (uv_stream_t *)&k->tcp, &w->buf, 1, on_written)) {
        free(copy);
        free(w);
    }
}

static void on_closed(uv_handle_t *h)
{
    sconn_t *k = h->data;
    free(k->rbuf);
    free(k);
}

static void conn_close(sconn_t *k)
{
    for (sconn_t **pp = &conns; *pp; pp = &(*pp)->next)
        if (*pp == k) {
            *pp = k->next;
            break;
        }
    uv_close((uv_handle_t *)&k->tcp, on_closed);
}

static sconn_t *find(const char *node)
{
    for (sconn_t *k = conns; k; k = k->next)
        if (!strcmp(k->node, node)) return k;
    return NULL;
}

static int on_frame(sconn_t *k, const sl_frame_t *f, const uint8_t *raw, size_t rawlen)
{
    frames++;
    if (!k->node[0]) {
        if (f->type != SL_FRAME_HELLO || strcmp(f->token, token) != 0) return -1;
        snprintf(k->node, sizeof k->node, "%s", f->node);
        sl_frame_t w;
        memset(&w, 0, sizeof w);
        w.type = SL_FRAME_WELCOME;
        w.version = SL_PROTO_VERSION;
        uint8_t buf[512];
        size_t len = 0;
        if (sl_proto_encode(&w, buf, sizeof buf, &len)) return -1;
        send_bytes(k, buf, len);
        return 0;
    }
    if (f->type == SL_FRAME_AGENT && f->to[0]) {
        sconn_t *dst = find(f->to);
        if (dst) send_bytes(dst, raw, rawlen);
    }
    return 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    sconn_t *k = h->data;
    size_t want = 64 * 1024;
    if (k->rcap - k->rlen < want) {
        size_t cap = k->rcap ? k->rcap : want;
        while (cap - k->rlen < want) cap *= 2;
        uint8_t *b = realloc(k->rbuf, cap);
        if (!b) {
            *buf = uv_buf_init(NULL, 0);
            return;
        }
        k->rbuf = b;
        k->rcap = cap;
    }
    *buf = uv_buf_init((char *)k->rbuf + k->rlen, (unsigned)(k->rcap - k->rlen));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    sconn_t *k = s->data;
    if (nread < 0) {
        conn_close(k);
        return;
    }
    k->rlen += (size_t)nread;
    size_t off = 0;
    for (;;) {
        sl_frame_t f;
        f.items = items;
        f.items_cap = SL_PROTO_LIST_MAX;
        size_t used;
        char why[256];
        int rc = sl_proto_decode(k->rbuf + off, k->rlen - off, SL_PROTO_FRAME_MAX, &f, &used, why,
                                 sizeof why);
        if (rc == SL_EAGAIN) break;
        if (rc || on_frame(k, &f, k->rbuf + off, used)) {
            conn_close(k);
            return;
        }
        off += used;
    }
    memmove(k->rbuf, k->rbuf + off, k->rlen - off);
    k->rlen -= off;
}

static void on_connection(uv_stream_t *server, int status)
{
    if (status < 0) return;
    sconn_t *k = calloc(1, sizeof *k);
    if (!k) return;
    uv_tcp_init(loop, &k->tcp);
    k->tcp.data = k;
    if (uv_accept(server, (uv_stream_t *)&k->tcp)) {
        uv_close((uv_handle_t *)&k->tcp, on_closed);
        return;
    }
    uv_tcp_nodelay(&k->tcp, 1);
    k->next = conns;
    conns = k;
    uv_read_start((uv_stream_t *)&k->tcp, on_alloc, on_read);
}

static void on_signal(uv_signal_t *h, int signum)
{
    fprintf(stderr, "ingest_sink: %llu frames decoded\n", frames);
    while (conns) conn_close(conns);
    uv_close((uv_handle_t *)&listener, NULL);
    uv_close((uv_handle_t *)&sigterm, NULL);
    uv_close((uv_handle_t *)&sigint, NULL);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: ingest_sink HOST:PORT TOKEN\n");
        return 2;
    }
    token = argv[2];
    items = calloc(SL_PROTO_LIST_MAX, sizeof *items);
    char host[64];
    const char *colon = strrchr(argv[1], ':');
    if (!items || !colon || (size_t)(colon - argv[1]) >= sizeof host) return 2;
    snprintf(host, sizeof host, "%.*s", (int)(colon - argv[1]), argv[1]);
    struct sockaddr_in sa;
    if (uv_ip4_addr(host, atoi(colon + 1), &sa)) return 2;
    signal(SIGPIPE, SIG_IGN);
    loop = uv_default_loop();
    uv_tcp_init(loop, &listener);
    int rc = uv_tcp_bind(&listener, (const struct sockaddr *)&sa, 0);
    if (!rc) rc = uv_listen((uv_stream_t *)&listener, 128, on_connection);
    if (rc) {
        fprintf(stderr, "ingest_sink: listen %s: %s\n", argv[1], uv_strerror(rc));
        return 1;
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    uv_tcp_getsockname(&listener, (struct sockaddr *)&bound, &blen);
    printf("ingest_sink: port=%d\n", ntohs(((struct sockaddr_in *)&bound)->sin_port));
    fflush(stdout);
    uv_signal_init(loop, &sigterm);
    uv_signal_init(loop, &sigint);
    uv_signal_start(&sigterm, on_signal, SIGTERM);
    uv_signal_start(&sigint, on_signal, SIGINT);
    uv_run(loop, UV_RUN_DEFAULT);
    return 0;
}
