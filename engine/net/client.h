/* client.h — a small blocking HTTP/1.1 client for the CLI and the REPL (R1–R3).
 *
 * Talks to the coordinator over TCP ("127.0.0.1:8300", "http://host:port") or its Unix
 * socket ("unix:/path/repl.sock"). Responses are parsed by Debian's http_parser and
 * bodies by jansson (A1: no hand-written parsing). One connection is kept alive between
 * requests and opened again once when the server closed it meanwhile. Every failure is
 * said in an operator's words: "cannot reach the coordinator at 127.0.0.1:8300:
 * connection refused", "the token was refused", "CAPTURE_NOT_FOUND: no capture 'n9'".
 *
 * Finding the server (SPEC §4): --server/--token, else SLUICE_SERVER/SLUICE_TOKEN, else
 * the data directory (--data, else SLUICE_DATA): its socket `repl.sock` and its `token`
 * file; else 127.0.0.1:8300. Over the Unix socket the token is sent when one is known
 * (the socket's mode 0600 is what guards it; a coordinator may waive the token there). */
#ifndef SL_NET_CLIENT_H
#define SL_NET_CLIENT_H

#include <stddef.h>

#include <jansson.h>

#include "../common.h"

typedef struct {
    char server[1024]; /* as given, for messages */
    char host[256];    /* TCP; "" for a Unix socket */
    int port;
    char unix_path[512];
    char token[512];
    int timeout_ms;    /* connect, and each wait for the server; default 10000 */
    int fd;            /* kept-alive connection, -1 when none */
} sl_client_t;

typedef struct {
    int status;      /* HTTP status */
    char *body;      /* NUL-terminated */
    size_t body_len;
    json_t *json;    /* the body parsed as JSON, or NULL */
} sl_client_response_t;

/* `server`: "host:port", "[v6]:port", "http://host:port[/]" or "unix:/path". `token` may be
 * NULL or "". Returns 0 or SL_EINVAL with err set. */
int sl_client_init(sl_client_t *c, const char *server, const char *token, char *err,
                   size_t errlen);
void sl_client_close(sl_client_t *c);

/* One request. `body` (borrowed) is sent as JSON when not NULL. Returns 0 with *res
 * filled (any HTTP status), or a negative code with err set (unreachable, timeout, a
 * response that does not parse). Free res with sl_client_response_free. */
int sl_client_request(sl_client_t *c, const char *method, const char *path, json_t *body,
                      sl_client_response_t *res, char *err, size_t errlen);
void sl_client_response_free(sl_client_response_t *res);

/* What a non-2xx response means, for a person: 401 → "the token was refused (…)",
 * else "ERROR_CODE: message" (or the status and body when it is not the API's JSON). */
void sl_client_error_text(const sl_client_response_t *res, char *out, size_t outlen);

/* Applies SPEC §4's order to the flags given (NULL when absent). Fills server and token
 * (token "" when none is known) and, for messages, `how` ("--server", "SLUICE_SERVER",
 * "data directory DIR", "default"). Returns 0 or SL_EINVAL with err set (an unreadable
 * token file named explicitly). */
int sl_client_discover(const char *server_flag, const char *token_flag, const char *data_flag,
                       char *server, size_t serverlen, char *token, size_t tokenlen,
                       char *how, size_t howlen, char *err, size_t errlen);

/* %-encodes a path segment (ids go into URLs). */
void sl_client_escape(const char *s, char *out, size_t outlen);

#endif
