/* map.c — string → index hash map, int vectors and slot tables used by the core's tables.
 * Open addressing with linear probing; grows at 50% load so lookups stay O(1). */
#include <stdlib.h>
#include <string.h>

#include "core_int.h"

static const char sl_map_tomb[1];

static uint32_t hash_str(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static int map_grow(sl_map_t *m)
{
    uint32_t cap = m->cap ? m->cap * 2 : 16;
    if (m->len * 4 < m->cap) cap = m->cap; /* mostly tombstones: rehash in place */
    sl_map_slot_t *slots = calloc(cap, sizeof *slots);
    if (!slots) return SL_ENOMEM;
    for (uint32_t i = 0; i < m->cap; i++) {
        sl_map_slot_t *s = &m->slots[i];
        if (!s->key || s->key == sl_map_tomb) continue;
        uint32_t j = s->hash & (cap - 1);
        while (slots[j].key) j = (j + 1) & (cap - 1);
        slots[j] = *s;
    }
    free(m->slots);
    m->slots = slots;
    m->cap = cap;
    m->used = m->len;
    return 0;
}

int sl_map_put(sl_map_t *m, const char *key, int32_t val)
{
    if ((m->used + 1) * 2 > m->cap) {
        int rc = map_grow(m);
        if (rc) return rc;
    }
    uint32_t h = hash_str(key), mask = m->cap - 1, i = h & mask;
    int64_t tomb = -1;
    for (;; i = (i + 1) & mask) {
        sl_map_slot_t *s = &m->slots[i];
        if (!s->key) break;
        if (s->key == sl_map_tomb) {
            if (tomb < 0) tomb = i;
            continue;
        }
        if (s->hash == h && !strcmp(s->key, key)) return SL_EEXIST;
    }
    if (tomb >= 0) {
        i = (uint32_t)tomb;
    } else {
        m->used++;
    }
    m->slots[i] = (sl_map_slot_t){.key = key, .hash = h, .val = val};
    m->len++;
    return 0;
}

static sl_map_slot_t *map_find(const sl_map_t *m, const char *key)
{
    if (!m->cap) return NULL;
    uint32_t h = hash_str(key), mask = m->cap - 1;
    for (uint32_t i = h & mask;; i = (i + 1) & mask) {
        sl_map_slot_t *s = &m->slots[i];
        if (!s->key) return NULL;
        if (s->key != sl_map_tomb && s->hash == h && !strcmp(s->key, key)) return s;
    }
}

int32_t sl_map_get(const sl_map_t *m, const char *key)
{
    sl_map_slot_t *s = map_find(m, key);
    return s ? s->val : -1;
}

void sl_map_del(sl_map_t *m, const char *key)
{
    sl_map_slot_t *s = map_find(m, key);
    if (!s) return;
    s->key = sl_map_tomb;
    m->len--;
}

void sl_map_free(sl_map_t *m)
{
    free(m->slots);
    *m = (sl_map_t){0};
}

int sl_ivec_push(sl_ivec_t *vec, int32_t x)
{
    if (vec->len == vec->cap) {
        size_t cap = vec->cap ? vec->cap * 2 : 16;
        int32_t *v = realloc(vec->v, cap * sizeof *v);
        if (!v) return SL_ENOMEM;
        vec->v = v;
        vec->cap = cap;
    }
    vec->v[vec->len++] = x;
    return 0;
}

void sl_ivec_free(sl_ivec_t *vec)
{
    free(vec->v);
    *vec = (sl_ivec_t){0};
}

int32_t sl_slots_take(void **table, size_t *cap, size_t elem, size_t first_cap,
                      sl_ivec_t *free_slots)
{
    if (!free_slots->len) {
        size_t old = *cap, grown = old ? old * 2 : first_cap;
        if (grown > (size_t)INT32_MAX) return SL_ENOMEM;
        char *t = realloc(*table, grown * elem);
        if (!t) return SL_ENOMEM;
        memset(t + old * elem, 0, (grown - old) * elem);
        *table = t;
        *cap = grown;
        /* lowest slot on top; a slot that fails to enter the list is merely never used */
        for (size_t i = grown; i > old; i--)
            if (sl_ivec_push(free_slots, (int32_t)(i - 1)) != 0) return SL_ENOMEM;
    }
    return free_slots->v[--free_slots->len];
}
