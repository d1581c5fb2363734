/* sandbox.c — the lua_State a Lua policy runs in (P2).
 *
 * Guarantees:
 *  - memory: every allocation of the state goes through a capped allocator; going over
 *    the cap is a Lua memory error, never a crash;
 *  - time: a count hook checks a CLOCK_MONOTONIC deadline and an instruction cap; once
 *    the budget has run out every further instruction raises again, and the sandbox's
 *    pcall/xpcall re-raise instead of returning false, so a policy cannot swallow it;
 *  - the C functions that could run unbounded without a hook firing are wrapped:
 *    string.find/match/gmatch/gsub refuse patterns whose worst case is too large for the
 *    subject, string.rep refuses results over the cap (and the empty-string loop),
 *    table.insert/remove/move check the deadline while they shift, table.sort of a large
 *    array compares through a C function the hook can reach, cjson.encode refuses
 *    output that would not fit in the cap;
 *  - environment: only the whitelist below is reachable. No io, os (but os.time and
 *    os.clock), require, package, load, loadstring, dofile, loadfile, debug,
 *    string.dump, collectgarbage, coroutine; setmetatable refuses __gc (finalizers run
 *    with hooks off, so a looping one could not be stopped).
 */
#include <ctype.h>
#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "sandbox.h"

#define SB_HOOK_EVERY 1000             /* VM instructions between two budget checks */
#define SB_INSTR_PER_MS 4000000ull     /* instruction cap: no Lua VM runs this fast */
#define SB_PATTERN_STEPS 1e8           /* refused above this worst-case matcher work */
#define SB_LOOP_CHECK 4096             /* C loop iterations between two deadline checks */
#define SB_LOG_BURST 20.0              /* log(): lines at once ... */
#define SB_LOG_PER_SEC 10.0            /* ... and lines per second after that */
#define SB_LOG_LINE_MAX 1024

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static sl_sandbox_t *sb_of(lua_State *L)
{
    return *(sl_sandbox_t **)lua_getextraspace(L);
}

/* ---- memory ------------------------------------------------------------------------ */

static void *sb_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    sl_sandbox_t *sb = ud;
    if (ptr == NULL)
        osize = 0; /* then osize only tells the kind of object */
    if (nsize == 0) {
        free(ptr);
        sb->mem_used -= osize;
        return NULL;
    }
    if (nsize > osize && (nsize - osize > sb->mem_cap || sb->mem_used + (nsize - osize) > sb->mem_cap)) {
        sb->mem_refused = 1;
        return NULL;
    }
    void *np = realloc(ptr, nsize);
    if (np == NULL) {
        sb->mem_refused = 1;
        return NULL;
    }
    sb->mem_used = sb->mem_used - osize + nsize;
    return np;
}

/* ---- budget ------------------------------------------------------------------------ */

/* Raises the budget error at `level` (0: the running Lua function, from the hook; 1: the
 * Lua caller of a C function). */
static int sb_raise_budget(lua_State *L, sl_sandbox_t *sb, int level)
{
    lua_Debug ar;
    int found = 0;
    /* the first Lua function up the stack: from a call hook, level 0 may be a C one */
    for (int lv = level; lv < level + 8 && lua_getstack(L, lv, &ar); lv++) {
        if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
            found = 1;
            break;
        }
    }
    if (found)
        lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
    else
        lua_pushliteral(L, "");
    lua_pushfstring(L, "%s exceeded its budget of %d ms", sb->phase ? sb->phase : "policy",
                    (int)sb->budget_ms);
    lua_concat(L, 2);
    return lua_error(L);
}

static int sb_deadline_passed(sl_sandbox_t *sb)
{
    if (!sb->armed)
        return 0;
    if (!sb->expired && (sb->instr > sb->instr_cap || now_ns() >= sb->deadline_ns))
        sb->expired = 1;
    return sb->expired;
}

/* For C loops the hook cannot see. */
static void sb_check_loop(lua_State *L)
{
    sl_sandbox_t *sb = sb_of(L);
    if (sb_deadline_passed(sb))
        sb_raise_budget(L, sb, 1);
}

static int sb_xpcall_handler(lua_State *L);

static void sb_hook(lua_State *L, lua_Debug *ar)
{
    sl_sandbox_t *sb = sb_of(L);
    sb->instr += SB_HOOK_EVERY;
    if (!sb_deadline_passed(sb))
        return;
    if (ar->event == LUA_HOOKCALL || ar->event == LUA_HOOKRET) {
        /* The message handlers must run: raising in them would lose the message. Nor is
         * a function with no caller interrupted: that is a __close of the unwinding
         * (a luaL_Buffer's box) after the policy's frames are gone. */
        lua_Debug caller;
        if (!lua_getstack(L, 1, &caller))
            return;
        lua_getinfo(L, "f", ar);
        lua_CFunction f = lua_tocfunction(L, -1);
        lua_pop(L, 1);
        if (f == sl_policy_sandbox_msghandler || f == sb_xpcall_handler)
            return;
    }
    sb_raise_budget(L, sb, 0);
}

/* ---- watchdog -------------------------------------------------------------------------
 * The count hook alone fires every SB_HOOK_EVERY instructions, and one instruction can
 * cost milliseconds (comparing or concatenating strings of tens of MB, a C function
 * called from C such as a gsub replacement or a sort comparator, which runs no
 * instruction at all). So each state also has a POSIX timer aimed at the thread that
 * armed it: at the deadline its signal handler does what lua.c does on SIGINT, setting
 * the hook to fire on the next instruction, call and return. The overrun is then one
 * instruction or one C function, and the wrapped C functions check the deadline on entry.
 * lua_sethook is the one Lua API function made to be called from a signal handler. The
 * signal is a real-time one that the process does not otherwise use; when it is taken,
 * or blocked in the calling thread, the watchdog stays off and the count hook remains. */

#define SB_WATCH_SIGNAL_OFFSET 6 /* SIGRTMIN + this */

static int sb_watch_signo = 0; /* 0: no watchdog in this process */
static pthread_once_t sb_watch_once = PTHREAD_ONCE_INIT;

static void sb_watch_fire(int signo, siginfo_t *si, void *uctx)
{
    (void)signo;
    (void)uctx;
    if (si == NULL || si->si_code != SI_TIMER)
        return;
    sl_sandbox_t *sb = si->si_value.sival_ptr;
    if (sb == NULL || !sb->armed || sb->L == NULL)
        return;
    sb->watch_fired = 1;
    lua_sethook(sb->L, sb_hook, LUA_MASKCOUNT | LUA_MASKCALL | LUA_MASKRET, 1);
}

static void sb_watch_install(void)
{
    int signo = SIGRTMIN + SB_WATCH_SIGNAL_OFFSET;
    if (signo > SIGRTMAX)
        return;
    struct sigaction old, sa;
    if (sigaction(signo, NULL, &old) != 0)
        return;
    if ((old.sa_flags & SA_SIGINFO) ? old.sa_sigaction != NULL : old.sa_handler != SIG_DFL)
        return; /* someone else's signal */
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = sb_watch_fire;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(signo, &sa, NULL) == 0)
        sb_watch_signo = signo;
}

static void sb_watch_start(sl_sandbox_t *sb, uint32_t ms)
{
    pthread_once(&sb_watch_once, sb_watch_install);
    if (sb_watch_signo == 0 || sb->L == NULL)
        return;
    sigset_t cur;
    if (pthread_sigmask(SIG_BLOCK, NULL, &cur) != 0 || sigismember(&cur, sb_watch_signo))
        return; /* a pending signal could outlive the sandbox */
    pid_t tid = gettid();
    if (sb->has_timer && sb->timer_tid != tid) {
        timer_delete(sb->timer);
        sb->has_timer = 0;
    }
    if (!sb->has_timer) {
        struct sigevent sev;
        memset(&sev, 0, sizeof sev);
        sev.sigev_notify = SIGEV_THREAD_ID;
        sev.sigev_signo = sb_watch_signo;
        sev.sigev_value.sival_ptr = sb;
        sev._sigev_un._tid = tid;
        if (timer_create(CLOCK_MONOTONIC, &sev, &sb->timer) != 0)
            return;
        sb->has_timer = 1;
        sb->timer_tid = tid;
    }
    struct itimerspec its;
    memset(&its, 0, sizeof its);
    its.it_value.tv_sec = ms / 1000;
    its.it_value.tv_nsec = (long)(ms % 1000) * 1000000L;
    if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0)
        its.it_value.tv_nsec = 1;
    timer_settime(sb->timer, 0, &its, NULL);
}

/* Stops the timer; a signal it raised before is delivered by the time this returns (it
 * targets this thread, which is not blocking it), so none can arrive later. */
static void sb_watch_stop(sl_sandbox_t *sb)
{
    if (sb->has_timer) {
        struct itimerspec zero;
        memset(&zero, 0, sizeof zero);
        timer_settime(sb->timer, 0, &zero, NULL);
    }
    if (sb->watch_fired && sb->L != NULL) {
        sb->watch_fired = 0;
        lua_sethook(sb->L, sb_hook, LUA_MASKCOUNT, SB_HOOK_EVERY);
    }
}

/* The budget without the watchdog. */
static void sb_arm_budget(sl_sandbox_t *sb, const char *phase, uint32_t ms)
{
    sb_watch_stop(sb);
    sb->phase = phase;
    sb->budget_ms = ms;
    sb->instr = 0;
    sb->instr_cap = (uint64_t)ms * SB_INSTR_PER_MS;
    sb->deadline_ns = now_ns() + (uint64_t)ms * 1000000ull;
    sb->expired = 0;
    sb->mem_refused = 0;
    sb->armed = 1;
}

void sl_policy_sandbox_arm(sl_sandbox_t *sb, const char *phase, uint32_t ms)
{
    sb_arm_budget(sb, phase, ms);
    sb_watch_start(sb, ms);
}

void sl_policy_sandbox_disarm(sl_sandbox_t *sb)
{
    sb->armed = 0;
    sb_watch_stop(sb);
}

int sl_policy_sandbox_msghandler(lua_State *L)
{
    const char *msg = NULL;
    if (lua_type(L, 1) == LUA_TSTRING || lua_type(L, 1) == LUA_TNUMBER)
        msg = lua_tostring(L, 1);
    if (msg == NULL) { /* no __tostring: it would run policy code in the handler */
        /* the position of the Lua function that raised it (level 1 is `error` itself) */
        lua_Debug ar;
        int line = 0;
        for (int lv = 1; lv < 4 && lua_getstack(L, lv, &ar); lv++) {
            if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
                line = ar.currentline;
                break;
            }
        }
        if (line > 0)
            msg = lua_pushfstring(L, "%s:%d: (error object is a %s value)", ar.short_src, line,
                                  luaL_typename(L, 1));
        else
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* ---- pcall / xpcall that cannot swallow the budget ------------------------------- */

static int sb_finish_pcall(lua_State *L, int status, int extra)
{
    sl_sandbox_t *sb = sb_of(L);
    if (status != LUA_OK && sb_deadline_passed(sb))
        return sb_raise_budget(L, sb, 1);
    if (status != LUA_OK) {
        lua_pushboolean(L, 0);
        lua_pushvalue(L, -2);
        return 2;
    }
    return lua_gettop(L) - extra;
}

static int sb_pcall(lua_State *L)
{
    luaL_checkany(L, 1);
    lua_pushboolean(L, 1);
    lua_insert(L, 1);
    int status = lua_pcall(L, lua_gettop(L) - 2, LUA_MULTRET, 0);
    return sb_finish_pcall(L, status, 0);
}

/* The policy's message handler, skipped once the budget is gone: Lua runs a message
 * handler for an error raised by a hook with hooks still switched off, so a looping
 * handler would never be stopped. */
static int sb_xpcall_handler(lua_State *L)
{
    if (sb_of(L)->expired)
        return 1;
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

static int sb_xpcall(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, sb_xpcall_handler, 1);
    lua_replace(L, 2);
    lua_pushboolean(L, 1);
    lua_pushvalue(L, 1);
    lua_rotate(L, 3, 2); /* f, handler, true, f, args... */
    int status = lua_pcall(L, n - 2, LUA_MULTRET, 2);
    return sb_finish_pcall(L, status, 2);
}

static int sb_setmetatable(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL)
            return luaL_error(L, "setmetatable: __gc metamethods are not allowed in a policy");
        lua_pop(L, 1);
    }
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 2, 1);
    return 1;
}

/* ---- log ----------------------------------------------------------------------------- */

static int sb_log(lua_State *L)
{
    sl_sandbox_t *sb = sb_of(L);
    uint64_t now = now_ns();
    if (sb->log_refill_ns == 0) {
        sb->log_tokens = SB_LOG_BURST;
    } else {
        sb->log_tokens += (double)(now - sb->log_refill_ns) / 1e9 * SB_LOG_PER_SEC;
        if (sb->log_tokens > SB_LOG_BURST)
            sb->log_tokens = SB_LOG_BURST;
    }
    sb->log_refill_ns = now;
    if (sb->log_tokens < 1.0) {
        sb->log_dropped++;
        return 0;
    }
    sb->log_tokens -= 1.0;

    int n = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        if (i > 1)
            luaL_addchar(&b, '\t');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    char line[SB_LOG_LINE_MAX + 1];
    size_t k = 0;
    for (size_t i = 0; i < len && k < SB_LOG_LINE_MAX; i++) {
        unsigned char c = (unsigned char)s[i];
        line[k++] = (c < 0x20 && c != '\t') || c == 0x7f ? ' ' : (char)c;
    }
    line[k] = '\0';
    if (sb->log_dropped > 0) {
        fprintf(stderr, "policy %s: (%lu log lines dropped)\n", sb->label, sb->log_dropped);
        sb->log_dropped = 0;
    }
    fprintf(stderr, "policy %s: %s%s\n", sb->label, line, len > SB_LOG_LINE_MAX ? "..." : "");
    return 0;
}

/* ---- pattern guard --------------------------------------------------------------------
 * Lua's matcher backtracks in C, where no hook fires: `.-.-.-.-b` against a long subject
 * would run for years. Before handing a pattern to the real function we bound its work:
 * (start positions) × (pattern length) × Π over quantified items of the choices each
 * can make, where an item followed by * + - can take at most (longest run of subject
 * bytes it matches) + 1 lengths, `?` two, and %b and back-references scan up to the
 * whole subject. Patterns over SB_PATTERN_STEPS are refused with an error. */

static int class_match(int c, int cl)
{
    int res;
    switch (tolower(cl)) {
    case 'a': res = isalpha(c); break;
    case 'c': res = iscntrl(c); break;
    case 'd': res = isdigit(c); break;
    case 'g': res = isgraph(c); break;
    case 'l': res = islower(c); break;
    case 'p': res = ispunct(c); break;
    case 's': res = isspace(c); break;
    case 'u': res = isupper(c); break;
    case 'w': res = isalnum(c); break;
    case 'x': res = isxdigit(c); break;
    default: return cl == c;
    }
    if (isupper(cl))
        res = !res;
    return res != 0;
}

/* p[0] == '[', p[len-1] == ']' */
static int set_match(int c, const char *p, size_t len)
{
    size_t i = 1, end = len - 1;
    int neg = 0;
    if (i < end && p[i] == '^') {
        neg = 1;
        i++;
    }
    while (i < end) {
        if (p[i] == '%' && i + 1 < end) {
            if (class_match(c, (unsigned char)p[i + 1]))
                return !neg;
            i += 2;
        } else if (i + 2 < end && p[i + 1] == '-') {
            if ((unsigned char)p[i] <= c && c <= (unsigned char)p[i + 2])
                return !neg;
            i += 3;
        } else {
            if ((unsigned char)p[i] == c)
                return !neg;
            i++;
        }
    }
    return neg;
}

static int item_match(int c, const char *p, size_t len)
{
    switch (p[0]) {
    case '.': return 1;
    case '%': return len > 1 && class_match(c, (unsigned char)p[1]);
    case '[': return len > 1 && set_match(c, p, len);
    default: return (unsigned char)p[0] == c;
    }
}

/* Index after the set starting at p[i] == '['; m when malformed (the real matcher will
 * then raise its own error). */
static size_t set_end(const char *p, size_t m, size_t i)
{
    size_t j = i + 1;
    if (j < m && p[j] == '^')
        j++;
    do {
        if (j >= m)
            return m;
        if (p[j++] == '%' && j < m)
            j++;
    } while (j < m && p[j] != ']');
    return j < m ? j + 1 : m;
}

static size_t longest_run(const char *s, size_t n, const char *item, size_t ilen)
{
    size_t best = 0, run = 0;
    for (size_t i = 0; i < n; i++) {
        if (item_match((unsigned char)s[i], item, ilen)) {
            if (++run > best)
                best = run;
        } else {
            run = 0;
        }
    }
    return best;
}

static double pattern_cost(const char *s, size_t n, const char *p, size_t m, int can_anchor)
{
    size_t i = 0;
    int anchored = 0;
    double choices = 1.0;
    if (can_anchor && m > 0 && p[0] == '^') {
        anchored = 1;
        i = 1;
    }
    while (i < m && choices < SB_PATTERN_STEPS * 4) {
        size_t start = i;
        char c = p[i];
        if (c == '(' || c == ')') {
            i++;
            continue;
        }
        if (c == '%' && i + 1 < m) {
            char e = p[i + 1];
            if (e == 'b') {
                choices *= (double)n + 1;
                i += 4;
                continue;
            }
            if (e == 'f') {
                i += 2;
                if (i < m && p[i] == '[')
                    i = set_end(p, m, i);
                continue;
            }
            if (isdigit((unsigned char)e)) {
                choices *= (double)n + 1;
                i += 2;
                continue;
            }
            i += 2;
        } else if (c == '[') {
            i = set_end(p, m, i);
        } else {
            i++;
        }
        if (i < m && strchr("*+-?", p[i]) != NULL) {
            size_t run = longest_run(s, n, p + start, i - start);
            choices *= p[i] == '?' ? (run > 0 ? 2.0 : 1.0) : (double)run + 1.0;
            i++;
        }
    }
    double starts = anchored ? 1.0 : (double)n + 1.0;
    return starts * ((double)m + 1.0) * choices;
}

/* The subject from `init` (Lua's rules for negative and out-of-range positions). */
static void subject_from(const char *s, size_t len, lua_Integer init, const char **sub,
                         size_t *n)
{
    size_t pos;
    if (init > 0)
        pos = (size_t)init;
    else if (init == 0 || (init < 0 && (size_t)(-(init + 1)) >= len))
        pos = 1;
    else
        pos = len - (size_t)(-(init + 1));
    if (pos > len + 1)
        pos = len + 1;
    *sub = s + pos - 1;
    *n = len - (pos - 1);
}

static int has_specials(const char *p, size_t m)
{
    for (size_t i = 0; i < m; i++)
        if (strchr("^$*+?.([%-", p[i]) != NULL && p[i] != '\0')
            return 1;
    return 0;
}

static void guard_pattern(lua_State *L, const char *fname, int init_arg, int plain_arg,
                          int can_anchor)
{
    size_t len, m;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *p = luaL_checklstring(L, 2, &m);
    lua_Integer init = init_arg ? luaL_optinteger(L, init_arg, 1) : 1;
    const char *sub;
    size_t n;
    subject_from(s, len, init, &sub, &n);
    double cost;
    sb_check_loop(L); /* a loop of allowed calls still ends at the deadline */
    /* memchr + memcmp: a subject of the needle's first byte repeated costs a memcmp call
     * per position */
    if ((plain_arg && lua_toboolean(L, plain_arg)) || !has_specials(p, m))
        cost = ((double)n + 1.0) * ((double)m + 8.0) / 4.0;
    else
        cost = pattern_cost(sub, n, p, m, can_anchor);
    if (cost > SB_PATTERN_STEPS) {
        char msg[256];
        snprintf(msg, sizeof msg,
                 "string.%s: pattern \"%.40s\" against a subject of %zu bytes could run for "
                 "too long (refused by the sandbox)", fname, p, n);
        luaL_error(L, "%s", msg);
    }
}

/* "src:LINE:" at the start of a message */
static int has_position(const char *m)
{
    const char *c = strchr(m, ':');
    const char *nl = strchr(m, '\n');
    if (c == NULL || (nl != NULL && nl < c) || c[1] < '0' || c[1] > '9')
        return 0;
    c++;
    while (*c >= '0' && *c <= '9')
        c++;
    return *c == ':';
}

/* Calls the wrapped library function. Its own errors ("bad argument", "invalid order
 * function") would name no line, since its caller is this C wrapper: they are raised
 * again with the position of the policy's line that called the wrapper. */
static int call_original(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    int status = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    if (status == LUA_OK)
        return lua_gettop(L);
    if (status == LUA_ERRRUN && lua_type(L, -1) == LUA_TSTRING &&
        !has_position(lua_tostring(L, -1))) {
        luaL_where(L, 1);
        lua_insert(L, -2);
        lua_concat(L, 2);
    }
    return lua_error(L);
}

static int sb_find(lua_State *L)
{
    guard_pattern(L, "find", 3, 4, 1);
    return call_original(L);
}

static int sb_match(lua_State *L)
{
    guard_pattern(L, "match", 3, 0, 1);
    return call_original(L);
}

static int sb_gmatch(lua_State *L)
{
    guard_pattern(L, "gmatch", 3, 0, 0);
    return call_original(L);
}

static int sb_gsub(lua_State *L)
{
    guard_pattern(L, "gsub", 0, 0, 1);
    return call_original(L);
}

static int sb_rep(lua_State *L)
{
    sl_sandbox_t *sb = sb_of(L);
    sb_check_loop(L);
    size_t l, lsep = 0;
    luaL_checklstring(L, 1, &l);
    lua_Integer n = luaL_checkinteger(L, 2);
    if (!lua_isnoneornil(L, 3))
        luaL_checklstring(L, 3, &lsep);
    if (n <= 0 || l + lsep == 0) { /* the real one loops n times copying nothing */
        lua_pushliteral(L, "");
        return 1;
    }
    double total = (double)n * (double)l + ((double)n - 1.0) * (double)lsep;
    if (total > (double)sb->mem_cap) {
        char msg[160];
        snprintf(msg, sizeof msg, "string.rep: a result of %.0f bytes is over the policy's "
                                  "memory cap of %zu bytes", total, sb->mem_cap);
        return luaL_error(L, "%s", msg);
    }
    return call_original(L);
}

/* ---- table.insert / remove / move with a deadline ---------------------------------- */

static int sb_tinsert(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer e = luaL_len(L, 1);
    if (e == LUA_MAXINTEGER)
        return luaL_error(L, "table.insert: table is too long");
    e++;
    lua_Integer pos;
    switch (lua_gettop(L)) {
    case 2:
        pos = e;
        break;
    case 3:
        pos = luaL_checkinteger(L, 2);
        luaL_argcheck(L, (lua_Unsigned)pos - 1u < (lua_Unsigned)e, 2, "position out of bounds");
        for (lua_Integer i = e, k = 0; i > pos; i--, k++) {
            if ((k & (SB_LOOP_CHECK - 1)) == SB_LOOP_CHECK - 1)
                sb_check_loop(L);
            lua_geti(L, 1, i - 1);
            lua_seti(L, 1, i);
        }
        break;
    default:
        return luaL_error(L, "wrong number of arguments to 'insert'");
    }
    lua_seti(L, 1, pos);
    return 0;
}

static int sb_tremove(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer size = luaL_len(L, 1);
    lua_Integer pos = luaL_optinteger(L, 2, size);
    if (pos != size)
        luaL_argcheck(L, (lua_Unsigned)pos - 1u <= (lua_Unsigned)size, 2,
                      "position out of bounds");
    lua_geti(L, 1, pos);
    for (lua_Integer k = 0; pos < size; pos++, k++) {
        if ((k & (SB_LOOP_CHECK - 1)) == SB_LOOP_CHECK - 1)
            sb_check_loop(L);
        lua_geti(L, 1, pos + 1);
        lua_seti(L, 1, pos);
    }
    lua_pushnil(L);
    lua_seti(L, 1, pos);
    return 1;
}

static int sb_tmove(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer f = luaL_checkinteger(L, 2);
    lua_Integer e = luaL_checkinteger(L, 3);
    lua_Integer t = luaL_checkinteger(L, 4);
    int tt = !lua_isnoneornil(L, 5) ? 5 : 1;
    luaL_checktype(L, tt, LUA_TTABLE);
    if (e >= f) {
        luaL_argcheck(L, f > 0 || e < LUA_MAXINTEGER + f, 3, "too many elements to move");
        lua_Integer n = e - f + 1;
        luaL_argcheck(L, t <= LUA_MAXINTEGER - n + 1, 4, "destination wrap around");
        int forward = t > e || t > f || (tt != 1 && !lua_compare(L, 1, tt, LUA_OPEQ));
        for (lua_Integer k = 0; k < n; k++) {
            lua_Integer i = forward ? k : n - 1 - k;
            if ((k & (SB_LOOP_CHECK - 1)) == SB_LOOP_CHECK - 1)
                sb_check_loop(L);
            lua_geti(L, 1, f + i);
            lua_seti(L, tt, t + i);
        }
    }
    lua_pushvalue(L, tt);
    return 1;
}

/* ---- table.sort ------------------------------------------------------------------------
 * The default order compares numbers and strings inside the C sort, with no call and no
 * instruction for the hook to see: sorting two million numbers is one C call of most of a
 * second. Large arrays are sorted with a C comparator of the same meaning (lua_compare
 * "<", metamethods included), which the watchdog's call hook reaches, and which checks the
 * deadline itself every SB_LOOP_CHECK comparisons. Small arrays keep the fast path. */

#define SB_SORT_FAST_MAX 4096

static int sb_lessthan(lua_State *L)
{
    sl_sandbox_t *sb = sb_of(L);
    if ((++sb->loop_count & (SB_LOOP_CHECK - 1)) == 0)
        sb_check_loop(L);
    lua_pushboolean(L, lua_compare(L, 1, 2, LUA_OPLT));
    return 1;
}

static int sb_tsort(lua_State *L)
{
    sb_check_loop(L);
    if (lua_type(L, 1) == LUA_TTABLE && lua_isnoneornil(L, 2) &&
        lua_rawlen(L, 1) > SB_SORT_FAST_MAX) {
        lua_settop(L, 1);
        lua_pushcfunction(L, sb_lessthan);
    }
    return call_original(L);
}

/* ---- cjson.encode / decode within the cap ------------------------------------------ */

/* Upper bound of what cjson.encode writes for the value at idx (its buffer lives outside
 * the capped allocator, so it must be bounded before the call). Stops adding once over
 * `limit`; cjson itself refuses nesting beyond 1000. */
static void encode_estimate(lua_State *L, int idx, int depth, double limit, double *total,
                            unsigned long *visits)
{
    size_t len;
    switch (lua_type(L, idx)) {
    case LUA_TSTRING:
        lua_tolstring(L, idx, &len);
        *total += 6.0 * (double)len + 2.0;
        return;
    case LUA_TNUMBER: *total += 32.0; return;
    case LUA_TBOOLEAN: *total += 5.0; return;
    case LUA_TTABLE: break;
    default: *total += 4.0; return;
    }
    if (depth > 1000)
        return;
    *total += 52.0; /* brackets, and the nulls of a sparse array cjson accepts */
    luaL_checkstack(L, 3, "cjson.encode: nesting too deep");
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        if (lua_type(L, -2) == LUA_TSTRING) {
            lua_tolstring(L, -2, &len);
            *total += 6.0 * (double)len + 4.0;
        } else {
            *total += 37.0;
        }
        encode_estimate(L, lua_gettop(L), depth + 1, limit, total, visits);
        lua_pop(L, 1);
        if (++*visits % SB_LOOP_CHECK == 0)
            sb_check_loop(L);
        if (*total > limit) {
            lua_pop(L, 1);
            return;
        }
    }
}

static int sb_cjson_encode(lua_State *L)
{
    sl_sandbox_t *sb = sb_of(L);
    luaL_checkany(L, 1);
    lua_settop(L, 1);
    double limit = (double)(sb->mem_cap - (sb->mem_used < sb->mem_cap ? sb->mem_used : sb->mem_cap));
    double total = 0.0;
    unsigned long visits = 0;
    encode_estimate(L, 1, 0, limit, &total, &visits);
    if (total > limit)
        return luaL_error(L, "cjson.encode: the output could exceed the policy's memory cap");
    return call_original(L);
}

static int sb_cjson_decode(lua_State *L)
{
    sl_sandbox_t *sb = sb_of(L);
    size_t len;
    luaL_checklstring(L, 1, &len);
    size_t left = sb->mem_cap - (sb->mem_used < sb->mem_cap ? sb->mem_used : sb->mem_cap);
    /* cjson leaks its scratch buffer if Lua runs out of memory mid-decode: keep room */
    if ((double)len * 16.0 > (double)left)
        return luaL_error(L, "cjson.decode: %d bytes of JSON are too many for the policy's "
                             "remaining memory", (int)(len > 0x7fffffff ? 0x7fffffff : len));
    lua_settop(L, 1);
    return call_original(L);
}

/* ---- building the environment ------------------------------------------------------- */

static void copy_field(lua_State *L, int from, int to, const char *name)
{
    lua_getfield(L, from, name);
    lua_setfield(L, to, name);
}

static void wrap_field(lua_State *L, int tbl, const char *name, lua_CFunction wrapper)
{
    lua_getfield(L, tbl, name);
    lua_pushcclosure(L, wrapper, 1);
    lua_setfield(L, tbl, name);
}

static int sb_setup(lua_State *L)
{
    static const char *const base_names[] = {
        "assert", "error", "ipairs", "next", "pairs", "rawequal", "rawget", "rawlen",
        "rawset", "select", "getmetatable", "tonumber", "tostring", "type", "_VERSION", NULL,
    };
    luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
    luaL_requiref(L, LUA_LOADLIBNAME, luaopen_package, 1);
    luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 1);
    luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 1);
    luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 1);
    luaL_requiref(L, LUA_UTF8LIBNAME, luaopen_utf8, 1);
    luaL_requiref(L, LUA_OSLIBNAME, luaopen_os, 1);
    lua_settop(L, 0);

    /* lua-cjson, loaded before the sandbox closes package/require. The Debian directory
     * goes first so a stray LUA_CPATH cannot shadow it. */
    lua_getglobal(L, "package");
    lua_getfield(L, 1, "cpath");
    lua_pushfstring(L, "/usr/lib/x86_64-linux-gnu/lua/5.4/?.so;/usr/lib/lua/5.4/?.so;%s",
                    lua_tostring(L, -1) ? lua_tostring(L, -1) : "");
    lua_setfield(L, 1, "cpath");
    lua_settop(L, 0);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    lua_call(L, 1, 1);
    int cjson = lua_gettop(L);
    if (lua_type(L, cjson) != LUA_TTABLE)
        return luaL_error(L, "lua-cjson did not load as a table");

    lua_pushglobaltable(L);
    int g = lua_gettop(L);
    lua_newtable(L);
    int env = lua_gettop(L);

    for (const char *const *n = base_names; *n != NULL; n++)
        copy_field(L, g, env, *n);
    lua_pushcfunction(L, sb_pcall);
    lua_setfield(L, env, "pcall");
    lua_pushcfunction(L, sb_xpcall);
    lua_setfield(L, env, "xpcall");
    lua_getfield(L, g, "setmetatable");
    lua_pushcclosure(L, sb_setmetatable, 1);
    lua_setfield(L, env, "setmetatable");
    lua_pushcfunction(L, sb_log);
    lua_setfield(L, env, "log");
    lua_pushcfunction(L, sb_log);
    lua_setfield(L, env, "print");

    /* string: the library table itself, since the string metatable's __index is it */
    lua_getfield(L, g, "string");
    int str = lua_gettop(L);
    lua_pushnil(L);
    lua_setfield(L, str, "dump");
    wrap_field(L, str, "find", sb_find);
    wrap_field(L, str, "match", sb_match);
    wrap_field(L, str, "gmatch", sb_gmatch);
    wrap_field(L, str, "gsub", sb_gsub);
    wrap_field(L, str, "rep", sb_rep);
    lua_setfield(L, env, "string");

    lua_getfield(L, g, "table");
    int tbl = lua_gettop(L);
    lua_pushcfunction(L, sb_tinsert);
    lua_setfield(L, tbl, "insert");
    lua_pushcfunction(L, sb_tremove);
    lua_setfield(L, tbl, "remove");
    lua_pushcfunction(L, sb_tmove);
    lua_setfield(L, tbl, "move");
    wrap_field(L, tbl, "sort", sb_tsort);
    lua_setfield(L, env, "table");

    /* deterministic random numbers: the simulator replays a seed (M1) */
    lua_getfield(L, g, "math");
    lua_getfield(L, -1, "randomseed");
    lua_pushinteger(L, 0);
    lua_call(L, 1, 0);
    lua_setfield(L, env, "math");
    copy_field(L, g, env, "utf8");

    lua_getfield(L, g, "os");
    int os = lua_gettop(L);
    lua_createtable(L, 0, 2);
    copy_field(L, os, os + 1, "time");
    copy_field(L, os, os + 1, "clock");
    lua_setfield(L, env, "os");
    lua_pop(L, 1);

    lua_createtable(L, 0, 6);
    int cj = lua_gettop(L);
    lua_getfield(L, cjson, "encode");
    lua_pushcclosure(L, sb_cjson_encode, 1);
    lua_setfield(L, cj, "encode");
    lua_getfield(L, cjson, "decode");
    lua_pushcclosure(L, sb_cjson_decode, 1);
    lua_setfield(L, cj, "decode");
    copy_field(L, cjson, cj, "null");
    copy_field(L, cjson, cj, "_NAME");
    copy_field(L, cjson, cj, "_VERSION");
    lua_setfield(L, env, "cjson");

    lua_pushvalue(L, env);
    lua_setfield(L, env, "_G");

    /* The sandbox environment becomes the global table: the original one (with require,
     * package, load, …) is left reachable only from the registry. */
    lua_pushvalue(L, env);
    lua_rawseti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
    lua_pushnil(L);
    lua_setfield(L, g, "package");
    lua_settop(L, 0);
    return 0;
}

int sl_policy_sandbox_open(sl_sandbox_t *sb, size_t mem_cap, const char *label, char *err,
                           size_t errlen)
{
    memset(sb, 0, sizeof *sb);
    sb->mem_cap = mem_cap;
    snprintf(sb->label, sizeof sb->label, "%s", label);
    lua_State *L = lua_newstate(sb_alloc, sb);
    if (L == NULL) {
        snprintf(err, errlen, "cannot create a Lua state within %zu bytes", mem_cap);
        return SL_ENOMEM;
    }
    *(sl_sandbox_t **)lua_getextraspace(L) = sb;
    sb->L = L;
    lua_sethook(L, sb_hook, LUA_MASKCOUNT, SB_HOOK_EVERY);
    sl_policy_sandbox_arm(sb, "sandbox setup", 1000);
    lua_pushcfunction(L, sb_setup);
    int status = lua_pcall(L, 0, 0, 0);
    sl_policy_sandbox_disarm(sb);
    if (status != LUA_OK) {
        const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "unknown error";
        snprintf(err, errlen, "cannot set up the sandbox: %s%s", msg,
                 status == LUA_ERRMEM ? " (memory cap too small?)" : "");
        sl_policy_sandbox_close(sb);
        return status == LUA_ERRMEM ? SL_ENOMEM : SL_EPOLICY;
    }
    return 0;
}

void sl_policy_sandbox_close(sl_sandbox_t *sb)
{
    if (sb->L == NULL)
        return;
    /* Finalizers run with hooks off; policies cannot set __gc, so only C ones remain.
     * The budget is armed anyway so any Lua code reached on the way is bounded. */
    sl_policy_sandbox_disarm(sb);
    if (sb->has_timer) { /* no signal may reach a state being freed */
        timer_delete(sb->timer);
        sb->has_timer = 0;
    }
    sb_arm_budget(sb, "close", 1000);
    lua_close(sb->L);
    sb->armed = 0;
    sb->L = NULL;
}
