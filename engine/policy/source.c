/* source.c — reading a policy file safely (P2, P4): without blocking (a FIFO or a device
 * named like a policy must not hang the scheduler's thread on reload), regular files only,
 * the size limit checked before reading, a UTF-8 byte order mark skipped as Lua's own
 * loader does. Shared by the host's loader and `sluice policy check`. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "source.h"

static const char *file_kind(mode_t m)
{
    if (S_ISDIR(m))
        return "a directory";
    if (S_ISFIFO(m))
        return "a FIFO";
    if (S_ISCHR(m))
        return "a character device";
    if (S_ISBLK(m))
        return "a block device";
    if (S_ISSOCK(m))
        return "a socket";
    return "not a regular file";
}

/* Reads FILE into *buf (malloc'd, caller frees). Returns 0 or a negative code with a
 * message naming the file. */
int sl_policy_read_file(const char *path, char **buf, size_t *len, char *msg, size_t msglen)
{
    *buf = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(msg, msglen, "policy %s: cannot open: %s", path, strerror(errno));
        return SL_ENOENT;
    }
    int rc = 0;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(msg, msglen, "policy %s: cannot stat: %s", path, strerror(errno));
        rc = SL_EINVAL;
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(msg, msglen, "policy %s: is %s, not a policy file", path,
                 file_kind(st.st_mode));
        rc = SL_EINVAL;
        goto done;
    }
    if (st.st_size > (off_t)SL_POLICY_FILE_MAX) {
        snprintf(msg, msglen, "policy %s: larger than %u bytes", path, SL_POLICY_FILE_MAX);
        rc = SL_EINVAL;
        goto done;
    }
    /* the size may lie (/proc) or change: read to one byte past the cap at most */
    size_t cap = (size_t)st.st_size + 1;
    if (cap < 4096)
        cap = 4096;
    if (cap > SL_POLICY_FILE_MAX + 1)
        cap = SL_POLICY_FILE_MAX + 1;
    *buf = malloc(cap);
    if (*buf == NULL) {
        snprintf(msg, msglen, "policy %s: out of memory", path);
        rc = SL_ENOMEM;
        goto done;
    }
    for (;;) {
        if (*len == cap) {
            if (cap > SL_POLICY_FILE_MAX) {
                snprintf(msg, msglen, "policy %s: larger than %u bytes", path, SL_POLICY_FILE_MAX);
                rc = SL_EINVAL;
                goto done;
            }
            size_t ncap = cap * 2 > SL_POLICY_FILE_MAX + 1 ? SL_POLICY_FILE_MAX + 1 : cap * 2;
            char *nb = realloc(*buf, ncap);
            if (nb == NULL) {
                snprintf(msg, msglen, "policy %s: out of memory", path);
                rc = SL_ENOMEM;
                goto done;
            }
            *buf = nb;
            cap = ncap;
        }
        ssize_t got = read(fd, *buf + *len, cap - *len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            snprintf(msg, msglen, "policy %s: cannot read: %s", path, strerror(errno));
            rc = SL_EINVAL;
            goto done;
        }
        if (got == 0)
            break;
        *len += (size_t)got;
    }
    if (*len >= 3 && memcmp(*buf, "\xEF\xBB\xBF", 3) == 0) {
        /* a UTF-8 byte order mark is skipped, as Lua's own file loader does */
        memmove(*buf, *buf + 3, *len - 3);
        *len -= 3;
    }
done:
    if (rc != 0) {
        free(*buf);
        *buf = NULL;
        *len = 0;
    }
    close(fd);
    return rc;
}

