/* ingest_load.c — B4's load generator: node status messages streamed over loopback TCP
 * to one coordinator (or to bench/ingest_sink, the baseline), and how fast it consumed
 * them.
 *
 *   ingest_load NODE_ADDR TOKEN CONNS SECONDS [HTTP_ADDR CHANGEFEEDS]
 *
 * Setup: a probe connection and CONNS load connections each say HELLO as a distinct node
 * (own id, own node epoch) and wait for WELCOME, then send the bootstrap heartbeat a real
 * node sends (engine/net/node.c). With HTTP_ADDR, CHANGEFEEDS changefeeds are created
 * through the API; the coordinator places their maintainers on these nodes, and every
 * START is answered the way an agent does (a REPORT working), so the cluster is settled
 * before the load starts.
 *
 * Load: each connection streams pre-encoded frames, as fast as its socket takes them, for
 * SECONDS: AGENT heartbeats (amsg 0: acked drain epoch, node epoch) and AGENT reports
 * (amsg 1) about the maintainer the coordinator started on that node (working), or, on a
 * node that runs none, about a task it stopped. These are the status messages a node
 * sends (node.c send_agent_msg). Frames the coordinator sends meanwhile (views) are read
 * and dropped.
 *
 * Measurement: after the load each connection sends one marker, an AGENT message
 * addressed to the probe node. The coordinator routes node-to-node messages in the order
 * it reads them, so a marker reaches the probe only after every frame before it on that
 * connection was consumed. rate = frames sent / (last marker received − first byte sent).
 * The coordinator exposes no frames-received counter (GET /metrics has none), so this
 * round trip is the measurement.
 *
 * Prints one line: `frames=N seconds=S rate=R conns=C frame_bytes=B`. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>

#include "net/client.h"
#include "policy/policy.h"
#include "net/proto.h"

#define CHUNK_FRAMES 1024 /* frames per pre-encoded chunk, written over and over */

typedef struct {
    int fd;
    char node[SL_ID_MAX];
    uint64_t node_epoch;
    uint64_t epoch; /* the drain epoch of WELCOME, acknowledged in heartbeats */
    int welcomed;
    char task[SL_ID_MAX]; /* a maintainer started here, "" for none */
    uint8_t *rbuf;
    size_t rlen, rcap;
    uint8_t *chunk; /* CHUNK_FRAMES frames */
    size_t chunk_len, chunk_off;
    uint64_t sent; /* whole frames sent */
    size_t sent_bytes_in_chunk;
    uint8_t marker[256];
    size_t marker_len, marker_off;
    int done;
} lconn_t;

static sl_frame_item_t *items;
static int markers_seen;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "ingest_load: %s\n", what);
    exit(1);
}

static int parse_addr(const char *s, struct sockaddr_in *sa)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof host) return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)atoi(colon + 1));
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

static void send_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
            struct pollfd pf = {fd, POLLOUT, 0};
            poll(&pf, 1, 1000);
            continue;
        }
        if (w <= 0) die("write failed: the peer closed the connection");
        p += w;
        n -= (size_t)w;
    }
}

static void send_frame(lconn_t *k, const sl_frame_t *f)
{
    uint8_t buf[4096];
    size_t len = 0;
    if (sl_proto_encode(f, buf, sizeof buf, &len)) die("encode failed");
    send_all(k->fd, buf, len);
}

static void agent_frame(lconn_t *k, sl_frame_t *f, int amsg)
{
    memset(f, 0, sizeof *f);
    f->type = SL_FRAME_AGENT;
    f->amsg = (uint8_t)amsg;
    snprintf(f->from, sizeof f->from, "%s", k->node);
    f->node_epoch = k->node_epoch;
    f->epoch = k->epoch;
}

static void report(lconn_t *k, const char *task, int stopped)
{
    sl_frame_t f;
    agent_frame(k, &f, 1);
    snprintf(f.task, sizeof f.task, "%s", task);
    snprintf(f.changefeed, sizeof f.changefeed, "%s", task);
    f.state = (uint8_t)stopped;
    send_frame(k, &f);
}

/* Frames from the coordinator: WELCOME, START answered like an agent, markers counted
 * on the probe, the rest dropped. */
static void on_frame(lconn_t *k, const sl_frame_t *f, int answer_starts)
{
    switch (f->type) {
    case SL_FRAME_WELCOME:
        k->welcomed = 1;
        k->epoch = f->epoch;
        break;
    case SL_FRAME_REJECT:
        fprintf(stderr, "ingest_load: %s rejected: %s\n", k->node, f->reason);
        exit(1);
    case SL_FRAME_START:
        if (!answer_starts) break;
        if (f->kind == SL_TASK_MAINTAINER && !k->task[0])
            snprintf(k->task, sizeof k->task, "%s", f->task);
        report(k, f->task, 0);
        break;
    case SL_FRAME_STOP:
        if (answer_starts) report(k, f->task, 1);
        if (!strcmp(k->task, f->task)) k->task[0] = 0;
        break;
    case SL_FRAME_DRAIN: k->epoch = f->epoch; break;
    case SL_FRAME_AGENT:
        if (!strcmp(f->task, "b4-marker")) markers_seen++;
        break;
    default: break;
    }
}

/* Reads what is there without blocking. Returns -1 when the peer closed. */
static int read_some(lconn_t *k, int answer_starts)
{
    for (;;) {
        if (k->rcap - k->rlen < 65536) {
            k->rcap = k->rcap ? k->rcap * 2 : 262144;
            k->rbuf = realloc(k->rbuf, k->rcap);
            if (!k->rbuf) die("out of memory");
        }
        ssize_t r = read(k->fd, k->rbuf + k->rlen, k->rcap - k->rlen);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) break;
        if (r <= 0) return -1;
        k->rlen += (size_t)r;
    }
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
        if (rc) die(why);
        on_frame(k, &f, answer_starts);
        off += used;
    }
    memmove(k->rbuf, k->rbuf + off, k->rlen - off);
    k->rlen -= off;
    return 0;
}

static void open_conn(lconn_t *k, const struct sockaddr_in *sa, const char *token, const char *node,
                      uint64_t node_epoch)
{
    k->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (k->fd < 0 || connect(k->fd, (const struct sockaddr *)sa, sizeof *sa)) die("connect failed");
    int one = 1;
    setsockopt(k->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(k->fd, F_SETFL, fcntl(k->fd, F_GETFL) | O_NONBLOCK);
    snprintf(k->node, sizeof k->node, "%s", node);
    k->node_epoch = node_epoch;
    sl_frame_t f;
    memset(&f, 0, sizeof f);
    f.type = SL_FRAME_HELLO;
    f.version = SL_PROTO_VERSION;
    snprintf(f.token, sizeof f.token, "%s", token);
    snprintf(f.node, sizeof f.node, "%s", node);
    f.node_epoch = node_epoch;
    snprintf(f.addr, sizeof f.addr, "127.0.0.1:0");
    send_frame(k, &f);
}

/* Reads every connection for `seconds`, answering STARTs, until `until` says stop. */
static void pump(lconn_t *ks, int n, double seconds, int (*until)(lconn_t *, int))
{
    double end = now_s() + seconds;
    struct pollfd *pf = calloc((size_t)n, sizeof *pf);
    while (now_s() < end && !(until && until(ks, n))) {
        for (int i = 0; i < n; i++) pf[i] = (struct pollfd){ks[i].fd, POLLIN, 0};
        poll(pf, (nfds_t)n, 10);
        for (int i = 0; i < n; i++)
            if ((pf[i].revents & (POLLIN | POLLHUP | POLLERR)) && read_some(&ks[i], 1))
                die("the coordinator closed a connection during setup");
    }
    free(pf);
}

static int all_welcomed(lconn_t *ks, int n)
{
    for (int i = 0; i < n; i++)
        if (!ks[i].welcomed) return 0;
    return 1;
}

static void create_changefeeds(const char *http, const char *token, int count)
{
    sl_client_t cl;
    char err[1024];
    if (sl_client_init(&cl, http, token, err, sizeof err)) die(err);
    for (int i = 1; i <= count; i++) {
        char id[32];
        snprintf(id, sizeof id, "b4cf%d", i);
        json_t *body = json_pack("{s:s,s:i}", "changefeed_id", id, "table_count", 16);
        sl_client_response_t res;
        if (sl_client_request(&cl, "POST", "/api/v2/changefeeds", body, &res, err, sizeof err))
            die(err);
        if (res.status != 201 && res.status != 409) {
            fprintf(stderr, "ingest_load: creating %s: HTTP %d %s\n", id, res.status, res.body);
            exit(1);
        }
        sl_client_response_free(&res);
        json_decref(body);
    }
    sl_client_close(&cl);
}

static void build_chunk(lconn_t *k)
{
    size_t cap = CHUNK_FRAMES * 256;
    k->chunk = malloc(cap);
    if (!k->chunk) die("out of memory");
    k->chunk_len = 0;
    for (int i = 0; i < CHUNK_FRAMES; i++) {
        sl_frame_t f;
        if (i % 2 == 0) {
            agent_frame(k, &f, 0); /* heartbeat: nothing new to bootstrap */
        } else {
            agent_frame(k, &f, 1);
            snprintf(f.task, sizeof f.task, "%s", k->task[0] ? k->task : "b4-gone");
            snprintf(f.changefeed, sizeof f.changefeed, "%s", f.task);
            f.state = k->task[0] ? 0 : 1;
        }
        if (sl_proto_encode(&f, k->chunk, cap, &k->chunk_len)) die("encode failed");
    }
}

static void build_marker(lconn_t *k, const char *probe)
{
    sl_frame_t f;
    agent_frame(k, &f, 0);
    snprintf(f.to, sizeof f.to, "%s", probe);
    snprintf(f.task, sizeof f.task, "b4-marker");
    k->marker_len = 0;
    if (sl_proto_encode(&f, k->marker, sizeof k->marker, &k->marker_len)) die("encode failed");
}

int main(int argc, char **argv)
{
    if (argc != 5 && argc != 7) {
        fprintf(stderr, "usage: ingest_load NODE_ADDR TOKEN CONNS SECONDS [HTTP_ADDR CHANGEFEEDS]\n");
        return 2;
    }
    struct sockaddr_in sa;
    if (parse_addr(argv[1], &sa)) die("NODE_ADDR wants 127.0.0.1:PORT");
    const char *token = argv[2];
    int n = atoi(argv[3]);
    double seconds = atof(argv[4]);
    if (n < 1 || seconds <= 0) die("CONNS and SECONDS must be positive");
    items = calloc(SL_PROTO_LIST_MAX, sizeof *items);
    lconn_t *ks = calloc((size_t)n + 1, sizeof *ks); /* ks[n] is the probe */
    if (!items || !ks) die("out of memory");
    uint64_t epoch0 = (uint64_t)time(NULL) * 1000;
    open_conn(&ks[n], &sa, token, "b4-probe", epoch0);
    for (int i = 0; i < n; i++) {
        char id[SL_ID_MAX];
        snprintf(id, sizeof id, "b4-load%d", i + 1);
        open_conn(&ks[i], &sa, token, id, epoch0 + 1 + (uint64_t)i);
    }
    pump(ks, n + 1, 10, all_welcomed);
    if (!all_welcomed(ks, n + 1)) die("no WELCOME within 10 s");
    for (int i = 0; i <= n; i++) {
        sl_frame_t f;
        agent_frame(&ks[i], &f, 0); /* the bootstrap heartbeat: runs nothing yet */
        send_frame(&ks[i], &f);
    }
    if (argc == 7) {
        create_changefeeds(argv[5], token, atoi(argv[6]));
        pump(ks, n + 1, 1.0, NULL); /* starts answered, ops finished */
    } else {
        pump(ks, n + 1, 0.2, NULL);
    }
    for (int i = 0; i < n; i++) {
        build_chunk(&ks[i]);
        build_marker(&ks[i], ks[n].node);
    }
    sl_frame_t hb;
    agent_frame(&ks[n], &hb, 0); /* the probe is heard from just before the load */
    send_frame(&ks[n], &hb);

    struct pollfd *pf = calloc((size_t)n + 1, sizeof *pf);
    double t0 = now_s(), stop_at = t0 + seconds, t_end = 0;
    int loading = 1;
    while (markers_seen < n) {
        double now = now_s();
        if (now > stop_at + 60) die("markers did not come back within 60 s");
        if (loading && now >= stop_at) loading = 0;
        for (int i = 0; i <= n; i++) {
            short ev = POLLIN;
            if (i < n && !ks[i].done) ev |= POLLOUT;
            pf[i] = (struct pollfd){ks[i].fd, ev, 0};
        }
        poll(pf, (nfds_t)n + 1, 5);
        for (int i = 0; i <= n; i++) {
            lconn_t *k = &ks[i];
            if ((pf[i].revents & (POLLIN | POLLHUP | POLLERR)) && read_some(k, 0))
                die("the coordinator closed a connection during the load");
            if (i == n || k->done || !(pf[i].revents & POLLOUT)) continue;
            if (loading || k->chunk_off) { /* whole frames only: finish the chunk */
                for (;;) {
                    ssize_t w = write(k->fd, k->chunk + k->chunk_off, k->chunk_len - k->chunk_off);
                    if (w <= 0) break;
                    k->chunk_off += (size_t)w;
                    if (k->chunk_off == k->chunk_len) {
                        k->chunk_off = 0;
                        k->sent += CHUNK_FRAMES;
                        if (!loading) break;
                    }
                }
                if (k->chunk_off) continue;
                if (loading) continue;
            }
            ssize_t w = write(k->fd, k->marker + k->marker_off, k->marker_len - k->marker_off);
            if (w > 0) k->marker_off += (size_t)w;
            if (k->marker_off == k->marker_len) {
                k->done = 1;
            }
        }
    }
    t_end = now_s();
    uint64_t frames = 0;
    for (int i = 0; i < n; i++) frames += ks[i].sent;
    printf("frames=%llu seconds=%.3f rate=%.0f conns=%d frame_bytes=%.1f\n",
           (unsigned long long)frames, t_end - t0, (double)frames / (t_end - t0), n,
           (double)ks[0].chunk_len / CHUNK_FRAMES);
    for (int i = 0; i <= n; i++) close(ks[i].fd);
    return 0;
}
