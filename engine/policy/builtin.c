/* builtin.c — the built-in C least-loaded policy (P1, P3).
 *
 * Guarantees: it never fails and never leaves a task out while a schedulable node exists
 * and ctx->batch_limit allows more decisions. A task goes to the node with the smallest
 * score = (tasks of the task's kind on the node) + inflight + (tasks this call already
 * planned on the node, of either kind); ties go to the earlier node in the array. It is
 * the fallback for every decision the core refuses, so it must be exact and cheap:
 * one min-heap per task kind keyed by (score, index), O(log nodes) per placement.
 *
 * batch_limit: at most that many decisions; 0 means no limit. Tasks beyond it are left
 * out (node and error NULL) and wait for a later batch. */
#include <stdlib.h>
#include <string.h>

#include "policy.h"

typedef struct {
    uint64_t *score; /* per node */
    uint32_t *heap;  /* node indices */
    uint32_t *pos;   /* node index -> heap slot */
    size_t n;
    int built;
} kind_heap_t;

typedef struct {
    sl_policy_t base;
    kind_heap_t heaps[2];
    uint32_t *planned; /* per node: tasks placed there earlier in this call */
    size_t cap;        /* nodes the arrays hold */
} builtin_t;

static int heap_less(const kind_heap_t *h, uint32_t a, uint32_t b)
{
    if (h->score[a] != h->score[b])
        return h->score[a] < h->score[b];
    return a < b;
}

static void heap_swap(kind_heap_t *h, size_t i, size_t j)
{
    uint32_t a = h->heap[i], b = h->heap[j];
    h->heap[i] = b;
    h->heap[j] = a;
    h->pos[b] = (uint32_t)i;
    h->pos[a] = (uint32_t)j;
}

static void heap_down(kind_heap_t *h, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->n && heap_less(h, h->heap[l], h->heap[m]))
            m = l;
        if (r < h->n && heap_less(h, h->heap[r], h->heap[m]))
            m = r;
        if (m == i)
            return;
        heap_swap(h, i, m);
        i = m;
    }
}

static void heap_build(kind_heap_t *h, const sl_place_node_t *nodes, size_t nnodes,
                       const uint32_t *planned, sl_task_kind_t kind)
{
    h->n = nnodes;
    for (size_t i = 0; i < nnodes; i++) {
        uint64_t own = kind == SL_TASK_MAINTAINER ? nodes[i].maintainers : nodes[i].dispatchers;
        h->score[i] = own + nodes[i].inflight + planned[i];
        h->heap[i] = (uint32_t)i;
        h->pos[i] = (uint32_t)i;
    }
    for (size_t i = nnodes / 2; i-- > 0;)
        heap_down(h, i);
    h->built = 1;
}

static int builtin_reserve(builtin_t *b, size_t nnodes)
{
    if (nnodes <= b->cap)
        return 0;
    for (int k = 0; k < 2; k++) {
        kind_heap_t *h = &b->heaps[k];
        uint64_t *score = realloc(h->score, nnodes * sizeof *score);
        if (score == NULL)
            return SL_ENOMEM;
        h->score = score;
        uint32_t *heap = realloc(h->heap, nnodes * sizeof *heap);
        if (heap == NULL)
            return SL_ENOMEM;
        h->heap = heap;
        uint32_t *pos = realloc(h->pos, nnodes * sizeof *pos);
        if (pos == NULL)
            return SL_ENOMEM;
        h->pos = pos;
    }
    uint32_t *planned = realloc(b->planned, nnodes * sizeof *planned);
    if (planned == NULL)
        return SL_ENOMEM;
    b->planned = planned;
    b->cap = nnodes;
    return 0;
}

/* A naive scan, used only if the heap arrays cannot be allocated: the policy must never
 * fail, so it degrades to O(nodes) per task instead. planned[] is unavailable too, so it
 * counts planned tasks by rescanning the decisions made so far. */
static void builtin_place_slow(const sl_place_task_t *tasks, size_t ntasks,
                               const sl_place_node_t *nodes, size_t nnodes, size_t limit,
                               sl_decision_t *out)
{
    size_t placed = 0;
    for (size_t t = 0; t < ntasks; t++) {
        if (limit != 0 && placed >= limit)
            break;
        size_t best = 0;
        uint64_t best_score = UINT64_MAX;
        for (size_t i = 0; i < nnodes; i++) {
            uint64_t s = tasks[t].kind == SL_TASK_MAINTAINER ? nodes[i].maintainers
                                                             : nodes[i].dispatchers;
            s += nodes[i].inflight;
            for (size_t u = 0; u < t; u++)
                if (out[u].node == nodes[i].id)
                    s++;
            if (s < best_score) {
                best_score = s;
                best = i;
            }
        }
        out[t].node = nodes[best].id;
        placed++;
    }
}

static int builtin_place(sl_policy_t *p, const sl_place_task_t *tasks, size_t ntasks,
                         const sl_place_node_t *nodes, size_t nnodes, const sl_place_ctx_t *ctx,
                         sl_decision_t *out, sl_place_report_t *report)
{
    builtin_t *b = (builtin_t *)p;
    size_t limit = ctx != NULL ? ctx->batch_limit : 0;

    if (report != NULL) {
        report->unasked = 0;
        report->message[0] = '\0';
    }
    for (size_t t = 0; t < ntasks; t++) {
        out[t].node = NULL;
        out[t].error = NULL;
    }
    if (nnodes == 0 || ntasks == 0)
        return 0;
    if (nnodes > UINT32_MAX || builtin_reserve(b, nnodes) != 0) {
        builtin_place_slow(tasks, ntasks, nodes, nnodes, limit, out);
        return 0;
    }
    b->heaps[0].built = b->heaps[1].built = 0;
    memset(b->planned, 0, nnodes * sizeof *b->planned);

    size_t placed = 0;
    for (size_t t = 0; t < ntasks; t++) {
        if (limit != 0 && placed >= limit)
            break;
        sl_task_kind_t kind = tasks[t].kind == SL_TASK_DISPATCHER ? SL_TASK_DISPATCHER
                                                                   : SL_TASK_MAINTAINER;
        kind_heap_t *h = &b->heaps[kind];
        if (!h->built)
            heap_build(h, nodes, nnodes, b->planned, kind);
        uint32_t best = h->heap[0];
        out[t].node = nodes[best].id;
        b->planned[best]++;
        placed++;
        /* The planned task weighs on the node for both kinds: it is on its way there. */
        for (int k = 0; k < 2; k++) {
            kind_heap_t *hk = &b->heaps[k];
            if (!hk->built)
                continue;
            hk->score[best]++;
            heap_down(hk, hk->pos[best]);
        }
    }
    return 0;
}

static void builtin_destroy(sl_policy_t *p)
{
    builtin_t *b = (builtin_t *)p;
    for (int k = 0; k < 2; k++) {
        free(b->heaps[k].score);
        free(b->heaps[k].heap);
        free(b->heaps[k].pos);
    }
    free(b->planned);
    free(b);
}

static const struct sl_policy_ops builtin_ops = {
    .place = builtin_place,
    .drain_order = NULL,
    .destroy = builtin_destroy,
};

int sl_policy_builtin_new(sl_policy_t **out)
{
    builtin_t *b = calloc(1, sizeof *b);
    if (b == NULL)
        return SL_ENOMEM;
    b->base.ops = &builtin_ops;
    strcpy(b->base.name, "builtin-least-loaded");
    strcpy(b->base.file, "builtin");
    *out = &b->base;
    return 0;
}
