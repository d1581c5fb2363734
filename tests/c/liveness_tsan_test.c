/* liveness_tsan_test.c — L1 under threads, built with -fsanitize=thread by `make test`.
 * Node liveness is a C11 atomic changed only by CAS: when many threads race the same
 * transition exactly one wins, readers on other threads never see a torn or illegal
 * value, and ThreadSanitizer reports no data race. */
#include <pthread.h>
#include <stdatomic.h>

#include "core/core.h"
#include "tap.h"

#define THREADS 8
#define ROUNDS 200

static sl_core_t *core;
static atomic_int wins_draining, wins_stopping, illegal_reads;
static pthread_barrier_t barrier;

static void *racer(void *arg)
{
    int i = (int)(intptr_t)arg;
    for (int r = 0; r < ROUNDS; r++) {
        pthread_barrier_wait(&barrier); /* all threads race the same round */
        /* half try Alive→Draining, half Alive→Stopping: exactly one of them may win */
        sl_liveness_t to = i % 2 ? SL_DRAINING : SL_STOPPING;
        if (sl_core_liveness_cas(core, "n1", SL_ALIVE, to) == 0) {
            atomic_fetch_add(to == SL_DRAINING ? &wins_draining : &wins_stopping, 1);
        }
        sl_liveness_t seen;
        if (sl_core_liveness(core, "n1", &seen) != 0 || (seen != SL_DRAINING && seen != SL_STOPPING))
            atomic_fetch_add(&illegal_reads, 1);
        /* a refused transition is refused whatever the interleaving */
        if (sl_core_liveness_cas(core, "n1", SL_STOPPING, SL_ALIVE) != SL_EINVAL)
            atomic_fetch_add(&illegal_reads, 1);
        pthread_barrier_wait(&barrier);
        if (i == 0) { /* reset between rounds, single-threaded: a fresh node */
            sl_core_node_leave(core, "n1");
            sl_core_node_join(core, "n1", "");
        }
    }
    return NULL;
}

int main(void)
{
    sl_core_config_t cfg;
    sl_core_config_default(&cfg);
    TAP_CHECK(sl_core_new(&cfg, &core) == 0, "core created");
    TAP_CHECK(sl_core_node_join(core, "n1", "") == 0, "node joined");
    pthread_barrier_init(&barrier, NULL, THREADS);
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) pthread_create(&th[i], NULL, racer, (void *)(intptr_t)i);
    for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
    int wins = atomic_load(&wins_draining) + atomic_load(&wins_stopping);
    TAP_CHECK(wins == ROUNDS, "L1: exactly one CAS wins each race out of Alive");
    TAP_CHECK(atomic_load(&wins_draining) > 0 && atomic_load(&wins_stopping) > 0,
              "L1: both transitions out of Alive won some races");
    TAP_CHECK(atomic_load(&illegal_reads) == 0,
              "L1: readers on other threads only see legal values; refused CAS stays refused");
    pthread_barrier_destroy(&barrier);
    sl_core_free(core);
    return TAP_DONE();
}
