/* cmd.h — the subcommands of the `sluice` binary (SPEC §4). Each returns the exit status. */
#ifndef SL_CMD_H
#define SL_CMD_H

#include <stddef.h>
#include <stdint.h>

int sl_cmd_policy(int argc, char **argv); /* sluice policy check FILE */
int sl_cmd_serve(int argc, char **argv);  /* sluice serve: the coordinator */
int sl_cmd_agent(int argc, char **argv);  /* sluice agent: one node */
int sl_cmd_sim(int argc, char **argv);    /* sluice sim (M1, M2) */

/* Shared by the daemon commands (serve.c): the token of --token-file, trimmed; a number
 * flag. Both return 0 or -1 (with err set, or a message on stderr). */
int sl_cmd_read_token(const char *path, char *out, size_t outlen, char *err, size_t errlen);
int sl_cmd_parse_u64(const char *flag, const char *v, uint64_t *out);

#endif
