/* client.c — the CLI's and the REPL's HTTP/1.1 client (see client.h).
 *
 * Blocking sockets with poll() timeouts; the response is parsed by http_parser in
 * response mode (status, Content-Length or chunked bodies, keep-alive), the body by
 * jansson. A kept-alive connection that the server closed while idle is opened again,
 * once, when nothing of the response had arrived. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <http_parser.h>

#include "client.h"

#define CLIENT_BODY_MAX (64u << 20)

/* strerror, starting lower-case, for "…: connection refused" */
static void errtext(int e, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s", strerror(e));
    if (out[0] && isupper((unsigned char)out[0]) && !isupper((unsigned char)out[1]))
        out[0] = (char)tolower((unsigned char)out[0]);
}

static const char *where(const sl_client_t *c)
{
    return c->server;
}

int sl_client_init(sl_client_t *c, const char *server, const char *token, char *err,
                   size_t errlen)
{
    memset(c, 0, sizeof *c);
    c->fd = -1;
    c->timeout_ms = 10000;
    if (server == NULL || server[0] == '\0') {
        snprintf(err, errlen, "no server address");
        return SL_EINVAL;
    }
    snprintf(c->server, sizeof c->server, "%s", server);
    snprintf(c->token, sizeof c->token, "%s", token ? token : "");
    if (strncmp(server, "unix:", 5) == 0) {
        if ((size_t)snprintf(c->unix_path, sizeof c->unix_path, "%s", server + 5) >=
                sizeof(((struct sockaddr_un *)0)->sun_path) ||
            server[5] == '\0') {
            snprintf(err, errlen, "socket path too long or empty: %s", server + 5);
            return SL_EINVAL;
        }
        return 0;
    }
    const char *s = server;
    if (strncmp(s, "http://", 7) == 0)
        s += 7;
    else if (strstr(s, "://") != NULL) {
        snprintf(err, errlen, "server %s: only http:// and unix: are supported", server);
        return SL_EINVAL;
    }
    char hostport[300];
    snprintf(hostport, sizeof hostport, "%s", s);
    char *slash = strchr(hostport, '/');
    if (slash)
        *slash = '\0';
    char *colon = strrchr(hostport, ':');
    if (colon == NULL || colon[1] == '\0' || (hostport[0] == '[' && colon < strchr(hostport, ']'))) {
        snprintf(err, errlen, "server %s: want HOST:PORT (or unix:PATH)", server);
        return SL_EINVAL;
    }
    *colon = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port <= 0 || port > 65535) {
        snprintf(err, errlen, "server %s: bad port", server);
        return SL_EINVAL;
    }
    const char *h = hostport;
    size_t hl = strlen(h);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        hostport[hl - 1] = '\0';
        h++;
    }
    if (h[0] == '\0') {
        snprintf(err, errlen, "server %s: no host", server);
        return SL_EINVAL;
    }
    snprintf(c->host, sizeof c->host, "%.255s", h);
    c->port = (int)port;
    return 0;
}

void sl_client_close(sl_client_t *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static int wait_fd(int fd, short events, int timeout_ms)
{
    struct pollfd p = {fd, events, 0};
    for (;;) {
        int n = poll(&p, 1, timeout_ms);
        if (n < 0 && errno == EINTR)
            continue;
        return n; /* 0: timeout */
    }
}

/* Non-blocking connect with a timeout; the socket stays non-blocking (all I/O polls). */
static int connect_timeout(int fd, const struct sockaddr *sa, socklen_t len, int timeout_ms)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    if (connect(fd, sa, len) == 0)
        return 0;
    if (errno != EINPROGRESS)
        return errno;
    int n = wait_fd(fd, POLLOUT, timeout_ms);
    if (n == 0)
        return ETIMEDOUT;
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
        return errno;
    return soerr;
}

static int client_connect(sl_client_t *c, char *err, size_t errlen)
{
    char e[128];
    if (c->unix_path[0]) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            errtext(errno, e, sizeof e);
            snprintf(err, errlen, "cannot reach the coordinator at %s: %s", where(c), e);
            return SL_EIO;
        }
        struct sockaddr_un sun;
        memset(&sun, 0, sizeof sun);
        sun.sun_family = AF_UNIX;
        memcpy(sun.sun_path, c->unix_path, strlen(c->unix_path) + 1); /* length checked at init */
        int rc = connect_timeout(fd, (struct sockaddr *)&sun, sizeof sun, c->timeout_ms);
        if (rc != 0) {
            close(fd);
            errtext(rc, e, sizeof e);
            snprintf(err, errlen, "cannot reach the coordinator at %s: %s%s", where(c), e,
                     rc == ENOENT || rc == ECONNREFUSED ? " (is it running with this data directory?)" : "");
            return SL_EIO;
        }
        c->fd = fd;
        return 0;
    }
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    char port[16];
    snprintf(port, sizeof port, "%d", c->port);
    int g = getaddrinfo(c->host, port, &hints, &ai);
    if (g != 0) {
        snprintf(err, errlen, "cannot reach the coordinator at %s: %s", where(c), gai_strerror(g));
        return SL_EIO;
    }
    int last = ECONNREFUSED;
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            last = errno;
            continue;
        }
        int rc = connect_timeout(fd, a->ai_addr, a->ai_addrlen, c->timeout_ms);
        if (rc == 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            c->fd = fd;
            freeaddrinfo(ai);
            return 0;
        }
        last = rc;
        close(fd);
    }
    freeaddrinfo(ai);
    errtext(last, e, sizeof e);
    snprintf(err, errlen, "cannot reach the coordinator at %s: %s", where(c), e);
    return SL_EIO;
}

static int send_all(int fd, const char *buf, size_t len, int timeout_ms)
{
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(fd, buf + off, len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_fd(fd, POLLOUT, timeout_ms) == 0)
                return ETIMEDOUT;
            continue;
        }
        return n < 0 ? errno : EPIPE;
    }
    return 0;
}

typedef struct {
    char *body;
    size_t len, cap;
    int complete;
    int too_big;
} parse_t;

static int on_body(http_parser *p, const char *at, size_t len)
{
    parse_t *st = p->data;
    if (st->len + len > CLIENT_BODY_MAX) {
        st->too_big = 1;
        return 1;
    }
    if (st->len + len + 1 > st->cap) {
        size_t cap = st->cap ? st->cap : 4096;
        while (cap < st->len + len + 1)
            cap *= 2;
        char *nb = realloc(st->body, cap);
        if (nb == NULL) {
            st->too_big = 1;
            return 1;
        }
        st->body = nb;
        st->cap = cap;
    }
    memcpy(st->body + st->len, at, len);
    st->len += len;
    st->body[st->len] = '\0';
    return 0;
}

static int on_complete(http_parser *p)
{
    parse_t *st = p->data;
    st->complete = 1;
    http_parser_pause(p, 1); /* nothing after this response belongs to it */
    return 0;
}

/* One attempt on the current connection. *received tells whether any byte came back
 * (a stale kept-alive connection fails before that and may be retried). */
static int attempt(sl_client_t *c, const char *req, size_t reqlen, sl_client_response_t *res,
                   int *received, char *err, size_t errlen)
{
    char e[128];
    *received = 0;
    int rc = send_all(c->fd, req, reqlen, c->timeout_ms);
    if (rc != 0) {
        errtext(rc, e, sizeof e);
        snprintf(err, errlen, "cannot reach the coordinator at %s: %s", where(c), e);
        return SL_EIO;
    }
    http_parser parser;
    http_parser_settings settings;
    http_parser_init(&parser, HTTP_RESPONSE);
    http_parser_settings_init(&settings);
    settings.on_body = on_body;
    settings.on_message_complete = on_complete;
    parse_t st = {0};
    parser.data = &st;
    char buf[16384];
    int result = 0;
    while (!st.complete) {
        int w = wait_fd(c->fd, POLLIN, c->timeout_ms);
        if (w == 0) {
            snprintf(err, errlen, "the coordinator at %s did not answer within %d ms", where(c),
                     c->timeout_ms);
            result = SL_EIO;
            break;
        }
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
            continue;
        if (n < 0) {
            errtext(errno, e, sizeof e);
            snprintf(err, errlen, "cannot reach the coordinator at %s: %s", where(c), e);
            result = SL_EIO;
            break;
        }
        if (n > 0)
            *received = 1;
        size_t used = http_parser_execute(&parser, &settings, buf, (size_t)n);
        if (st.complete)
            break;
        if (st.too_big) {
            snprintf(err, errlen, "the coordinator at %s sent a body over %u bytes", where(c),
                     CLIENT_BODY_MAX);
            result = SL_EIO;
            break;
        }
        if (HTTP_PARSER_ERRNO(&parser) != HPE_OK || used != (size_t)n) {
            snprintf(err, errlen, "the answer from %s is not HTTP: %s", where(c),
                     http_errno_description(HTTP_PARSER_ERRNO(&parser)));
            result = SL_EIO;
            break;
        }
        if (n == 0) { /* the server closed the connection */
            snprintf(err, errlen, "the coordinator at %s closed the connection%s", where(c),
                     *received ? " in the middle of its answer" : "");
            result = SL_EIO;
            break;
        }
    }
    if (result != 0) {
        free(st.body);
        return result;
    }
    res->status = (int)parser.status_code;
    res->body = st.body ? st.body : strdup("");
    res->body_len = st.len;
    res->json = res->body_len ? json_loadb(res->body, res->body_len, 0, NULL) : NULL;
    if (!http_should_keep_alive(&parser))
        sl_client_close(c);
    return 0;
}

int sl_client_request(sl_client_t *c, const char *method, const char *path, json_t *body,
                      sl_client_response_t *res, char *err, size_t errlen)
{
    memset(res, 0, sizeof *res);
    char *payload = body ? json_dumps(body, JSON_COMPACT) : NULL;
    size_t plen = payload ? strlen(payload) : 0;
    char head[2048];
    int hn = snprintf(head, sizeof head,
                      "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: sluice-cli\r\n"
                      "Accept: application/json\r\n%s%s%s%s"
                      "Content-Length: %zu\r\n\r\n",
                      method, path, c->unix_path[0] ? "localhost" : c->host,
                      c->token[0] ? "Authorization: Bearer " : "", c->token[0] ? c->token : "",
                      c->token[0] ? "\r\n" : "",
                      payload ? "Content-Type: application/json\r\n" : "", plen);
    if (hn < 0 || (size_t)hn >= sizeof head) {
        free(payload);
        snprintf(err, errlen, "request too long");
        return SL_EINVAL;
    }
    size_t reqlen = (size_t)hn + plen;
    char *req = malloc(reqlen + 1);
    if (req == NULL) {
        free(payload);
        snprintf(err, errlen, "out of memory");
        return SL_ENOMEM;
    }
    memcpy(req, head, (size_t)hn);
    if (plen)
        memcpy(req + hn, payload, plen);
    free(payload);
    int rc = 0;
    for (int tries = 0; tries < 2; tries++) {
        int reused = c->fd >= 0;
        if (!reused && (rc = client_connect(c, err, errlen)) != 0)
            break;
        int received = 0;
        rc = attempt(c, req, reqlen, res, &received, err, errlen);
        if (rc == 0)
            break;
        sl_client_close(c);
        if (!reused || received)
            break; /* a fresh connection failed, or the answer broke off: say so */
    }
    free(req);
    return rc;
}

void sl_client_response_free(sl_client_response_t *res)
{
    free(res->body);
    if (res->json)
        json_decref(res->json);
    memset(res, 0, sizeof *res);
}

void sl_client_error_text(const sl_client_response_t *res, char *out, size_t outlen)
{
    const char *code = NULL, *msg = NULL;
    if (res->json) {
        code = json_string_value(json_object_get(res->json, "error_code"));
        msg = json_string_value(json_object_get(res->json, "error_msg"));
    }
    if (res->status == 401) {
        snprintf(out, outlen, "the token was refused (401 %s%s%s); give --token, SLUICE_TOKEN "
                              "or --data DIR with its token file",
                 code ? code : "UNAUTHORIZED", msg ? ": " : "", msg ? msg : "");
    } else if (code) {
        snprintf(out, outlen, "%s: %s", code, msg ? msg : "(no message)");
    } else {
        snprintf(out, outlen, "HTTP %d: %.200s", res->status, res->body ? res->body : "");
    }
}

/* ---- finding the server (SPEC §4) ----------------------------------------------------- */

static int read_token_file(const char *path, char *out, size_t outlen)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(out, 1, outlen - 1, f);
    fclose(f);
    out[n] = '\0';
    while (n && isspace((unsigned char)out[n - 1]))
        out[--n] = '\0';
    return n ? 0 : -1;
}

int sl_client_discover(const char *server_flag, const char *token_flag, const char *data_flag,
                       char *server, size_t serverlen, char *token, size_t tokenlen,
                       char *how, size_t howlen, char *err, size_t errlen)
{
    server[0] = token[0] = how[0] = '\0';
    const char *env_server = getenv("SLUICE_SERVER");
    const char *env_token = getenv("SLUICE_TOKEN");
    const char *data = data_flag && data_flag[0] ? data_flag : getenv("SLUICE_DATA");
    if (data && !data[0])
        data = NULL;

    if (server_flag && server_flag[0]) {
        snprintf(server, serverlen, "%s", server_flag);
        snprintf(how, howlen, "--server");
    } else if (env_server && env_server[0] && !(data_flag && data_flag[0])) {
        snprintf(server, serverlen, "%s", env_server);
        snprintf(how, howlen, "SLUICE_SERVER");
    } else if (data) {
        snprintf(server, serverlen, "unix:%s/repl.sock", data);
        snprintf(how, howlen, "data directory %s", data);
    } else {
        snprintf(server, serverlen, "127.0.0.1:8300");
        snprintf(how, howlen, "default");
    }

    if (token_flag && token_flag[0]) {
        snprintf(token, tokenlen, "%s", token_flag);
    } else if (env_token && env_token[0]) {
        snprintf(token, tokenlen, "%s", env_token);
    } else if (data) {
        char p[1100];
        snprintf(p, sizeof p, "%s/token", data);
        if (read_token_file(p, token, tokenlen) != 0)
            token[0] = '\0';
    }
    (void)err;
    (void)errlen;
    return 0;
}

void sl_client_escape(const char *s, char *out, size_t outlen)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t k = 0;
    for (; *s && k + 4 < outlen; s++) {
        unsigned char ch = (unsigned char)*s;
        if (isalnum(ch) || ch == '-' || ch == '_' || ch == '.' || ch == '~') {
            out[k++] = (char)ch;
        } else {
            out[k++] = '%';
            out[k++] = hex[ch >> 4];
            out[k++] = hex[ch & 15];
        }
    }
    out[k] = '\0';
}
