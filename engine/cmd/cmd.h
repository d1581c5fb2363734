/* cmd.h — the subcommands of the `sluice` binary (SPEC §4). Each returns the exit status. */
#ifndef SL_CMD_H
#define SL_CMD_H

#include <stddef.h>
#include <stdint.h>

int sl_cmd_policy(int argc, char **argv); /* sluice policy check FILE */
int sl_cmd_serve(int argc, char **argv);  /* sluice serve: the coordinator */
int sl_cmd_agent(int argc, char **argv);  /* sluice agent: one node */
int sl_cmd_dev(int argc, char **argv);    /* sluice dev: coordinator + N nodes */
int sl_cmd_sim(int argc, char **argv);    /* sluice sim (M1, M2) */
int sl_cmd_repl(int argc, char **argv);   /* sluice repl (R1) */
int sl_cmd_drain(int argc, char **argv);  /* sluice drain ID (R2) */
int sl_cmd_status(int argc, char **argv); /* sluice status (R3) */

/* Shared by the daemon commands (serve.c): the token of --token-file, trimmed; a number
 * flag. Both return 0 or -1 (with err set, or a message on stderr). */
int sl_cmd_read_token(const char *path, char *out, size_t outlen, char *err, size_t errlen);
int sl_cmd_parse_u64(const char *flag, const char *v, uint64_t *out);

/* Shared by the client commands (status.c): --server, --token, --token-file, --data. */
#include "net/client.h"
typedef struct {
    const char *server, *token, *token_file, *data;
} sl_cmd_client_opts_t;
/* argv[*i] is a client flag: consumes it (and its value), returns 1; 0 when it is not one;
 * -1 (said on stderr) when its value is missing. */
int sl_cmd_client_flag(int argc, char **argv, int *i, sl_cmd_client_opts_t *o);
/* Finds the server (SPEC §4) and prepares the client; 0, or -1 said on stderr. */
int sl_cmd_client_open(const sl_cmd_client_opts_t *o, sl_client_t *c);
/* A request whose answer must be 2xx JSON; otherwise the error is said on stderr and -1. */
int sl_cmd_get_json(sl_client_t *c, const char *method, const char *path, json_t *body,
                    sl_client_response_t *res);
/* An answer in hand: 0 when it is a 2xx JSON response, else -1 with the error printed and
 * the response freed. */
int sl_cmd_expect_json(const char *method, const char *path, sl_client_response_t *res);
/* One line about a D11 drain status object. */
void sl_cmd_drain_line(json_t *status, char *out, size_t outlen);

#endif
