/* store.c — what every store implementation shares (A6): freeing through the ops table. */
#include "store.h"

void sl_store_free(sl_store_t *s)
{
    if (s != NULL && s->ops != NULL && s->ops->destroy != NULL)
        s->ops->destroy(s);
}
