/* policy_check.c — `sluice policy check FILE` (SPEC §4; P1–P3).
 *
 * Exit 0: the policy loads, passes its selftest and answers a synthetic batch soundly;
 * a short summary goes to stdout. Exit 1: it does not; every problem goes to stderr,
 * naming the file (and the line when Lua gives one). Exit 2: usage error. The work is
 * sl_policy_check_file(): the same sandbox as in production, bounded in time and memory,
 * so a hostile file can neither hang nor crash this command. */
#include <stdio.h>
#include <string.h>

#include "cmd/cmd.h"
#include "policy/policy.h"

static void usage(FILE *to)
{
    fputs("usage: sluice policy check FILE\n"
          "  load FILE through the policy sandbox (text only, contract, selftest), run\n"
          "  place (and drain_order) on a small synthetic cluster and check every answer.\n"
          "  exit 0 when sound, 1 when not (reasons on stderr), 2 on usage errors\n",
          to);
}

int sl_cmd_policy(int argc, char **argv)
{
    if (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        usage(stdout);
        return 0;
    }
    if (argc != 3 || strcmp(argv[1], "check") != 0 || argv[2][0] == '\0') {
        usage(stderr);
        return 2;
    }
    char summary[2048], err[4096];
    sl_policy_limits_t lim;
    sl_policy_limits_default(&lim);
    if (sl_policy_check_file(argv[2], &lim, summary, sizeof summary, err, sizeof err) != 0) {
        fprintf(stderr, "sluice policy check: %s: FAILED\n%s\n", argv[2], err);
        return 1;
    }
    fputs(summary, stdout);
    return 0;
}
