/* tap.h — the smallest TAP producer for the C tests run by `make test`. */
#ifndef SL_TAP_H
#define SL_TAP_H
#include <stdio.h>

static int tap_n, tap_failed;

#define TAP_CHECK(cond, name)                                                                  \
    do {                                                                                       \
        tap_n++;                                                                               \
        if (cond) {                                                                            \
            printf("ok %d - %s\n", tap_n, name);                                               \
        } else {                                                                               \
            tap_failed++;                                                                      \
            printf("not ok %d - %s\n# %s:%d: %s\n", tap_n, name, __FILE__, __LINE__, #cond);   \
        }                                                                                      \
    } while (0)

#define TAP_DONE() (printf("1..%d\n", tap_n), tap_failed ? 1 : 0)
#endif
