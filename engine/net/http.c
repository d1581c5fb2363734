/* http.c — HTTP/1.1 server on libuv with http_parser and jansson (A1, A3, A4; serves the
 * D1–D13 routes that persist before they answer, D4).
 *
 * One connection = one parser, one read timer, one write timer. Requests are handled as
 * soon as the parser completes them, synchronously, so pipelined requests are answered in
 * order by construction (libuv keeps write order). Everything a client can make the
 * server hold is bounded: URL, headers, body, unsent responses (reading pauses), time per
 * phase. A connection that must close after an error first sends its answer, then shuts
 * down its write side and drains input for a short linger, so the client reads the error
 * instead of a reset. Route matching, auth and error bodies live in router.c. */
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <http_parser.h>

#include "http.h"

#define READ_BUF_SIZE (64 * 1024)

enum phase {
    PH_IDLE,    /* between requests (keep-alive) */
    PH_HEADERS, /* request line and headers arriving */
    PH_BODY,    /* body arriving */
    PH_CLOSING, /* answer sent or being sent; no more parsing */
};

typedef struct {
    char *data;
    size_t len, cap;
} growbuf_t;

typedef struct conn conn_t;

struct sl_http_server {
    uv_loop_t *loop;
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
        uv_stream_t stream;
        uv_handle_t handle;
    } listener;
    int is_unix;
    char *unix_path;
    sl_http_config_t cfg;
    sl_http_handler_fn handler;
    void *arg;
    conn_t *conns; /* doubly linked */
    unsigned nconns;
    int closing;
    int listener_closed;
    /* timed-out connections are said at most once a second, with how many more there
     * were: a crowd of idle or slow clients must not flood the log */
    uint64_t timeout_logged_ms;
    unsigned timeouts_unsaid;
    char readbuf[READ_BUF_SIZE]; /* shared: read callbacks consume it synchronously */
};

struct conn {
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
        uv_stream_t stream;
        uv_handle_t handle;
    } h;
    uv_timer_t read_timer;
    uv_timer_t write_timer;
    uv_shutdown_t shutdown_req;
    sl_http_server_t *srv;
    conn_t *prev, *next;
    http_parser parser;
    enum phase phase;
    int handles_open; /* close callbacks still to come before the conn can be freed */
    int closing;      /* uv_close issued */
    int reading;
    int eof;
    int close_after_write; /* shut down once every queued response is written */
    int linger;       /* shut down: input is read and dropped */
    int shutdown_started;
    size_t writes_pending;

    /* the request being parsed */
    growbuf_t url;
    growbuf_t hdrs; /* name\0value\0 pairs */
    size_t nheaders;
    int in_value;   /* the last header callback was a value */
    size_t header_bytes;
    growbuf_t body;
    int expect_continue;
};

typedef struct {
    uv_write_t req;
    conn_t *conn;
    char *data;
} write_req_t;

static void conn_log(conn_t *c, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void conn_close(conn_t *c);
static void conn_maybe_finish(conn_t *c);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf);
static void server_maybe_free(sl_http_server_t *srv);

void sl_http_config_default(sl_http_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->max_body = 1024 * 1024;
    cfg->max_header_bytes = 32 * 1024;
    cfg->max_url = 8 * 1024;
    cfg->max_headers = 100;
    cfg->header_timeout_ms = 10000;
    cfg->body_timeout_ms = 10000;
    cfg->idle_timeout_ms = 60000;
    cfg->write_timeout_ms = 10000;
    cfg->linger_ms = 1000;
    cfg->max_connections = 1024;
    cfg->max_write_queue = 1024 * 1024;
}

static void conn_log(conn_t *c, int level, const char *fmt, ...)
{
    char msg[SL_ERRMSG_MAX];
    va_list ap;
    if (c->srv->cfg.log == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    c->srv->cfg.log(c->srv->cfg.log_arg, level, msg);
}

/* Stops the parser at the current byte. http_parser refuses (asserts) to pause a parser
 * that is already in an error state, which stops it just as well. */
static void parser_stop(http_parser *p)
{
    if (HTTP_PARSER_ERRNO(p) == HPE_OK)
        http_parser_pause(p, 1);
}

/* ---- buffers --------------------------------------------------------------------------- */

/* Appends, keeping a NUL after the data; refuses to grow past `limit` bytes of data. */
static int growbuf_append(growbuf_t *b, const char *data, size_t len, size_t limit)
{
    if (len > limit || b->len > limit - len)
        return SL_ELIMIT;
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + len + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (d == NULL)
            return SL_ENOMEM;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

static void growbuf_free(growbuf_t *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

/* Keeps small buffers for the next request; gives large ones back. */
static void growbuf_reset(growbuf_t *b)
{
    if (b->cap > 64 * 1024)
        growbuf_free(b);
    b->len = 0;
    if (b->data != NULL)
        b->data[0] = '\0';
}

/* ---- timers ---------------------------------------------------------------------------- */

static void on_read_timeout(uv_timer_t *t)
{
    conn_t *c = t->data;
    static const char *const names[] = {"idle keep-alive", "slow headers", "slow body",
                                        "linger"};
    sl_http_server_t *srv = c->srv;
    uint64_t now = uv_now(srv->loop);
    if (c->phase == PH_IDLE) {
        conn_log(c, 0, "http: connection closed: %s timeout", names[c->phase]);
    } else if (srv->timeout_logged_ms && now - srv->timeout_logged_ms < 1000) {
        srv->timeouts_unsaid++;
    } else {
        if (srv->timeouts_unsaid)
            conn_log(c, 2, "http: connection closed: %s timeout (and %u more timed out in the "
                     "last second)", names[c->phase], srv->timeouts_unsaid);
        else
            conn_log(c, 2, "http: connection closed: %s timeout", names[c->phase]);
        srv->timeout_logged_ms = now;
        srv->timeouts_unsaid = 0;
    }
    conn_close(c);
}

static void on_write_timeout(uv_timer_t *t)
{
    conn_t *c = t->data;
    conn_log(c, 2, "http: connection closed: client stopped reading (%zu responses unsent)",
             c->writes_pending);
    conn_close(c);
}

static void arm_read_timer(conn_t *c, uint64_t ms)
{
    if (!c->closing)
        uv_timer_start(&c->read_timer, on_read_timeout, ms ? ms : 1, 0);
}

/* ---- writing --------------------------------------------------------------------------- */

static void on_shutdown(uv_shutdown_t *req, int status)
{
    conn_t *c = req->data;
    if (status < 0 || c->eof)
        conn_close(c); /* the client is gone already, or had closed its side */
}

/* Once nothing is left to write on a closing connection: half-close, then drain input
 * until the client closes too or the linger time runs out. */
static void conn_maybe_finish(conn_t *c)
{
    if (c->closing || !c->close_after_write || c->writes_pending > 0 || c->shutdown_started)
        return;
    c->shutdown_started = 1;
    c->linger = 1;
    c->phase = PH_CLOSING;
    if (c->eof || c->srv->closing) {
        conn_close(c);
        return;
    }
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, &c->h.stream, on_shutdown) != 0) {
        conn_close(c);
        return;
    }
    if (!c->reading && uv_read_start(&c->h.stream, on_alloc, on_read) == 0)
        c->reading = 1;
    uv_timer_start(&c->read_timer, on_read_timeout, c->srv->cfg.linger_ms ? c->srv->cfg.linger_ms : 1,
                   0);
}

static void on_write(uv_write_t *req, int status)
{
    write_req_t *w = (write_req_t *)req;
    conn_t *c = w->conn;
    free(w->data);
    free(w);
    c->writes_pending--;
    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (c->writes_pending > 0)
        uv_timer_start(&c->write_timer, on_write_timeout, c->srv->cfg.write_timeout_ms, 0);
    else
        uv_timer_stop(&c->write_timer);
    /* reading paused for backpressure resumes once the queue has drained */
    if (!c->reading && !c->eof && !c->close_after_write &&
        uv_stream_get_write_queue_size(&c->h.stream) == 0) {
        if (uv_read_start(&c->h.stream, on_alloc, on_read) == 0)
            c->reading = 1;
    }
    conn_maybe_finish(c);
}

static const char *status_reason(int status)
{
    const char *s = http_status_str((enum http_status)status);
    return s != NULL && strcmp(s, "<unknown>") != 0 ? s : "Unknown";
}

/* Queues one response. `head_only`: HEAD — headers with the body's Content-Length, no
 * body. Takes res->body. */
static void conn_send(conn_t *c, sl_http_response_t *res, int head_only, int keep_alive,
                      int http10)
{
    char head[1024];
    int status = res->status;
    if (c->closing) {
        free(res->body);
        res->body = NULL;
        return;
    }
    if (res->body == NULL)
        res->body_len = 0;
    const char *conn_hdr = "";
    if (!keep_alive)
        conn_hdr = "Connection: close\r\n";
    else if (http10)
        conn_hdr = "Connection: keep-alive\r\n";
    /* RFC 9110: no Content-Length (and no body) with 1xx or 204 */
    int no_length = (status >= 100 && status < 200) || status == 204;
    if (no_length)
        head_only = 1;
    int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\n%s%s%s%s", status,
                     status_reason(status), res->content_type[0] ? "Content-Type: " : "",
                     res->content_type, res->content_type[0] ? "\r\n" : "", conn_hdr);
    if (!no_length)
        n += snprintf(head + n, sizeof head - (size_t)n, "Content-Length: %zu\r\n", res->body_len);
    size_t body_len = head_only ? 0 : res->body_len;
    size_t total = (size_t)n + res->headers_len + 2 + body_len;
    write_req_t *w = calloc(1, sizeof *w);
    char *data = malloc(total);
    if (w == NULL || data == NULL) {
        free(w);
        free(data);
        free(res->body);
        res->body = NULL;
        conn_close(c);
        return;
    }
    memcpy(data, head, (size_t)n);
    memcpy(data + n, res->headers, res->headers_len);
    memcpy(data + n + res->headers_len, "\r\n", 2);
    if (body_len)
        memcpy(data + n + res->headers_len + 2, res->body, body_len);
    free(res->body);
    res->body = NULL;

    w->conn = c;
    w->data = data;
    uv_buf_t buf = uv_buf_init(data, (unsigned)total);
    /* Nothing queued: try the socket at once. A response that fits (on loopback, nearly
     * all) costs one write(2) and no write request, callback or epoll change (B5). */
    size_t done = 0;
    if (c->writes_pending == 0) {
        int r = uv_try_write(&c->h.stream, &buf, 1);
        if (r > 0) {
            done = (size_t)r;
        } else if (r != UV_EAGAIN && r != UV_ENOSYS) {
            free(data);
            free(w);
            conn_close(c);
            return;
        }
    }
    if (done == total) {
        free(data);
        free(w);
        if (!keep_alive)
            c->close_after_write = 1; /* the caller's conn_maybe_finish closes it */
        return;
    }
    buf = uv_buf_init(data + done, (unsigned)(total - done));
    if (uv_write(&w->req, &c->h.stream, &buf, 1, on_write) != 0) {
        free(data);
        free(w);
        conn_close(c);
        return;
    }
    if (c->writes_pending++ == 0)
        uv_timer_start(&c->write_timer, on_write_timeout, c->srv->cfg.write_timeout_ms, 0);
    if (!keep_alive)
        c->close_after_write = 1;
    /* a client that pipelines without reading: stop reading until it catches up */
    if (c->reading && !c->close_after_write &&
        uv_stream_get_write_queue_size(&c->h.stream) > c->srv->cfg.max_write_queue) {
        uv_read_stop(&c->h.stream);
        c->reading = 0;
    }
}

/* Answers with a JSON error and closes (after the answer and a linger). */
static void conn_fail(conn_t *c, int status, const char *code, const char *msg)
{
    sl_http_response_t res;
    memset(&res, 0, sizeof res);
    sl_http_respond_error(&res, status, code, "%s", msg);
    conn_log(c, 1, "http: %d %s: %s", status, code, msg);
    c->phase = PH_CLOSING;
    uv_timer_stop(&c->read_timer);
    conn_send(c, &res, 0, 0, 0);
    parser_stop(&c->parser);
    conn_maybe_finish(c);
}

/* ---- parser callbacks ------------------------------------------------------------------ */

static void request_reset(conn_t *c)
{
    growbuf_reset(&c->url);
    growbuf_reset(&c->hdrs);
    growbuf_reset(&c->body);
    c->nheaders = 0;
    c->in_value = 0;
    c->header_bytes = 0;
    c->expect_continue = 0;
}

static int on_message_begin(http_parser *p)
{
    conn_t *c = p->data;
    request_reset(c);
    if (c->phase == PH_IDLE)
        arm_read_timer(c, c->srv->cfg.header_timeout_ms);
    c->phase = PH_HEADERS;
    return 0;
}

static int count_header_bytes(conn_t *c, size_t len)
{
    c->header_bytes += len;
    if (c->header_bytes > c->srv->cfg.max_header_bytes) {
        conn_fail(c, 431, "HEADERS_TOO_LARGE", "request headers are larger than the limit");
        return -1;
    }
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    if (count_header_bytes(c, len) != 0)
        return 0;
    int rc = growbuf_append(&c->url, at, len, c->srv->cfg.max_url);
    if (rc == SL_ELIMIT)
        conn_fail(c, 414, "URI_TOO_LONG", "request target is longer than the limit");
    else if (rc != 0)
        conn_fail(c, 500, "INTERNAL", "out of memory");
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    if (count_header_bytes(c, len) != 0)
        return 0;
    int rc = 0;
    if (c->in_value || c->nheaders == 0) {
        /* a new header: close the previous value, start a name */
        if (c->nheaders > 0)
            rc = growbuf_append(&c->hdrs, "", 1, SIZE_MAX / 2);
        if (rc == 0 && ++c->nheaders > c->srv->cfg.max_headers) {
            conn_fail(c, 431, "HEADERS_TOO_LARGE", "too many request headers");
            return 0;
        }
        c->in_value = 0;
    }
    if (rc == 0)
        rc = growbuf_append(&c->hdrs, at, len, SIZE_MAX / 2);
    if (rc != 0)
        conn_fail(c, 500, "INTERNAL", "out of memory");
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    if (count_header_bytes(c, len) != 0)
        return 0;
    int rc = 0;
    if (!c->in_value) {
        rc = growbuf_append(&c->hdrs, "", 1, SIZE_MAX / 2); /* end of the name */
        c->in_value = 1;
    }
    if (rc == 0)
        rc = growbuf_append(&c->hdrs, at, len, SIZE_MAX / 2);
    if (rc != 0)
        conn_fail(c, 500, "INTERNAL", "out of memory");
    return 0;
}

/* Walks the name\0value\0 arena; a header without a value gets "". */
static size_t headers_index(conn_t *c, sl_http_kv_t *out, size_t max)
{
    size_t n = 0;
    const char *p = c->hdrs.data, *end = c->hdrs.data + c->hdrs.len;
    if (p == NULL)
        return 0;
    while (p < end && n < max) {
        out[n].name = p;
        p += strlen(p) + 1;
        if (p <= end) {
            out[n].value = p < end ? p : "";
            p += p < end ? strlen(p) + 1 : 0;
        } else {
            out[n].value = "";
        }
        n++;
    }
    return n;
}

static const char *find_header(conn_t *c, const char *name)
{
    const char *p = c->hdrs.data, *end = c->hdrs.data + c->hdrs.len;
    if (p == NULL)
        return NULL;
    while (p < end) {
        const char *value = p + strlen(p) + 1;
        if (value > end)
            break;
        if (strcasecmp(p, name) == 0)
            return value < end ? value : "";
        p = value < end ? value + strlen(value) + 1 : end;
    }
    return NULL;
}

static int on_headers_complete(http_parser *p)
{
    conn_t *c = p->data;
    const sl_http_config_t *cfg = &c->srv->cfg;
    if (c->in_value || c->nheaders == 0) {
        if (c->nheaders > 0 && growbuf_append(&c->hdrs, "", 1, SIZE_MAX / 2) != 0) {
            conn_fail(c, 500, "INTERNAL", "out of memory");
            return 0;
        }
    } else if (growbuf_append(&c->hdrs, "\0", 2, SIZE_MAX / 2) != 0) { /* name, no value */
        conn_fail(c, 500, "INTERNAL", "out of memory");
        return 0;
    }
    if (p->http_major != 1) {
        conn_fail(c, 505, "HTTP_VERSION_NOT_SUPPORTED", "only HTTP/1.0 and HTTP/1.1 are served");
        return 0;
    }
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > cfg->max_body) {
        char msg[128];
        snprintf(msg, sizeof msg, "request body of %llu bytes is larger than the limit of %zu",
                 (unsigned long long)p->content_length, cfg->max_body);
        conn_fail(c, 413, "BODY_TOO_LARGE", msg);
        return 0;
    }
    c->phase = PH_BODY;
    arm_read_timer(c, cfg->body_timeout_ms);
    const char *expect = find_header(c, "Expect");
    if (expect != NULL && strcasecmp(expect, "100-continue") == 0 && p->http_minor >= 1 &&
        p->content_length > 0) {
        static char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        write_req_t *w = calloc(1, sizeof *w);
        char *data = w ? malloc(sizeof cont - 1) : NULL;
        if (data == NULL) {
            free(w);
            conn_fail(c, 500, "INTERNAL", "out of memory");
            return 0;
        }
        memcpy(data, cont, sizeof cont - 1);
        w->conn = c;
        w->data = data;
        uv_buf_t buf = uv_buf_init(data, sizeof cont - 1);
        if (uv_write(&w->req, &c->h.stream, &buf, 1, on_write) != 0) {
            free(data);
            free(w);
            conn_close(c);
            parser_stop(p);
            return 0;
        }
        if (c->writes_pending++ == 0)
            uv_timer_start(&c->write_timer, on_write_timeout, cfg->write_timeout_ms, 0);
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    int rc = growbuf_append(&c->body, at, len, c->srv->cfg.max_body);
    if (rc == SL_ELIMIT) {
        char msg[128];
        snprintf(msg, sizeof msg, "request body is larger than the limit of %zu bytes",
                 c->srv->cfg.max_body);
        conn_fail(c, 413, "BODY_TOO_LARGE", msg);
    } else if (rc != 0) {
        conn_fail(c, 500, "INTERNAL", "out of memory");
    }
    return 0;
}

static int on_message_complete(http_parser *p)
{
    conn_t *c = p->data;
    sl_http_server_t *srv = c->srv;
    sl_http_request_t req;
    sl_http_response_t res;
    sl_http_kv_t headers[256];
    char *parts = NULL;
    struct http_parser_url u;

    memset(&req, 0, sizeof req);
    memset(&res, 0, sizeof res);
    uv_timer_stop(&c->read_timer);

    const char *url = c->url.data ? c->url.data : "";
    http_parser_url_init(&u);
    if (http_parser_parse_url(url, c->url.len, p->method == HTTP_CONNECT, &u) != 0 ||
        !(u.field_set & (1 << UF_PATH))) {
        conn_fail(c, 400, "BAD_REQUEST", "malformed request target");
        return 0;
    }
    /* path\0query\0, split by the parser's own URL reader */
    size_t plen = u.field_data[UF_PATH].len;
    size_t qlen = (u.field_set & (1 << UF_QUERY)) ? u.field_data[UF_QUERY].len : 0;
    parts = malloc(plen + qlen + 2);
    if (parts == NULL) {
        conn_fail(c, 500, "INTERNAL", "out of memory");
        return 0;
    }
    memcpy(parts, url + u.field_data[UF_PATH].off, plen);
    parts[plen] = '\0';
    if (qlen)
        memcpy(parts + plen + 1, url + u.field_data[UF_QUERY].off, qlen);
    parts[plen + 1 + qlen] = '\0';

    req.method = http_method_str((enum http_method)p->method);
    req.url = url;
    req.path = parts;
    req.query = parts + plen + 1;
    req.nheaders = headers_index(c, headers, sizeof headers / sizeof headers[0]);
    req.headers = headers;
    req.authorization = find_header(c, "Authorization");
    req.content_type = find_header(c, "Content-Type");
    req.body = c->body.data ? c->body.data : "";
    req.body_len = c->body.len;
    req.http_major = p->http_major;
    req.http_minor = p->http_minor;
    req.via_unix = srv->is_unix;

    int keep_alive = http_should_keep_alive(p) && !srv->closing && !p->upgrade;
    srv->handler(srv->arg, &req, &res);
    if (res.status < 100 || res.status > 999) {
        free(res.body);
        memset(&res, 0, sizeof res);
        sl_http_respond_error(&res, 500, "INTERNAL", "the handler gave no answer");
    }
    if (res.close || srv->closing)
        keep_alive = 0;
    conn_send(c, &res, p->method == HTTP_HEAD, keep_alive, p->http_major == 1 && p->http_minor == 0);
    free(parts);
    request_reset(c);
    if (c->closing)
        return 0;
    if (!keep_alive) {
        c->phase = PH_CLOSING;
        parser_stop(p);
        conn_maybe_finish(c);
        return 0;
    }
    c->phase = PH_IDLE;
    arm_read_timer(c, srv->cfg.idle_timeout_ms);
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- reading --------------------------------------------------------------------------- */

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    conn_t *c = handle->data;
    buf->base = c->srv->readbuf;
    buf->len = sizeof c->srv->readbuf;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = stream->data;
    if (c->closing)
        return;
    if (nread < 0) {
        c->eof = 1;
        uv_read_stop(stream);
        c->reading = 0;
        if (nread != UV_EOF || c->linger || c->writes_pending == 0 ||
            c->phase == PH_HEADERS || c->phase == PH_BODY) {
            conn_close(c);
            return;
        }
        /* the client half-closed after its requests: answer them, then close */
        c->close_after_write = 1;
        conn_maybe_finish(c);
        return;
    }
    if (nread == 0 || c->linger || c->phase == PH_CLOSING)
        return; /* lingering or already answering a closing error: input is dropped */

    size_t done = http_parser_execute(&c->parser, &parser_settings, buf->base, (size_t)nread);
    if (c->closing || c->phase == PH_CLOSING)
        return;
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (e == HPE_PAUSED)
        return;
    if (e != HPE_OK) {
        char msg[160];
        if (e == HPE_HEADER_OVERFLOW) {
            conn_fail(c, 431, "HEADERS_TOO_LARGE", "request headers are larger than the limit");
            return;
        }
        snprintf(msg, sizeof msg, "malformed request: %s", http_errno_description(e));
        conn_fail(c, 400, "BAD_REQUEST", msg);
        return;
    }
    if (c->parser.upgrade || done != (size_t)nread) {
        /* an Upgrade or CONNECT request was answered; the rest is not HTTP we speak */
        c->close_after_write = 1;
        c->phase = PH_CLOSING;
        conn_maybe_finish(c);
    }
}

/* ---- connection lifetime --------------------------------------------------------------- */

static void conn_free(conn_t *c)
{
    sl_http_server_t *srv = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->nconns--;
    growbuf_free(&c->url);
    growbuf_free(&c->hdrs);
    growbuf_free(&c->body);
    free(c);
    server_maybe_free(srv);
}

static void on_conn_handle_closed(uv_handle_t *h)
{
    conn_t *c = h->data;
    if (--c->handles_open == 0)
        conn_free(c);
}

static void conn_close(conn_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->phase = PH_CLOSING;
    parser_stop(&c->parser);
    uv_close((uv_handle_t *)&c->read_timer, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->write_timer, on_conn_handle_closed);
    uv_close(&c->h.handle, on_conn_handle_closed);
}

static void on_connection(uv_stream_t *listener, int status)
{
    sl_http_server_t *srv = listener->data;
    conn_t *c;
    int rc;
    if (status < 0 || srv->closing)
        return;
    c = calloc(1, sizeof *c);
    if (c == NULL)
        return; /* the pending connection stays in the backlog; retried on the next event */
    c->srv = srv;
    if (srv->is_unix)
        rc = uv_pipe_init(srv->loop, &c->h.pipe, 0);
    else
        rc = uv_tcp_init(srv->loop, &c->h.tcp);
    if (rc != 0) {
        free(c);
        return;
    }
    c->h.handle.data = c;
    uv_timer_init(srv->loop, &c->read_timer);
    uv_timer_init(srv->loop, &c->write_timer);
    c->read_timer.data = c;
    c->write_timer.data = c;
    c->handles_open = 3;
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;

    if (uv_accept(listener, &c->h.stream) != 0) {
        conn_close(c);
        return;
    }
    if (!srv->is_unix) {
        uv_tcp_nodelay(&c->h.tcp, 1);
        uv_tcp_keepalive(&c->h.tcp, 1, 30); /* half-open peers are found by the kernel too */
    }
    if (srv->nconns > srv->cfg.max_connections) {
        conn_log(c, 2, "http: too many connections (%u): refused one", srv->nconns - 1);
        conn_fail(c, 503, "TOO_MANY_CONNECTIONS", "the server has too many open connections");
        return;
    }
    if (uv_read_start(&c->h.stream, on_alloc, on_read) != 0) {
        conn_close(c);
        return;
    }
    c->reading = 1;
    c->phase = PH_HEADERS; /* a new connection owes its first request within the header time */
    arm_read_timer(c, srv->cfg.header_timeout_ms);
}

/* ---- server ---------------------------------------------------------------------------- */

static void server_maybe_free(sl_http_server_t *srv)
{
    if (!srv->closing || !srv->listener_closed || srv->conns != NULL)
        return;
    free(srv->unix_path);
    free(srv);
}

static void on_listener_closed(uv_handle_t *h)
{
    sl_http_server_t *srv = h->data;
    srv->listener_closed = 1;
    server_maybe_free(srv);
}

static int server_new(uv_loop_t *loop, const sl_http_config_t *cfg, sl_http_handler_fn handler,
                      void *arg, sl_http_server_t **out)
{
    sl_http_server_t *srv = calloc(1, sizeof *srv);
    if (srv == NULL)
        return SL_ENOMEM;
    srv->loop = loop;
    if (cfg != NULL)
        srv->cfg = *cfg;
    else
        sl_http_config_default(&srv->cfg);
    srv->handler = handler;
    srv->arg = arg;
    *out = srv;
    return 0;
}

/* Frees a server whose listener was initialised but never accepted anything. */
static void server_abort(sl_http_server_t *srv)
{
    srv->closing = 1;
    uv_close(&srv->listener.handle, on_listener_closed);
}

/* "host:port", "[v6]:port" */
static int parse_addr(const char *addr, struct sockaddr_storage *ss, char *err, size_t errlen)
{
    char host[256];
    const char *colon = strrchr(addr, ':');
    const char *hstart = addr;
    size_t hlen;
    char *end;
    if (colon == NULL || colon[1] == '\0')
        goto bad;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || errno != 0 || port < 0 || port > 65535)
        goto bad;
    hlen = (size_t)(colon - addr);
    if (hlen >= 2 && addr[0] == '[' && colon[-1] == ']') {
        hstart = addr + 1;
        hlen -= 2;
    }
    if (hlen == 0 || hlen >= sizeof host)
        goto bad;
    memcpy(host, hstart, hlen);
    host[hlen] = '\0';
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0 ||
        uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0)
        return 0;
    /* a name ("localhost"): its first address, resolved once, now */
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    int gai = getaddrinfo(host, NULL, &hints, &res);
    if (gai != 0 || res == NULL || res->ai_addrlen > sizeof *ss) {
        snprintf(err, errlen, "http: listen %s: cannot resolve %s: %s", addr, host,
                 gai ? gai_strerror(gai) : "no address");
        if (res)
            freeaddrinfo(res);
        return SL_EINVAL;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
    freeaddrinfo(res);
    return 0;
bad:
    snprintf(err, errlen, "http: listen %s: not an address (want HOST:PORT, [V6]:PORT or unix:PATH)",
             addr);
    return SL_EINVAL;
}

int sl_http_listen(uv_loop_t *loop, const char *addr, const sl_http_config_t *cfg,
                   sl_http_handler_fn handler, void *arg, sl_http_server_t **out, char *err,
                   size_t errlen)
{
    sl_http_server_t *srv = NULL;
    struct sockaddr_storage ss;
    char dummy[1];
    int rc;

    if (err == NULL || errlen == 0) {
        err = dummy;
        errlen = sizeof dummy;
    }
    err[0] = '\0';
    if (loop == NULL || addr == NULL || handler == NULL || out == NULL) {
        snprintf(err, errlen, "http: listen: missing argument");
        return SL_EINVAL;
    }
    *out = NULL;
    if (strncmp(addr, "unix:", 5) == 0)
        return sl_http_listen_unix(loop, addr + 5, cfg, handler, arg, out, err, errlen);
    memset(&ss, 0, sizeof ss);
    if ((rc = parse_addr(addr, &ss, err, errlen)) != 0)
        return rc;
    if ((rc = server_new(loop, cfg, handler, arg, &srv)) != 0) {
        snprintf(err, errlen, "http: listen %s: out of memory", addr);
        return rc;
    }
    if ((rc = uv_tcp_init(loop, &srv->listener.tcp)) != 0) {
        free(srv);
        goto fail;
    }
    srv->listener.handle.data = srv;
    if ((rc = uv_tcp_bind(&srv->listener.tcp, (const struct sockaddr *)&ss, 0)) != 0 ||
        (rc = uv_listen(&srv->listener.stream, 511, on_connection)) != 0) {
        server_abort(srv);
        goto fail;
    }
    *out = srv;
    return 0;
fail:
    snprintf(err, errlen, "http: listen %s: %s", addr, uv_strerror(rc));
    return rc == UV_ENOMEM ? SL_ENOMEM : SL_EINVAL;
}

int sl_http_listen_unix(uv_loop_t *loop, const char *path, const sl_http_config_t *cfg,
                        sl_http_handler_fn handler, void *arg, sl_http_server_t **out, char *err,
                        size_t errlen)
{
    sl_http_server_t *srv = NULL;
    struct stat st;
    char dummy[1];
    int rc;

    if (err == NULL || errlen == 0) {
        err = dummy;
        errlen = sizeof dummy;
    }
    err[0] = '\0';
    if (loop == NULL || path == NULL || path[0] == '\0' || handler == NULL || out == NULL) {
        snprintf(err, errlen, "http: listen unix: missing argument");
        return SL_EINVAL;
    }
    *out = NULL;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            snprintf(err, errlen, "http: listen unix:%s: a file that is not a socket is there",
                     path);
            return SL_EEXIST;
        }
        unlink(path); /* a socket left by a previous run */
    }
    if ((rc = server_new(loop, cfg, handler, arg, &srv)) != 0) {
        snprintf(err, errlen, "http: listen unix:%s: out of memory", path);
        return rc;
    }
    srv->is_unix = 1;
    if ((srv->unix_path = strdup(path)) == NULL) {
        free(srv);
        snprintf(err, errlen, "http: listen unix:%s: out of memory", path);
        return SL_ENOMEM;
    }
    if ((rc = uv_pipe_init(loop, &srv->listener.pipe, 0)) != 0) {
        free(srv->unix_path);
        free(srv);
        goto fail;
    }
    srv->listener.handle.data = srv;
    if ((rc = uv_pipe_bind(&srv->listener.pipe, path)) != 0) {
        server_abort(srv);
        goto fail;
    }
    /* Bound but not yet listening: nobody can connect before the mode is 0600. */
    if (chmod(path, 0600) != 0) {
        rc = uv_translate_sys_error(errno);
        unlink(path);
        server_abort(srv);
        goto fail;
    }
    if ((rc = uv_listen(&srv->listener.stream, 128, on_connection)) != 0) {
        unlink(path);
        server_abort(srv);
        goto fail;
    }
    *out = srv;
    return 0;
fail:
    snprintf(err, errlen, "http: listen unix:%s: %s", path, uv_strerror(rc));
    return rc == UV_ENOMEM ? SL_ENOMEM : SL_EINVAL;
}

int sl_http_port(const sl_http_server_t *srv)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (srv == NULL || srv->is_unix ||
        uv_tcp_getsockname(&srv->listener.tcp, (struct sockaddr *)&ss, &len) != 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

unsigned sl_http_connections(const sl_http_server_t *srv)
{
    return srv ? srv->nconns : 0;
}

void sl_http_close(sl_http_server_t *srv)
{
    conn_t *c, *next;
    if (srv == NULL || srv->closing)
        return;
    srv->closing = 1;
    if (srv->unix_path != NULL)
        unlink(srv->unix_path);
    uv_close(&srv->listener.handle, on_listener_closed);
    for (c = srv->conns; c != NULL; c = next) {
        next = c->next;
        if (c->writes_pending > 0 && !c->closing) {
            /* let queued answers go out (bounded by the write timeout), then close */
            c->close_after_write = 1;
            c->phase = PH_CLOSING;
            parser_stop(&c->parser);
            conn_maybe_finish(c);
        } else {
            conn_close(c);
        }
    }
    /* lingering connections would hold the loop for linger_ms: close them now */
    for (c = srv->conns; c != NULL; c = next) {
        next = c->next;
        if (c->linger && c->writes_pending == 0)
            conn_close(c);
    }
}
