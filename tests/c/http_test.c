/* http_test.c — the HTTP server (A1, A3, A4) from the outside, under ASan/UBSan/LSan.
 *
 * The server runs on its own libuv loop in a thread, on 127.0.0.1 port 0 and on a Unix
 * socket; the client side is plain blocking sockets, with responses read by http_parser
 * in response mode. Each hostile client (malformed, oversized, slow, never reading,
 * random bytes) is followed by a good request to show the server keeps serving; the
 * server is closed at the end and LSan checks that nothing leaked. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <http_parser.h>
#include <jansson.h>
#include <uv.h>

#include "net/http.h"
#include "tap.h"

#define TOKEN "s3cret-token-0123456789"

/* ---- the server under test ------------------------------------------------------------- */

static struct {
    uv_loop_t loop;
    uv_async_t stop;
    sl_http_server_t *tcp;
    sl_http_server_t *unix_srv;
    sl_http_server_t *small; /* max_connections = 2 */
    int small_port;
    pthread_t thread;
    atomic_int ready; /* 1 listening, -1 failed */
    int port;
    char sock_path[100];
    char err[256];
    atomic_int handled;
    atomic_int timeout_warnings; /* warn-level "timeout" lines the server logged */
    int loop_close_rc;
} S;

static void on_server_log(void *arg, int level, const char *msg)
{
    if (level >= 2 && strstr(msg, "timeout")) atomic_fetch_add(&S.timeout_warnings, 1);
}

static void h_health(void *arg, const sl_http_request_t *req, sl_http_response_t *res)
{
    sl_http_respond_json(res, 200, json_pack("{s:s}", "status", "ok"));
}

static void h_metrics(void *arg, const sl_http_request_t *req, sl_http_response_t *res)
{
    static const char text[] = "# TYPE sluice_up gauge\nsluice_up 1\n";
    sl_http_respond_raw(res, 200, "text/plain; version=0.0.4", text, sizeof text - 1);
}

static void h_drain_get(void *arg, const sl_http_request_t *req, sl_http_response_t *res)
{
    atomic_fetch_add(&S.handled, 1);
    sl_http_respond_json(res, 200,
                         json_pack("{s:s,s:s}", "capture_id", sl_http_param(req, "capture_id"),
                                   "query", req->query));
}

static void h_drain_put(void *arg, const sl_http_request_t *req, sl_http_response_t *res)
{
    json_t *body = sl_http_body_json(req, res);
    if (body == NULL)
        return;
    json_decref(body);
    sl_http_respond_json(res, 202,
                         json_pack("{s:s,s:i}", "capture_id", sl_http_param(req, "capture_id"),
                                   "current_maintainer_count", 3));
}

static void h_echo(void *arg, const sl_http_request_t *req, sl_http_response_t *res)
{
    sl_http_respond_json(res, 200, json_pack("{s:I}", "body_len", (json_int_t)req->body_len));
}

static const sl_http_route_t routes[] = {
    {"GET", "/api/v2/health", h_health, 1},
    {"GET", "/metrics", h_metrics, 1},
    {"GET", "/api/v2/captures/{capture_id}/drain", h_drain_get, 0},
    {"PUT", "/api/v2/captures/{capture_id}/drain", h_drain_put, 0},
    {"POST", "/api/v2/echo", h_echo, 0},
};

static sl_http_router_t router = {routes, sizeof routes / sizeof routes[0], TOKEN, NULL};

static void on_stop(uv_async_t *a)
{
    sl_http_close(S.tcp);
    sl_http_close(S.unix_srv);
    sl_http_close(S.small);
    uv_close((uv_handle_t *)a, NULL);
}

static void *server_main(void *unused)
{
    sl_http_config_t cfg;
    sl_http_config_default(&cfg);
    cfg.header_timeout_ms = 200;
    cfg.body_timeout_ms = 200;
    cfg.idle_timeout_ms = 500;
    cfg.write_timeout_ms = 500;
    cfg.linger_ms = 300;
    cfg.max_write_queue = 64 * 1024;
    cfg.log = on_server_log;
    uv_loop_init(&S.loop);
    uv_async_init(&S.loop, &S.stop, on_stop);
    if (sl_http_listen(&S.loop, "127.0.0.1:0", &cfg, sl_http_router_dispatch, &router, &S.tcp,
                       S.err, sizeof S.err) != 0 ||
        sl_http_listen_unix(&S.loop, S.sock_path, &cfg, sl_http_router_dispatch, &router,
                            &S.unix_srv, S.err, sizeof S.err) != 0 ||
        (cfg.max_connections = 2,
         sl_http_listen(&S.loop, "127.0.0.1:0", &cfg, sl_http_router_dispatch, &router, &S.small,
                        S.err, sizeof S.err)) != 0) {
        atomic_store(&S.ready, -1);
        uv_close((uv_handle_t *)&S.stop, NULL);
        sl_http_close(S.tcp);
        sl_http_close(S.unix_srv);
        uv_run(&S.loop, UV_RUN_DEFAULT);
        uv_loop_close(&S.loop);
        return NULL;
    }
    S.port = sl_http_port(S.tcp);
    S.small_port = sl_http_port(S.small);
    atomic_store(&S.ready, 1);
    uv_run(&S.loop, UV_RUN_DEFAULT);
    S.loop_close_rc = uv_loop_close(&S.loop);
    return NULL;
}

/* ---- client side ----------------------------------------------------------------------- */

static void set_timeout(int fd, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static int connect_port(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    set_timeout(fd, 5000);
    return fd;
}

static int connect_tcp(void)
{
    return connect_port(S.port);
}

static int connect_unix(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", S.sock_path);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    set_timeout(fd, 5000);
    return fd;
}

static int send_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n <= 0)
            return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static int send_str(int fd, const char *s)
{
    return send_all(fd, s, strlen(s));
}

typedef struct {
    int status;
    char body[8192];
    size_t body_len;
    char content_type[128];
    char connection[64];
    char allow[128];
    char www_auth[64];
    long content_length; /* -1 when absent */
    int complete;
    char field[64];
} response_t;

/* A client connection with a response reader (http_parser, response mode). */
typedef struct {
    int fd;
    http_parser parser;
    char buf[16384];
    size_t len, off;
    response_t *cur;
    int head; /* the next response answers HEAD: no body follows its headers */
} client_t;

static void copy_hdr(char *dst, size_t cap, const char *at, size_t len)
{
    size_t have = strlen(dst);
    if (have + len >= cap)
        len = cap - have - 1;
    memcpy(dst + have, at, len);
    dst[have + len] = '\0';
}

static int r_field(http_parser *p, const char *at, size_t len)
{
    client_t *c = p->data;
    c->cur->field[0] = '\0';
    copy_hdr(c->cur->field, sizeof c->cur->field, at, len);
    return 0;
}

static int r_value(http_parser *p, const char *at, size_t len)
{
    response_t *r = ((client_t *)p->data)->cur;
    if (strcasecmp(r->field, "Content-Type") == 0)
        copy_hdr(r->content_type, sizeof r->content_type, at, len);
    else if (strcasecmp(r->field, "Connection") == 0)
        copy_hdr(r->connection, sizeof r->connection, at, len);
    else if (strcasecmp(r->field, "Allow") == 0)
        copy_hdr(r->allow, sizeof r->allow, at, len);
    else if (strcasecmp(r->field, "WWW-Authenticate") == 0)
        copy_hdr(r->www_auth, sizeof r->www_auth, at, len);
    else if (strcasecmp(r->field, "Content-Length") == 0) {
        char tmp[32] = "";
        copy_hdr(tmp, sizeof tmp, at, len);
        r->content_length = atol(tmp);
    }
    return 0;
}

static int r_body(http_parser *p, const char *at, size_t len)
{
    response_t *r = ((client_t *)p->data)->cur;
    size_t room = sizeof r->body - 1 - r->body_len;
    if (len > room)
        len = room;
    memcpy(r->body + r->body_len, at, len);
    r->body_len += len;
    r->body[r->body_len] = '\0';
    return 0;
}

static int r_complete(http_parser *p)
{
    client_t *c = p->data;
    c->cur->status = (int)p->status_code;
    c->cur->complete = 1;
    http_parser_pause(p, 1);
    return 0;
}

static int r_headers_complete(http_parser *p)
{
    return ((client_t *)p->data)->head ? 1 : 0;
}

static const http_parser_settings resp_settings = {
    .on_headers_complete = r_headers_complete,
    .on_header_field = r_field,
    .on_header_value = r_value,
    .on_body = r_body,
    .on_message_complete = r_complete,
};

static void client_init(client_t *c, int fd)
{
    memset(c, 0, sizeof *c);
    c->fd = fd;
    http_parser_init(&c->parser, HTTP_RESPONSE);
    c->parser.data = c;
}

/* Reads one response; 0 when one arrived complete. */
static int client_read(client_t *c, response_t *r)
{
    memset(r, 0, sizeof *r);
    r->content_length = -1;
    c->cur = r;
    for (;;) {
        if (c->off < c->len) {
            size_t n = http_parser_execute(&c->parser, &resp_settings, c->buf + c->off,
                                           c->len - c->off);
            c->off += n;
            if (r->complete) {
                http_parser_pause(&c->parser, 0);
                return 0;
            }
            if (HTTP_PARSER_ERRNO(&c->parser) != HPE_OK)
                return -1;
        }
        ssize_t got = recv(c->fd, c->buf, sizeof c->buf, 0);
        if (got <= 0)
            return -1;
        c->len = (size_t)got;
        c->off = 0;
    }
}

/* One request on a fresh connection; returns the status, or -1. */
static int request(const char *raw, response_t *r)
{
    client_t c;
    int fd = connect_tcp();
    if (fd < 0)
        return -1;
    client_init(&c, fd);
    int rc = send_str(fd, raw) == 0 && client_read(&c, r) == 0 ? r->status : -1;
    close(fd);
    return rc;
}

/* 1 when the peer closes (EOF or reset) within ms, reading and dropping anything. */
static int closed_within(int fd, int ms)
{
    char buf[65536];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        clock_gettime(CLOCK_MONOTONIC, &t1);
        long left = ms - ((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
        if (left <= 0)
            return 0;
        if (poll(&p, 1, (int)left) <= 0)
            return 0;
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            return 1;
    }
}

static int json_error_is(const response_t *r, const char *code)
{
    json_error_t e;
    json_t *v = json_loadb(r->body, r->body_len, 0, &e);
    const char *got = json_string_value(json_object_get(v, "error_code"));
    int ok = got != NULL && strcmp(got, code) == 0 &&
             json_is_string(json_object_get(v, "error_msg")) &&
             strstr(r->content_type, "application/json") != NULL &&
             r->content_length == (long)r->body_len;
    if (!ok)
        printf("# status %d body: %s\n", r->status, r->body);
    json_decref(v);
    return ok;
}

static int still_serving(void)
{
    response_t r;
    return request("GET /api/v2/health HTTP/1.1\r\nHost: t\r\n\r\n", &r) == 200;
}

#define GET_DRAIN(id, auth)                                                                    \
    "GET /api/v2/captures/" id "/drain HTTP/1.1\r\nHost: t\r\n" auth "\r\n"
#define AUTH "Authorization: Bearer " TOKEN "\r\n"

/* ---- tests ----------------------------------------------------------------------------- */

static void test_units(void)
{
    sl_http_kv_t params[4];
    size_t n;
    char buf[256];
    TAP_CHECK(sl_http_route_match("/api/v2/captures/{capture_id}/drain",
                                  "/api/v2/captures/n%2D1/drain", params, 4, &n, buf,
                                  sizeof buf) == 1 &&
                  n == 1 && strcmp(params[0].name, "capture_id") == 0 &&
                  strcmp(params[0].value, "n-1") == 0,
              "route: {param} matches one segment, %-decoded");
    TAP_CHECK(sl_http_route_match("/api/v2/captures/{capture_id}/drain", "/api/v2/captures//drain",
                                  params, 4, &n, buf, sizeof buf) == 0 &&
                  sl_http_route_match("/api/v2/captures/{capture_id}/drain",
                                      "/api/v2/captures/a/b/drain", params, 4, &n, buf,
                                      sizeof buf) == 0 &&
                  sl_http_route_match("/api/v2/captures/{capture_id}/drain",
                                      "/api/v2/captures/a/drain/plan", params, 4, &n, buf,
                                      sizeof buf) == 0,
              "route: empty segment, two segments, longer path do not match");
    TAP_CHECK(sl_http_route_match("/x/{id}", "/x/a%2Fb", params, 4, &n, buf, sizeof buf) ==
                      SL_EINVAL &&
                  sl_http_route_match("/x/{id}", "/x/a%zz", params, 4, &n, buf, sizeof buf) ==
                      SL_EINVAL &&
                  sl_http_route_match("/x/{id}", "/x/a%00", params, 4, &n, buf, sizeof buf) ==
                      SL_EINVAL &&
                  sl_http_route_match("/x/{id}", "/x/a%4", params, 4, &n, buf, sizeof buf) ==
                      SL_EINVAL,
              "route: %2F, %zz, %00 and a cut escape are refused");
    TAP_CHECK(sl_http_ct_equal("abc", 3, "abc", 3) && !sl_http_ct_equal("abd", 3, "abc", 3) &&
                  !sl_http_ct_equal("ab", 2, "abc", 3) && !sl_http_ct_equal("abcd", 4, "abc", 3) &&
                  !sl_http_ct_equal("", 0, "", 0),
              "A3: constant-time compare: equal, differing, shorter, longer, empty");
    sl_http_request_t req;
    memset(&req, 0, sizeof req);
    req.authorization = "bearer  " TOKEN " ";
    int ok = sl_http_bearer_ok(&req, TOKEN);
    req.authorization = "Basic " TOKEN;
    ok = ok && !sl_http_bearer_ok(&req, TOKEN);
    req.authorization = "Bearer" TOKEN;
    ok = ok && !sl_http_bearer_ok(&req, TOKEN);
    req.authorization = "Bearer ";
    ok = ok && !sl_http_bearer_ok(&req, "");
    TAP_CHECK(ok, "A3: bearer scheme any case, token trimmed; Basic, no space, empty refused");
    sl_http_response_t res;
    memset(&res, 0, sizeof res);
    TAP_CHECK(sl_http_response_header(&res, "X-A", "1\r\nX-Evil: 1") == SL_EINVAL &&
                  sl_http_response_header(&res, "X-A", "1") == 0 &&
                  strcmp(res.headers, "X-A: 1\r\n") == 0,
              "response headers: CR/LF refused (no header injection)");
    sl_http_respond_error(&res, 400, "X", "bad byte \xff here");
    TAP_CHECK(res.status == 400 && res.body != NULL && strstr(res.body, "bad byte ? here") != NULL,
              "error messages with invalid UTF-8 still give valid JSON");
    free(res.body);
}

static void test_basic(void)
{
    response_t r;
    TAP_CHECK(request("GET /api/v2/health HTTP/1.1\r\nHost: t\r\n\r\n", &r) == 200 &&
                  strstr(r.body, "\"status\":\"ok\"") && r.content_length == (long)r.body_len &&
                  strstr(r.content_type, "application/json"),
              "A1: GET health: 200 JSON with Content-Length");
    TAP_CHECK(request("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n", &r) == 200 &&
                  strstr(r.body, "sluice_up 1") && strstr(r.content_type, "text/plain"),
              "A3: /metrics needs no token");
    TAP_CHECK(request("GET /api/v2/nope HTTP/1.1\r\nHost: t\r\n\r\n", &r) == 404 &&
                  json_error_is(&r, "NOT_FOUND"),
              "A4: unknown route: 404 NOT_FOUND");
    TAP_CHECK(request("POST /api/v2/health HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
                      &r) == 405 &&
                  json_error_is(&r, "METHOD_NOT_ALLOWED") && strstr(r.allow, "GET"),
              "A4: wrong method: 405 METHOD_NOT_ALLOWED with Allow");
    TAP_CHECK(request("DELETE /api/v2/captures/n1/drain HTTP/1.1\r\nHost: t\r\n\r\n", &r) == 405 &&
                  strstr(r.allow, "GET") && strstr(r.allow, "PUT"),
              "A4: 405 on a {param} route lists every method of the path");
    TAP_CHECK(request(GET_DRAIN("n1", "") , &r) == 401 && json_error_is(&r, "UNAUTHORIZED") &&
                  strstr(r.www_auth, "Bearer"),
              "A3/D1: no token: 401 UNAUTHORIZED");
    TAP_CHECK(request(GET_DRAIN("n1", "Authorization: Bearer wrong\r\n"), &r) == 401 &&
                  json_error_is(&r, "UNAUTHORIZED"),
              "A3/D1: wrong token: 401");
    TAP_CHECK(request(GET_DRAIN("n1", "Authorization: Bearer " TOKEN "x\r\n"), &r) == 401,
              "A3: token with an extra byte: 401");
    TAP_CHECK(request(GET_DRAIN("n1", "Authorization: Basic dXNlcjpwYXNz\r\n"), &r) == 401 &&
                  strstr(r.body, "must be 'Bearer <token>'") && !strstr(r.body, "wrong bearer"),
              "A3: another scheme (Basic) is told Bearer is wanted, not that its token is wrong");
    TAP_CHECK(request(GET_DRAIN("n%2D1", AUTH), &r) == 200 &&
                  strstr(r.body, "\"capture_id\":\"n-1\""),
              "A3: right token: 200, {capture_id} decoded");
    TAP_CHECK(request("GET /api/v2/captures/n1/drain?x=1&y=2 HTTP/1.1\r\nHost: t\r\n" AUTH "\r\n",
                      &r) == 200 &&
                  strstr(r.body, "\"query\":\"x=1&y=2\""),
              "query string handed to the handler");
    TAP_CHECK(request("PUT /api/v2/captures/n2/drain HTTP/1.1\r\nHost: t\r\n" AUTH
                      "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
                      &r) == 202 &&
                  strstr(r.body, "\"capture_id\":\"n2\""),
              "PUT with a JSON body: 202");
    TAP_CHECK(request("PUT /api/v2/captures/n2/drain HTTP/1.1\r\nHost: t\r\n" AUTH
                      "Content-Length: 5\r\n\r\n{\"a\":",
                      &r) == 400 &&
                  json_error_is(&r, "MALFORMED_JSON"),
              "A4: malformed JSON body: 400 MALFORMED_JSON");
    TAP_CHECK(request("PUT /api/v2/captures/n2/drain HTTP/1.1\r\nHost: t\r\n" AUTH
                      "Content-Length: 3\r\n\r\n[1]",
                      &r) == 400 &&
                  json_error_is(&r, "INVALID_ARGUMENT"),
              "A4: a JSON body that is not an object: 400");
    TAP_CHECK(request("PUT /api/v2/captures/n%2F1/drain HTTP/1.1\r\nHost: t\r\n" AUTH
                      "Content-Length: 2\r\n\r\n{}",
                      &r) == 400,
              "A4: %2F in a {param}: 400");
    {
        client_t c;
        int fd = connect_tcp();
        client_init(&c, fd);
        c.head = 1;
        int ok = send_str(fd, "HEAD /api/v2/health HTTP/1.1\r\nHost: t\r\n\r\n") == 0 &&
                 client_read(&c, &r) == 0 && r.status == 200 && r.body_len == 0 &&
                 r.content_length > 0;
        c.head = 0;
        ok = ok && send_str(fd, "GET /api/v2/health HTTP/1.1\r\nHost: t\r\n\r\n") == 0 &&
             client_read(&c, &r) == 0 && r.status == 200 && (long)r.body_len == r.content_length;
        TAP_CHECK(ok, "HEAD: headers with Content-Length, no body; the connection goes on");
        close(fd);
    }
    TAP_CHECK(request("POST /api/v2/echo HTTP/1.1\r\nHost: t\r\n" AUTH
                      "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
                      &r) == 200 &&
                  strstr(r.body, "\"body_len\":11"),
              "chunked request body");
}

static void test_keepalive(void)
{
    client_t c;
    response_t r1, r2, r3;
    int fd = connect_tcp();
    client_init(&c, fd);
    int ok = send_str(fd, GET_DRAIN("a", AUTH)) == 0 && client_read(&c, &r1) == 0 &&
             send_str(fd, GET_DRAIN("b", AUTH)) == 0 && client_read(&c, &r2) == 0;
    TAP_CHECK(ok && r1.status == 200 && r2.status == 200 && strstr(r2.body, "\"b\"") &&
                  r1.connection[0] == '\0',
              "A1: keep-alive: two requests on one connection");
    /* pipelined: three requests in one write, answers in order */
    ok = send_str(fd, GET_DRAIN("p1", AUTH) GET_DRAIN("p2", AUTH) GET_DRAIN("p3", AUTH)) == 0 &&
         client_read(&c, &r1) == 0 && client_read(&c, &r2) == 0 && client_read(&c, &r3) == 0;
    TAP_CHECK(ok && strstr(r1.body, "\"p1\"") && strstr(r2.body, "\"p2\"") &&
                  strstr(r3.body, "\"p3\""),
              "A1: pipelined requests answered in order");
    /* a pipeline split in odd places */
    const char *two = GET_DRAIN("s1", AUTH) GET_DRAIN("s2", AUTH);
    size_t len = strlen(two);
    ok = 1;
    for (size_t i = 0; i < len; i += 7) {
        ok &= send_all(fd, two + i, len - i < 7 ? len - i : 7) == 0;
        usleep(200);
    }
    ok = ok && client_read(&c, &r1) == 0 && client_read(&c, &r2) == 0;
    TAP_CHECK(ok && strstr(r1.body, "\"s1\"") && strstr(r2.body, "\"s2\""),
              "requests arriving 7 bytes at a time");
    ok = send_str(fd, "GET /api/v2/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n") == 0 &&
         client_read(&c, &r1) == 0;
    TAP_CHECK(ok && r1.status == 200 && strcasecmp(r1.connection, "close") == 0 &&
                  closed_within(fd, 2000),
              "A1: Connection: close is honoured (answered, then closed)");
    close(fd);

    fd = connect_tcp();
    client_init(&c, fd);
    ok = send_str(fd, "GET /api/v2/health HTTP/1.0\r\n\r\n") == 0 && client_read(&c, &r1) == 0;
    TAP_CHECK(ok && r1.status == 200 && closed_within(fd, 2000), "HTTP/1.0: answered and closed");
    close(fd);

    fd = connect_tcp();
    client_init(&c, fd);
    ok = send_str(fd, "GET /api/v2/health HTTP/1.1\r\nHost: t\r\n\r\n") == 0 &&
         client_read(&c, &r1) == 0;
    TAP_CHECK(ok && r1.status == 200 && closed_within(fd, 3000),
              "A4: an idle keep-alive connection is closed after the idle timeout");
    close(fd);
}

static void test_limits(void)
{
    response_t r;
    client_t c;
    size_t big = 2 * 1024 * 1024;
    char *body = malloc(big);
    memset(body, 'x', big);

    int fd = connect_tcp();
    client_init(&c, fd);
    char head[256];
    snprintf(head, sizeof head,
             "POST /api/v2/echo HTTP/1.1\r\nHost: t\r\n" AUTH "Content-Length: %zu\r\n\r\n", big);
    send_str(fd, head);
    send_all(fd, body, big); /* may fail once the server has answered: fine */
    TAP_CHECK(client_read(&c, &r) == 0 && r.status == 413 && json_error_is(&r, "BODY_TOO_LARGE"),
              "A4: a 2 MiB body (Content-Length): 413 BODY_TOO_LARGE");
    close(fd);
    TAP_CHECK(still_serving(), "A4: still serving after a 2 MiB body");

    fd = connect_tcp();
    client_init(&c, fd);
    send_str(fd, "POST /api/v2/echo HTTP/1.1\r\nHost: t\r\n" AUTH
                 "Transfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 40; i++) {
        char chunk[64];
        snprintf(chunk, sizeof chunk, "%x\r\n", 65536);
        if (send_str(fd, chunk) != 0 || send_all(fd, body, 65536) != 0 || send_str(fd, "\r\n") != 0)
            break;
    }
    TAP_CHECK(client_read(&c, &r) == 0 && r.status == 413 && json_error_is(&r, "BODY_TOO_LARGE"),
              "A4: a 2.5 MiB chunked body: 413");
    close(fd);

    /* headers over the limit */
    size_t hlen = 40 * 1024;
    char *huge = malloc(hlen + 256);
    int n = snprintf(huge, 256, "GET /api/v2/health HTTP/1.1\r\nHost: t\r\nX-Big: ");
    memset(huge + n, 'h', hlen);
    strcpy(huge + n + hlen, "\r\n\r\n");
    TAP_CHECK(request(huge, &r) == 431 && json_error_is(&r, "HEADERS_TOO_LARGE"),
              "A4: 40 KiB of headers: 431");
    /* many small headers */
    char *many = huge;
    n = snprintf(many, 256, "GET /api/v2/health HTTP/1.1\r\nHost: t\r\n");
    for (int i = 0; i < 150; i++)
        n += sprintf(many + n, "X-%d: 1\r\n", i);
    strcpy(many + n, "\r\n");
    TAP_CHECK(request(many, &r) == 431, "A4: 150 header lines: 431");
    /* URL over the limit */
    n = snprintf(huge, 256, "GET /api/v2/");
    memset(huge + n, 'u', 9000);
    strcpy(huge + n + 9000, " HTTP/1.1\r\nHost: t\r\n\r\n");
    TAP_CHECK(request(huge, &r) == 414 && json_error_is(&r, "URI_TOO_LONG"),
              "A4: a 9 KB URL: 414");
    free(huge);
    free(body);
    TAP_CHECK(still_serving(), "A4: still serving after oversized headers and URL");
}

static void test_malformed(void)
{
    static const char *const bad[] = {
        "GARBAGE\r\n\r\n",
        "GET /api/v2/health HTTP/1.1\r\nHost t\r\n\r\n",
        "GET /api/v2/health HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        "GET /api/v2/health HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "POST /api/v2/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    };
    int all = 1;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        client_t c;
        response_t r;
        int fd = connect_tcp();
        client_init(&c, fd);
        send_str(fd, bad[i]);
        int ok = client_read(&c, &r) == 0 && r.status == 400 && json_error_is(&r, "BAD_REQUEST") &&
                 closed_within(fd, 2000);
        if (!ok)
            printf("# malformed case %zu: status %d\n", i, r.status);
        all &= ok;
        close(fd);
    }
    TAP_CHECK(all, "A4: malformed requests (request line, header, lengths, chunk, TLS): "
                   "400 BAD_REQUEST JSON, then closed");
    response_t r;
    TAP_CHECK(request("GET /api/v2/health HTTP/9.9\r\n\r\n", &r) == 505 &&
                  json_error_is(&r, "HTTP_VERSION_NOT_SUPPORTED"),
              "HTTP/9.9: 505");
    TAP_CHECK(still_serving(), "A4: still serving after malformed requests");

    /* random bytes on a few connections, seeded */
    srand(12345);
    for (int k = 0; k < 30; k++) {
        char junk[512];
        int fd = connect_tcp();
        size_t len = 1 + (size_t)(rand() % (int)sizeof junk);
        for (size_t i = 0; i < len; i++)
            junk[i] = (char)(rand() & 0xff);
        if (k % 2)
            memcpy(junk, "GET /", 5 < len ? 5 : len); /* start plausibly, then go astray */
        send_all(fd, junk, len);
        shutdown(fd, SHUT_WR);
        closed_within(fd, 2000);
        close(fd);
    }
    TAP_CHECK(still_serving(), "A4: still serving after 30 clients sending random bytes");
}

static void test_slow_clients(void)
{
    int fd = connect_tcp();
    send_str(fd, "GET /api/v2/health HTTP/1.1\r\nHost: t\r\n");
    TAP_CHECK(closed_within(fd, 3000), "A4: half the headers, then silence: disconnected");
    close(fd);

    fd = connect_tcp();
    send_str(fd, "POST /api/v2/echo HTTP/1.1\r\nHost: t\r\n" AUTH "Content-Length: 100\r\n\r\n0123");
    TAP_CHECK(closed_within(fd, 3000), "A4: a body that stops halfway: disconnected");
    close(fd);

    fd = connect_tcp();
    TAP_CHECK(closed_within(fd, 3000), "A4: a connection that never sends: disconnected");
    close(fd);

    /* slowloris: one header byte every 50 ms never resets the header timeout */
    fd = connect_tcp();
    const char *req = "GET /api/v2/health HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    int dropped = 0;
    for (size_t i = 0; req[i] && !dropped; i++) {
        if (send_all(fd, req + i, 1) != 0)
            dropped = 1;
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 50) > 0)
            dropped = 1;
    }
    TAP_CHECK(dropped || closed_within(fd, 1000),
              "A4: slowloris (a byte every 50 ms) is cut by the header timeout");
    close(fd);

    /* a client that pipelines without ever reading: reading pauses, then the write timeout
     * closes it */
    fd = socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)S.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connect(fd, (struct sockaddr *)&sa, sizeof sa);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    char batch[64 * 40];
    size_t blen = 0;
    for (int i = 0; i < 40; i++)
        blen += (size_t)sprintf(batch + blen, "GET /api/v2/health HTTP/1.1\r\nHost: t\r\n\r\n");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int blocked_ms = 0;
    for (;;) {
        ssize_t n = send(fd, batch, blen, MSG_NOSIGNAL);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        long el = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
        if (n < 0 && errno != EAGAIN)
            break; /* the server closed us already */
        if (n < 0) {
            usleep(10000);
            blocked_ms += 10;
            if (blocked_ms > 400)
                break; /* our sends stopped going through: the server stopped reading */
        } else {
            blocked_ms = 0;
        }
        if (el > 5000)
            break;
    }
    set_timeout(fd, 5000);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    sleep(1); /* the write timeout (500 ms) runs out while we still do not read */
    TAP_CHECK(closed_within(fd, 8000), "A4: a client that never reads is closed (write timeout)");
    close(fd);
    TAP_CHECK(still_serving(), "A4: still serving after slow clients");
}

static void test_concurrent(void)
{
    enum { N = 200 };
    static int fds[N];
    int ok = 1;
    int before = atomic_load(&S.handled);
    for (int i = 0; i < N; i++)
        ok &= (fds[i] = connect_tcp()) >= 0;
    for (int i = 0; i < N; i++) {
        char req[160];
        snprintf(req, sizeof req, GET_DRAIN("c%d", AUTH), i);
        ok &= fds[i] >= 0 && send_str(fds[i], req) == 0;
    }
    int answered = 0;
    for (int i = N - 1; i >= 0; i--) {
        client_t c;
        response_t r;
        char want[32];
        client_init(&c, fds[i]);
        snprintf(want, sizeof want, "\"c%d\"", i);
        answered += fds[i] >= 0 && client_read(&c, &r) == 0 && r.status == 200 &&
                    strstr(r.body, want) != NULL;
        if (fds[i] >= 0)
            close(fds[i]);
    }
    TAP_CHECK(ok && answered == N && atomic_load(&S.handled) - before == N,
              "200 concurrent connections, each answered");
}

static void test_max_connections(void)
{
    client_t c;
    response_t r;
    int a = connect_port(S.small_port), b = connect_port(S.small_port);
    usleep(50000); /* both accepted */
    int x = connect_port(S.small_port);
    client_init(&c, x);
    TAP_CHECK(S.small_port > 0 && a >= 0 && b >= 0 && x >= 0 && client_read(&c, &r) == 0 &&
                  r.status == 503 && json_error_is(&r, "TOO_MANY_CONNECTIONS") &&
                  closed_within(x, 2000),
              "A4: over max_connections: 503 JSON and closed");
    close(x);
    close(a);
    client_init(&c, b);
    TAP_CHECK(send_str(b, "GET /api/v2/health HTTP/1.1\r\nHost: t\r\n\r\n") == 0 &&
                  client_read(&c, &r) == 0 && r.status == 200,
              "the connections within the limit are served");
    close(b);
}

static void test_expect_continue(void)
{
    client_t c;
    response_t r;
    int fd = connect_tcp();
    client_init(&c, fd);
    int ok = send_str(fd, "POST /api/v2/echo HTTP/1.1\r\nHost: t\r\n" AUTH
                          "Content-Length: 4\r\nExpect: 100-continue\r\n\r\n") == 0 &&
             client_read(&c, &r) == 0 && r.status == 100;
    ok = ok && send_str(fd, "abcd") == 0 && client_read(&c, &r) == 0 && r.status == 200 &&
         strstr(r.body, "\"body_len\":4");
    TAP_CHECK(ok, "Expect: 100-continue gets 100, then the answer");
    close(fd);
}

static void test_unix(void)
{
    struct stat st;
    TAP_CHECK(stat(S.sock_path, &st) == 0 && S_ISSOCK(st.st_mode) && (st.st_mode & 0777) == 0600,
              "R1: the Unix socket has mode 0600");
    client_t c;
    response_t r;
    int fd = connect_unix();
    client_init(&c, fd);
    TAP_CHECK(fd >= 0 && send_str(fd, GET_DRAIN("u1", AUTH)) == 0 && client_read(&c, &r) == 0 &&
                  r.status == 200 && strstr(r.body, "\"u1\""),
              "a request over the Unix socket");
    if (fd >= 0)
        close(fd);
    TAP_CHECK(sl_http_port(S.unix_srv) == -1, "sl_http_port is -1 for a Unix socket");
}

static void test_listen_errors(void)
{
    uv_loop_t loop;
    sl_http_server_t *srv = NULL;
    char err[256];
    char addr[64];
    uv_loop_init(&loop);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", S.port);
    int rc = sl_http_listen(&loop, addr, NULL, sl_http_router_dispatch, &router, &srv, err,
                            sizeof err);
    printf("# %s\n", err);
    TAP_CHECK(rc < 0 && srv == NULL && strstr(err, addr) != NULL,
              "listening on a port in use: an error naming the address");
    rc = sl_http_listen(&loop, "nonsense", NULL, sl_http_router_dispatch, &router, &srv, err,
                        sizeof err);
    printf("# %s\n", err);
    TAP_CHECK(rc < 0 && strstr(err, "nonsense") != NULL, "a bad address: an error naming it");
    rc = sl_http_listen_unix(&loop, "/etc/passwd", NULL, sl_http_router_dispatch, &router, &srv,
                             err, sizeof err);
    printf("# %s\n", err);
    TAP_CHECK(rc < 0 && strstr(err, "/etc/passwd") != NULL,
              "a Unix socket path over a regular file is refused (the file is left alone)");
    rc = sl_http_listen(&loop, "localhost:0", NULL, sl_http_router_dispatch, &router, &srv, err,
                        sizeof err);
    TAP_CHECK(rc == 0 && sl_http_port(srv) > 0, "a host name (localhost:0) is resolved");
    sl_http_close(srv);
    uv_run(&loop, UV_RUN_DEFAULT);
    TAP_CHECK(uv_loop_close(&loop) == 0, "failed and closed listeners leave no handle behind");
}

/* A4/A8: a crowd of slow clients closed by the header timeout is logged at most once a
 * second, not once per connection */
static void test_timeout_log_flood(void)
{
    usleep(1100 * 1000); /* the previous test's timeouts are more than a second old */
    int before = atomic_load(&S.timeout_warnings);
    int fds[20];
    for (int i = 0; i < 20; i++) {
        fds[i] = connect_tcp();
        send_str(fds[i], "GET /api/v2/health HTTP/1.1\r\nHost: t\r\n");
    }
    int closed = 0;
    for (int i = 0; i < 20; i++) {
        closed += closed_within(fds[i], 3000);
        close(fds[i]);
    }
    int said = atomic_load(&S.timeout_warnings) - before;
    TAP_CHECK(closed == 20, "A4: 20 slow clients are all cut by the header timeout");
    TAP_CHECK(said >= 1 && said <= 2, "A8: ...and logged once a second, not 20 times");
    if (said < 1 || said > 2) printf("# %d warnings for 20 timeouts\n", said);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    snprintf(S.sock_path, sizeof S.sock_path, "/tmp/sluice-http-test-%d.sock", (int)getpid());
    test_units();
    pthread_create(&S.thread, NULL, server_main, NULL);
    while (atomic_load(&S.ready) == 0)
        usleep(1000);
    if (atomic_load(&S.ready) < 0) {
        printf("# %s\n", S.err);
        TAP_CHECK(0, "server listens");
        pthread_join(S.thread, NULL);
        return TAP_DONE();
    }
    TAP_CHECK(S.port > 0, "listening on 127.0.0.1, port 0 → a free port");
    test_basic();
    test_keepalive();
    test_limits();
    test_malformed();
    test_slow_clients();
    test_timeout_log_flood();
    test_concurrent();
    test_max_connections();
    test_expect_continue();
    test_unix();
    test_listen_errors();

    /* graceful close with a connection open: everything is freed (LSan checks at exit) */
    int idle = connect_tcp();
    uv_async_send(&S.stop);
    pthread_join(S.thread, NULL);
    TAP_CHECK(S.loop_close_rc == 0, "sl_http_close: the loop ends with every handle closed");
    TAP_CHECK(idle < 0 || closed_within(idle, 2000), "sl_http_close closes open connections");
    if (idle >= 0)
        close(idle);
    struct stat st;
    TAP_CHECK(stat(S.sock_path, &st) != 0, "sl_http_close removes the Unix socket file");
    return TAP_DONE();
}
