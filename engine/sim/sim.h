/* sim.h — the deterministic simulator behind `sluice sim` (M1, M2).
 *
 * One process holds the coordinator core, N agents and a simulated network: a priority
 * queue of messages by virtual delivery time, ties broken by a sequence number. Time is
 * virtual, randomness comes from one seeded xoshiro256** stream, tasks start and stop
 * through a timer driver. Faults are injected at seeded times. After every step the
 * invariants of M2 are checked; a violation is printed with the seed and the step. The
 * same configuration and seed give the same output, byte for byte. */
#ifndef SL_SIM_H
#define SL_SIM_H

#include <stdio.h>

#include "../common.h"

enum {
    SL_SIM_F_DELAY = 1 << 0,
    SL_SIM_F_LOSS = 1 << 1,
    SL_SIM_F_DUP = 1 << 2,
    SL_SIM_F_REORDER = 1 << 3,
    SL_SIM_F_CRASH = 1 << 4,
    SL_SIM_F_TARGET_CRASH = 1 << 5,
    SL_SIM_F_DEST_CRASH = 1 << 6,
    SL_SIM_F_COORD_RESTART = 1 << 7,
    SL_SIM_F_POLICY_SWAP = 1 << 8,
    SL_SIM_F_NO_DEST = 1 << 9,
    SL_SIM_F_ALL = (1 << 10) - 1,
};

/* Parses a comma list of fault names (or "all"). Returns 0 or SL_EINVAL with the bad name
 * in err. */
int sl_sim_parse_faults(const char *list, unsigned *out, char *err, size_t errlen);
/* The comma list of the faults in `mask` ("none" when empty), in the order of SPEC §4. */
void sl_sim_faults_name(unsigned mask, char *out, size_t outlen);

typedef struct {
    uint64_t seed;
    uint32_t nodes;       /* n1…nN; default 4 */
    uint32_t changefeeds; /* default 8 */
    uint32_t tables;      /* dispatchers per changefeed; default 4 */
    char drain[SL_ID_MAX]; /* default "n1" */
    unsigned faults;
    const char *policy_file; /* NULL: the built-in least-loaded policy */
    uint64_t max_steps;      /* default 2,000,000 */
    uint64_t max_time_ms;    /* virtual; default 900,000 */
    int verbose;             /* trace the drain's milestones to `log` */
    int checker_selftest;    /* plant a bug (the first task started after the drain starts
                              * is also started on a second node) to show that M2 catches
                              * it; for tests only (SLUICE_SIM_CHECKER_SELFTEST=1) */
} sl_sim_config_t;

void sl_sim_config_default(sl_sim_config_t *cfg);

typedef struct {
    uint64_t seed;
    int completed;          /* D8 held: the target went Stopping */
    char state[16];         /* D11 state of the target at the end */
    uint32_t violations;
    char first_violation[SL_ERRMSG_MAX];
    uint64_t violation_step;
    uint64_t steps;
    uint64_t end_ms;              /* virtual time at the end */
    uint64_t makespan_ms;         /* drain start → completion (0 when it did not complete) */
    uint64_t lower_bound_ms;      /* ceil(tasks / batch) × move latency (B3) */
    uint64_t moves;               /* tasks that started on a node other than their last one */
    uint32_t initial_maintainers; /* on the target when the drain started */
    uint32_t initial_dispatchers;
    int target_survived;
    int blocked_seen;            /* D10: the status said why the drain could not move on */
    uint64_t refusals;           /* P3: policy decisions the coordinator refused */
    uint64_t messages, dropped;
} sl_sim_result_t;

/* Runs one seed. Violations (and, when verbose, milestones) go to `log`, each naming the
 * seed and step. Returns 0, or a negative code when the run could not be set up (a policy
 * file that does not load: the message is in err). */
int sl_sim_run(const sl_sim_config_t *cfg, sl_sim_result_t *out, FILE *log, char *err,
               size_t errlen);

#endif
