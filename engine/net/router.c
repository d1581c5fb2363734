/* router.c — what the HTTP server's handlers share (A3, A4): the route table (404 for an
 * unknown path, 405 with Allow for a wrong method), bearer-token auth compared in
 * constant time, JSON responses and JSON errors {"error_code","error_msg"} through
 * jansson, and JSON request bodies with errors that say where they are wrong. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http.h"

/* ---- responses ------------------------------------------------------------------------- */

typedef struct {
    char *data;
    size_t len, cap;
} dumpbuf_t;

static int dump_append(const char *buffer, size_t size, void *arg)
{
    dumpbuf_t *d = arg;
    if (d->len + size + 1 > d->cap) {
        size_t cap = d->cap ? d->cap : 256;
        while (cap < d->len + size + 1)
            cap *= 2;
        char *nd = realloc(d->data, cap);
        if (nd == NULL)
            return -1;
        d->data = nd;
        d->cap = cap;
    }
    memcpy(d->data + d->len, buffer, size);
    d->len += size;
    d->data[d->len] = '\0';
    return 0;
}

static void set_body(sl_http_response_t *res, int status, const char *content_type, char *body,
                     size_t len)
{
    free(res->body);
    res->status = status;
    res->body = body;
    res->body_len = len;
    snprintf(res->content_type, sizeof res->content_type, "%s", content_type);
}

/* Used when even an error body cannot be built. */
static void set_static_500(sl_http_response_t *res)
{
    static const char msg[] = "{\"error_code\":\"INTERNAL\",\"error_msg\":\"out of memory\"}";
    char *body = malloc(sizeof msg);
    if (body != NULL)
        memcpy(body, msg, sizeof msg);
    set_body(res, 500, "application/json", body, body ? sizeof msg - 1 : 0);
}

int sl_http_respond_json(sl_http_response_t *res, int status, json_t *body)
{
    dumpbuf_t d = {NULL, 0, 0};
    if (body == NULL ||
        json_dump_callback(body, dump_append, &d, JSON_COMPACT | JSON_ENCODE_ANY) != 0) {
        json_decref(body);
        free(d.data);
        set_static_500(res);
        return SL_ENOMEM;
    }
    json_decref(body);
    if (d.data == NULL) { /* cannot happen for a valid value; keep the contract anyway */
        set_static_500(res);
        return SL_ENOMEM;
    }
    set_body(res, status, "application/json", d.data, d.len);
    return 0;
}

/* A message may quote client input: bytes that are not valid UTF-8 become '?'. */
static json_t *string_lossy(char *msg)
{
    json_t *s = json_string(msg);
    if (s != NULL)
        return s;
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p >= 0x80)
            *p = '?';
    return json_string(msg);
}

int sl_http_respond_error(sl_http_response_t *res, int status, const char *error_code,
                          const char *fmt, ...)
{
    char msg[SL_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *obj = json_object();
    json_t *code = json_string(error_code ? error_code : "INTERNAL");
    json_t *text = string_lossy(msg);
    if (obj == NULL || code == NULL || text == NULL || json_object_set_new(obj, "error_code", code) != 0) {
        json_decref(obj);
        json_decref(code);
        json_decref(text);
        set_static_500(res);
        return SL_ENOMEM;
    }
    if (json_object_set_new(obj, "error_msg", text) != 0) {
        json_decref(obj);
        set_static_500(res);
        return SL_ENOMEM;
    }
    return sl_http_respond_json(res, status, obj);
}

int sl_http_respond_raw(sl_http_response_t *res, int status, const char *content_type,
                        const char *body, size_t len)
{
    char *copy = malloc(len + 1);
    if (copy == NULL) {
        set_static_500(res);
        return SL_ENOMEM;
    }
    if (len)
        memcpy(copy, body, len);
    copy[len] = '\0';
    set_body(res, status, content_type ? content_type : "text/plain; charset=utf-8", copy, len);
    return 0;
}

static int header_text_ok(const char *s, int is_name)
{
    if (s == NULL || (is_name && *s == '\0'))
        return 0;
    for (; *s; s++)
        if (*s == '\r' || *s == '\n' || (is_name && (*s == ':' || *s == ' ')))
            return 0;
    return 1;
}

int sl_http_response_header(sl_http_response_t *res, const char *name, const char *value)
{
    if (!header_text_ok(name, 1) || !header_text_ok(value, 0))
        return SL_EINVAL;
    size_t room = sizeof res->headers - res->headers_len;
    int n = snprintf(res->headers + res->headers_len, room, "%s: %s\r\n", name, value);
    if (n < 0 || (size_t)n >= room) {
        res->headers[res->headers_len] = '\0';
        return SL_ELIMIT;
    }
    res->headers_len += (size_t)n;
    return 0;
}

/* ---- requests -------------------------------------------------------------------------- */

const char *sl_http_header(const sl_http_request_t *req, const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (strcasecmp(req->headers[i].name, name) == 0)
            return req->headers[i].value;
    return NULL;
}

const char *sl_http_param(const sl_http_request_t *req, const char *name)
{
    for (size_t i = 0; i < req->nparams; i++)
        if (strcmp(req->params[i].name, name) == 0)
            return req->params[i].value;
    return NULL;
}

json_t *sl_http_body_json(const sl_http_request_t *req, sl_http_response_t *res)
{
    json_error_t e;
    if (req->body_len == 0) {
        sl_http_respond_error(res, 400, "MALFORMED_JSON", "the request body is empty; want a JSON object");
        return NULL;
    }
    json_t *v = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &e);
    if (v == NULL) {
        sl_http_respond_error(res, 400, "MALFORMED_JSON", "malformed JSON at line %d, column %d: %s",
                              e.line, e.column, e.text);
        return NULL;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        sl_http_respond_error(res, 400, "INVALID_ARGUMENT", "the request body must be a JSON object");
        return NULL;
    }
    return v;
}

/* ---- auth (A3) ------------------------------------------------------------------------- */

int sl_http_ct_equal(const char *a, size_t alen, const char *b, size_t blen)
{
    /* Every byte of `a` is compared against the secret, cycling through it, so the time
     * depends on alen only; a length mismatch is folded into the same accumulator. */
    volatile size_t diff = alen ^ blen;
    if (blen == 0)
        return 0;
    for (size_t i = 0; i < alen; i++)
        diff |= (size_t)((unsigned char)a[i] ^ (unsigned char)b[i % blen]);
    return diff == 0;
}

int sl_http_bearer_ok(const sl_http_request_t *req, const char *token)
{
    const char *auth = req->authorization;
    if (token == NULL || token[0] == '\0' || auth == NULL)
        return 0;
    if (strncasecmp(auth, "Bearer", 6) != 0 || (auth[6] != ' ' && auth[6] != '\t'))
        return 0;
    const char *t = auth + 6;
    while (*t == ' ' || *t == '\t')
        t++;
    size_t len = strlen(t);
    while (len > 0 && (t[len - 1] == ' ' || t[len - 1] == '\t'))
        len--;
    return sl_http_ct_equal(t, len, token, strlen(token));
}

/* ---- routes ---------------------------------------------------------------------------- */

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

int sl_http_route_match(const char *pattern, const char *path, sl_http_kv_t *params,
                        size_t maxparams, size_t *nparams, char *buf, size_t buflen)
{
    size_t used = 0, n = 0;
    const char *p = pattern, *q = path;
    int bad = 0;
    *nparams = 0;
    while (*p) {
        if (*p != '{') {
            if (*p != *q)
                return 0;
            p++;
            q++;
            continue;
        }
        const char *close = strchr(p, '}');
        if (close == NULL)
            return 0; /* a broken pattern matches nothing */
        size_t seglen = strcspn(q, "/");
        if (seglen == 0)
            return 0;
        if (n == maxparams)
            return SL_ELIMIT;
        size_t namelen = (size_t)(close - p - 1);
        /* name + NUL + value (decoding never lengthens) + NUL */
        if (used + namelen + seglen + 2 > buflen)
            return SL_ELIMIT;
        char *name = buf + used;
        memcpy(name, p + 1, namelen);
        name[namelen] = '\0';
        used += namelen + 1;
        char *value = buf + used;
        size_t vlen = 0;
        for (size_t i = 0; i < seglen; i++) {
            char ch = q[i];
            if (ch == '%') {
                int hi = i + 2 < seglen ? hexval(q[i + 1]) : -1;
                int lo = hi >= 0 ? hexval(q[i + 2]) : -1;
                if (hi < 0 || lo < 0 || (hi == 0 && lo == 0) || (hi * 16 + lo) == '/') {
                    bad = 1;
                    break;
                }
                ch = (char)(hi * 16 + lo);
                i += 2;
            }
            value[vlen++] = ch;
        }
        value[vlen] = '\0';
        used += vlen + 1;
        params[n].name = name;
        params[n].value = value;
        n++;
        p = close + 1;
        q += seglen;
    }
    if (*q != '\0')
        return 0;
    *nparams = n;
    return bad ? SL_EINVAL : 1;
}

void sl_http_router_dispatch(void *arg, const sl_http_request_t *req, sl_http_response_t *res)
{
    const sl_http_router_t *router = arg;
    const sl_http_route_t *found = NULL;
    sl_http_request_t routed = *req;
    char buf[4096];
    char allow[160] = "";
    size_t allow_len = 0;
    int path_known = 0, bad_escape = 0;
    int is_head = strcmp(req->method, "HEAD") == 0;

    for (size_t i = 0; i < router->nroutes && found == NULL; i++) {
        const sl_http_route_t *r = &router->routes[i];
        size_t n = 0;
        int rc = sl_http_route_match(r->pattern, req->path, routed.params, SL_HTTP_MAX_PARAMS, &n,
                                     buf, sizeof buf);
        if (rc == SL_EINVAL)
            bad_escape = 1;
        if (rc != 1)
            continue;
        path_known = 1;
        if (strcmp(r->method, req->method) == 0 || (is_head && strcmp(r->method, "GET") == 0)) {
            found = r;
            routed.nparams = n;
            break;
        }
        if (strstr(allow, r->method) == NULL) {
            int w = snprintf(allow + allow_len, sizeof allow - allow_len, "%s%s%s",
                             allow_len ? ", " : "", r->method,
                             strcmp(r->method, "GET") == 0 ? ", HEAD" : "");
            if (w > 0 && (size_t)w < sizeof allow - allow_len)
                allow_len += (size_t)w;
        }
    }
    if (found == NULL) {
        if (path_known) {
            sl_http_respond_error(res, 405, "METHOD_NOT_ALLOWED", "%s is not allowed on %s",
                                  req->method, req->path);
            sl_http_response_header(res, "Allow", allow);
        } else if (bad_escape) {
            sl_http_respond_error(res, 400, "BAD_REQUEST", "bad %%-escape in the path %s",
                                  req->path);
        } else {
            sl_http_respond_error(res, 404, "NOT_FOUND", "no route %s %s", req->method,
                                  req->path);
        }
        return;
    }
    if (!found->public_route && !sl_http_bearer_ok(req, router->token)) {
        const char *a = req->authorization;
        int bearer = a && !strncasecmp(a, "Bearer", 6) && (a[6] == ' ' || a[6] == '\t');
        sl_http_respond_error(res, 401, "UNAUTHORIZED",
                              !a        ? "missing Authorization: Bearer <token>"
                              : !bearer ? "Authorization must be 'Bearer <token>' (the token "
                                          "file's content)"
                                        : "wrong bearer token");
        sl_http_response_header(res, "WWW-Authenticate", "Bearer");
        return;
    }
    found->fn(router->arg, &routed, res);
}
