/* http.h — the HTTP/1.1 server of the daemon's API, on libuv (A1, A3, A4).
 *
 * Requests are parsed by Debian's http_parser; JSON goes through jansson. A handler is
 * called synchronously, on the loop thread, once per complete request, and fills a
 * response; responses leave in request order (pipelining), every one with Content-Length.
 * The server enforces limits (body → 413, headers → 431, URL → 414), timeouts (slow
 * headers, slow body, idle keep-alive, clients that stop reading), answers malformed input
 * with a JSON 400 and closes, and never lets one client wedge another.
 *
 * The router (a table of {method, pattern with {param}, handler, auth}) gives 404 for an
 * unknown path, 405 with Allow for a known path and a wrong method, and 401 for a missing
 * or wrong bearer token, compared in constant time (A3); routes marked public (health,
 * metrics) skip auth. Errors are {"error_code":"…","error_msg":"…"}. */
#ifndef SL_NET_HTTP_H
#define SL_NET_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "../common.h"

typedef struct sl_http_server sl_http_server_t;

typedef void (*sl_http_log_fn)(void *arg, int level, const char *msg); /* 0 debug..3 error */

typedef struct {
    size_t max_body;             /* bytes; larger → 413. Default 1 MiB */
    size_t max_header_bytes;     /* request line + headers; larger → 431. Default 32 KiB */
    size_t max_url;              /* request target; longer → 414. Default 8 KiB */
    size_t max_headers;          /* header lines; more → 431. Default 100 */
    uint64_t header_timeout_ms;  /* first byte of a request → end of its headers. 10000 */
    uint64_t body_timeout_ms;    /* end of headers → end of body. 10000 */
    uint64_t idle_timeout_ms;    /* keep-alive: between two requests. 60000 */
    uint64_t write_timeout_ms;   /* a client that stops reading its responses. 10000 */
    uint64_t linger_ms;          /* after a closing response, unread input is drained this
                                  * long so the client sees the answer, not a reset. 1000 */
    unsigned max_connections;    /* beyond: 503 and close. Default 1024 */
    size_t max_write_queue;      /* unsent response bytes before reading pauses. 1 MiB */
    sl_http_log_fn log;          /* connection-level events (timeouts, bad requests); NULL */
    void *log_arg;
} sl_http_config_t;

void sl_http_config_default(sl_http_config_t *cfg);

typedef struct {
    const char *name;
    const char *value;
} sl_http_kv_t;

#define SL_HTTP_MAX_PARAMS 8

typedef struct {
    const char *method;        /* "GET", "PUT", … */
    const char *url;           /* the request target as sent */
    const char *path;          /* the path of the target, not decoded */
    const char *query;         /* after '?', not decoded; "" when none */
    const char *authorization; /* the Authorization header, or NULL */
    const char *content_type;  /* the Content-Type header, or NULL */
    const char *body;          /* NUL-terminated (the NUL is not counted); "" when none */
    size_t body_len;
    const sl_http_kv_t *headers; /* every header, in order, names as sent */
    size_t nheaders;
    sl_http_kv_t params[SL_HTTP_MAX_PARAMS]; /* {param}s of the matched route, decoded */
    size_t nparams;
    int http_major, http_minor;
    int via_unix; /* arrived over the Unix socket */
} sl_http_request_t;

typedef struct {
    int status;         /* 0 when the handler answered nothing: the server sends a 500 */
    char *body;         /* malloc'd; the server frees it */
    size_t body_len;
    char content_type[64];
    char headers[512];  /* extra header lines, each ending in \r\n */
    size_t headers_len;
    int close;          /* close the connection after this response */
} sl_http_response_t;

typedef void (*sl_http_handler_fn)(void *arg, const sl_http_request_t *req,
                                   sl_http_response_t *res);

/* ---- server ---------------------------------------------------------------------------- */

/* Listens on `addr`: "127.0.0.1:8300", "[::1]:8300", "host:0" (any free port; see
 * sl_http_port) or "unix:/path/to.sock" (as sl_http_listen_unix). `cfg` NULL: defaults.
 * On failure returns a negative code and a message naming the address in err. */
int sl_http_listen(uv_loop_t *loop, const char *addr, const sl_http_config_t *cfg,
                   sl_http_handler_fn handler, void *arg, sl_http_server_t **out, char *err,
                   size_t errlen);

/* A Unix-socket listener, mode 0600 (R1). A stale socket file at `path` is replaced; any
 * other file there is an error. The file is removed by sl_http_close. */
int sl_http_listen_unix(uv_loop_t *loop, const char *path, const sl_http_config_t *cfg,
                        sl_http_handler_fn handler, void *arg, sl_http_server_t **out, char *err,
                        size_t errlen);

/* The bound TCP port (useful after listening on port 0), or -1 for a Unix socket. */
int sl_http_port(const sl_http_server_t *srv);

/* Open connections right now (for metrics and tests). */
unsigned sl_http_connections(const sl_http_server_t *srv);

/* Graceful close: stops accepting, lets responses already queued finish (bounded by the
 * write timeout), closes every connection, and frees the server once the loop has run
 * the close callbacks. `srv` must not be used afterwards. Safe from inside a handler. */
void sl_http_close(sl_http_server_t *srv);

/* ---- responses ------------------------------------------------------------------------- */

/* Serialises `body` (the reference is stolen, even on failure) as the response. */
int sl_http_respond_json(sl_http_response_t *res, int status, json_t *body);
/* {"error_code": code, "error_msg": printf(fmt, …)} */
int sl_http_respond_error(sl_http_response_t *res, int status, const char *error_code,
                          const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Any other body (Prometheus text for /metrics), copied. */
int sl_http_respond_raw(sl_http_response_t *res, int status, const char *content_type,
                        const char *body, size_t len);
/* Adds a header line; refuses names or values with CR, LF or NUL, or too long a total. */
int sl_http_response_header(sl_http_response_t *res, const char *name, const char *value);

/* ---- requests -------------------------------------------------------------------------- */

const char *sl_http_header(const sl_http_request_t *req, const char *name); /* any case */
const char *sl_http_param(const sl_http_request_t *req, const char *name);

/* Parses the body as a JSON object. On failure returns NULL and fills `res` with 400
 * MALFORMED_JSON (naming line and column) or 400 INVALID_ARGUMENT (not an object). */
json_t *sl_http_body_json(const sl_http_request_t *req, sl_http_response_t *res);

/* ---- auth (A3) ------------------------------------------------------------------------- */

/* 1 when a and b are equal. The time taken depends on alen only, never on where the
 * bytes differ or on blen (the secret). */
int sl_http_ct_equal(const char *a, size_t alen, const char *b, size_t blen);

/* 1 when the request carries "Authorization: Bearer <token>" with the right token. An
 * empty or NULL token never matches. */
int sl_http_bearer_ok(const sl_http_request_t *req, const char *token);

/* ---- router ---------------------------------------------------------------------------- */

typedef struct {
    const char *method;  /* "GET", "PUT", …; GET routes also answer HEAD */
    const char *pattern; /* "/api/v2/captures/{capture_id}/drain" */
    sl_http_handler_fn fn;
    int public_route;    /* 1: no token needed (health, metrics — A3) */
} sl_http_route_t;

typedef struct {
    const sl_http_route_t *routes;
    size_t nroutes;
    const char *token; /* the bearer token (A3); NULL or "": every non-public route is 401 */
    void *arg;         /* passed to the route handlers */
} sl_http_router_t;

/* A handler (arg = the sl_http_router_t): picks the route, checks the method and the
 * token, fills req->params, calls the route's handler. 404 NOT_FOUND, 405
 * METHOD_NOT_ALLOWED (with Allow), 401 UNAUTHORIZED, 400 BAD_REQUEST (a bad %-escape). */
void sl_http_router_dispatch(void *router, const sl_http_request_t *req,
                             sl_http_response_t *res);

/* Matches one path against one pattern; {name} matches one non-empty segment. Values are
 * %-decoded into buf. Returns 1 on a match, 0 on none, SL_EINVAL on a bad %-escape in a
 * value (or one that decodes to NUL or '/'), SL_ELIMIT when params or buf are too small. */
int sl_http_route_match(const char *pattern, const char *path, sl_http_kv_t *params,
                        size_t maxparams, size_t *nparams, char *buf, size_t buflen);

#endif
