/* main.c — the `sluice` binary: dispatches to the subcommands of SPEC §4. */
#include <stdio.h>
#include <string.h>

#include "cmd/cmd.h"

static void usage(FILE *to)
{
    fputs("usage: sluice <command> [options]\n"
          "\n"
          "  dev [--nodes 4] [--changefeeds 32] [--tables 16] [--listen A] [--data DIR]\n"
          "      [--policy-dir policies] [--policy FILE]\n"
          "                      a coordinator and N nodes on loopback; prints URL, token\n"
          "                      and REPL socket; runs until SIGINT/SIGTERM\n"
          "  serve --listen A --node-listen A --data DIR --policy-dir DIR [--policy FILE]\n"
          "        --token-file F\n"
          "                      the coordinator alone\n"
          "  agent --coordinator A --id ID --token-file F\n"
          "                      one node\n"
          "\n"
          "  policy check FILE   load a policy through the sandbox, run its selftest and a\n"
          "                      small placement; exit 0 when it is sound\n"
          "\n"
          "  sim [--seed N | --seeds A..B] [--nodes N] [--changefeeds N] [--tables N]\n"
          "      [--drain ID] [--faults LIST] [--policy FILE] [--json]\n"
          "                      the deterministic simulator with invariant checks (M1, M2)\n"
          "\n"
          "  drain ID [--watch] [--dry-run] [--cancel]\n"
          "                      drain a node (R2); --watch follows it until it completes\n"
          "  status              the nodes, their counts and the drain (R3)\n"
          "  repl [--data DIR]   Lua evaluated in the coordinator (R1)\n"
          "  (clients find the coordinator through --server/--token, SLUICE_SERVER/\n"
          "   SLUICE_TOKEN, or --data DIR: DIR/repl.sock and DIR/token)\n"
          "\n"
          "`sluice COMMAND --help` lists a command's options (SPEC §4).\n",
          to);
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "policy")) return sl_cmd_policy(argc - 1, argv + 1);
    if (!strcmp(argv[1], "serve")) return sl_cmd_serve(argc - 1, argv + 1);
    if (!strcmp(argv[1], "agent")) return sl_cmd_agent(argc - 1, argv + 1);
    if (!strcmp(argv[1], "dev")) return sl_cmd_dev(argc - 1, argv + 1);
    if (!strcmp(argv[1], "sim")) return sl_cmd_sim(argc - 1, argv + 1);
    if (!strcmp(argv[1], "repl")) return sl_cmd_repl(argc - 1, argv + 1);
    if (!strcmp(argv[1], "drain")) return sl_cmd_drain(argc - 1, argv + 1);
    if (!strcmp(argv[1], "status")) return sl_cmd_status(argc - 1, argv + 1);
    fprintf(stderr, "sluice: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
