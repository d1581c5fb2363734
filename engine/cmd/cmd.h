/* cmd.h — the subcommands of the `sluice` binary (SPEC §4). Each returns the exit status. */
#ifndef SL_CMD_H
#define SL_CMD_H

int sl_cmd_policy(int argc, char **argv); /* sluice policy check FILE */
int sl_cmd_sim(int argc, char **argv);    /* sluice sim (M1, M2) */

#endif
