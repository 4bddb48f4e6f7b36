/* The data directory: created 0700 when missing, locked with flock(2) so
 * that two nodes can never share one, and home of listen.json, which tells
 * scripts and tests the addresses actually bound (useful with port 0), and
 * of cluster.json, which remembers the cluster the directory belongs to so
 * that it is never used for another one (node/lifecycle.c checks it).
 *
 * The lock is released by the kernel when the process dies, so a crashed
 * node never leaves a stale lock behind. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "node.h"

static int mkdir_p(const char *path)
{
    char tmp[4096];
    if (strlen(path) >= sizeof(tmp)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(tmp, path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

int kp_datadir_open(struct kp_datadir *d, const char *path, char *errmsg, size_t errlen)
{
    char lock_path[4200];
    d->path = NULL;
    d->lock_fd = -1;
    if (mkdir_p(path) != 0) {
        snprintf(errmsg, errlen, "data directory %s: cannot create it: %s", path, strerror(errno));
        return KP_EIO;
    }
    snprintf(lock_path, sizeof(lock_path), "%s/LOCK", path);
    int fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(errmsg, errlen, "data directory %s: cannot open %s: %s", path, lock_path,
                 strerror(errno));
        return KP_EIO;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof(pid) - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        snprintf(errmsg, errlen,
                 "data directory %s is in use by another keyplaned (pid %s); stop it or choose "
                 "another --data-dir",
                 path, pid[0] ? pid : "unknown");
        close(fd);
        return KP_EBUSY;
    }
    char pid[32];
    int n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n) {
        snprintf(errmsg, errlen, "data directory %s: cannot write %s: %s", path, lock_path,
                 strerror(errno));
        close(fd);
        return KP_EIO;
    }
    d->path = kp_strdup(path);
    if (d->path == NULL) {
        close(fd);
        snprintf(errmsg, errlen, "out of memory");
        return KP_ENOMEM;
    }
    d->lock_fd = fd;
    return KP_OK;
}

int kp_datadir_write_listen(struct kp_datadir *d, const char *gateway, const char *control,
                            const char *raft, char *errmsg, size_t errlen)
{
    char tmp[4200], final[4200];
    snprintf(tmp, sizeof(tmp), "%s/listen.json.tmp", d->path);
    snprintf(final, sizeof(final), "%s/listen.json", d->path);
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        goto err;
    fprintf(f, "{\"gateway\":\"%s\",\"control\":\"%s\",\"raft\":\"%s\",\"pid\":%ld}\n", gateway,
            control, raft, (long)getpid());
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
        fclose(f);
        goto err;
    }
    if (fclose(f) != 0 || rename(tmp, final) != 0)
        goto err;
    return KP_OK;
err:
    snprintf(errmsg, errlen, "cannot write %s: %s", final, strerror(errno));
    return KP_EIO;
}

int kp_datadir_read_cluster(const char *dir, char *out, size_t len, char *errmsg, size_t errlen)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/cluster.json", dir);
    out[0] = '\0';
    json_error_t err;
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        if (errno == ENOENT)
            return KP_OK;
        snprintf(errmsg, errlen, "cannot read %s: %s", path, strerror(errno));
        return KP_ECONFIG;
    }
    json_t *v = json_loadf(f, 0, &err);
    fclose(f);
    const char *id = json_string_value(json_object_get(v, "cluster_id"));
    if (id == NULL || id[0] == '\0' || strlen(id) >= len) {
        snprintf(errmsg, errlen,
                 "%s is malformed (expected {\"cluster_id\": \"c-...\"}): restore it, or delete "
                 "it if this data directory's cluster is known",
                 path);
        json_decref(v);
        return KP_ECONFIG;
    }
    snprintf(out, len, "%s", id);
    json_decref(v);
    return KP_OK;
}

int kp_datadir_write_cluster(const char *dir, const char *cluster_id, char *errmsg, size_t errlen)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/cluster.json", dir);
    json_t *v = json_pack("{s:s}", "cluster_id", cluster_id);
    size_t n = 0;
    char *text = v != NULL ? kp_json_dumps(v, &n) : NULL;
    json_decref(v);
    if (text == NULL) {
        snprintf(errmsg, errlen, "out of memory");
        return KP_ENOMEM;
    }
    int rc = kp_file_replace(path, text, n, 0600, errmsg, errlen);
    kp_free(text);
    return rc;
}

void kp_datadir_close(struct kp_datadir *d)
{
    if (d->lock_fd >= 0)
        close(d->lock_fd);
    d->lock_fd = -1;
    kp_free(d->path);
    d->path = NULL;
}
