/* The contexts file: named (server, token) pairs and which one is current,
 * in the shape kubectl users know:
 *
 *   current-context: prod
 *   contexts:
 *   - name: prod
 *     server: https://keyplane.internal:7601
 *     token: kp_...
 *     cacert: /etc/keyplane/ca.crt      # optional: TLS, see clusterctl.md
 *     cert: /home/op/.keyplane/op.crt   # optional: a client certificate
 *     key: /home/op/.keyplane/op.key
 *
 * The file is loaded into a libfyaml document and changed in place, so keys
 * clusterctl does not know survive a rewrite. It holds tokens, so it is
 * written 0600 in a 0700 directory, through a temporary file renamed over
 * the old one: a crash leaves the old file or the new one, never half of
 * either. A file that does not exist, or is empty, is an empty set of
 * contexts; one that does not parse is an error naming its line, never
 * silently replaced. */
#include <errno.h>
#include <fcntl.h>
#include <libfyaml.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clusterctl.h"

struct kp_ctl_contexts {
    char path[PATH_MAX];
    struct fy_document *doc;
};

static int errf(char *errmsg, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int errf(char *errmsg, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

int kp_ctl__contexts_path(char *out, size_t len)
{
    const char *dir = getenv("KEYPLANE_CONFIG_DIR");
    const char *xdg = getenv("XDG_CONFIG_HOME");
    const char *home = getenv("HOME");
    int n;

    if (dir != NULL && dir[0] != '\0')
        n = snprintf(out, len, "%s/config.yaml", dir);
    else if (xdg != NULL && xdg[0] != '\0')
        n = snprintf(out, len, "%s/keyplane/config.yaml", xdg);
    else if (home != NULL && home[0] != '\0')
        n = snprintf(out, len, "%s/.config/keyplane/config.yaml", home);
    else
        return -1;
    return n < 0 || (size_t)n >= len ? -1 : 0;
}

const char *kp_ctl__contexts_file(const struct kp_ctl_contexts *c)
{
    return c->path;
}

/* --- loading -------------------------------------------------------------- */

static struct fy_node *lookup(struct fy_node *map, const char *key)
{
    return map != NULL ? fy_node_mapping_lookup_by_string(map, key, FY_NT) : NULL;
}

/* The scalar under @key of mapping @map as a C string, or NULL. */
static const char *lookup_str(struct fy_node *map, const char *key)
{
    struct fy_node *v = lookup(map, key);
    return v != NULL && fy_node_get_type(v) == FYNT_SCALAR ? fy_node_get_scalar0(v) : NULL;
}

static int check_shape(struct kp_ctl_contexts *c, char *errmsg, size_t errlen)
{
    struct fy_node *root = fy_document_root(c->doc);
    struct fy_node *list;

    if (root == NULL) {
        root = fy_node_create_mapping(c->doc);
        if (root == NULL || fy_document_set_root(c->doc, root) != 0)
            return errf(errmsg, errlen, "out of memory");
    }
    if (fy_node_get_type(root) != FYNT_MAPPING)
        return errf(errmsg, errlen, "%s: expected a mapping with current-context and contexts",
                    c->path);
    list = lookup(root, "contexts");
    if (list != NULL && fy_node_get_type(list) != FYNT_SEQUENCE &&
        !(fy_node_get_type(list) == FYNT_SCALAR && fy_node_get_scalar0(list) != NULL &&
          (strcmp(fy_node_get_scalar0(list), "") == 0 ||
           strcmp(fy_node_get_scalar0(list), "null") == 0)))
        return errf(errmsg, errlen, "%s: contexts: expected a list of {name, server, token}",
                    c->path);
    return 0;
}

int kp_ctl__contexts_load(struct kp_ctl_contexts **out, char *errmsg, size_t errlen)
{
    struct kp_ctl_contexts *c = kp_calloc(1, sizeof(*c));
    struct stat st;

    if (c == NULL)
        return errf(errmsg, errlen, "out of memory");
    if (kp_ctl__contexts_path(c->path, sizeof(c->path)) != 0) {
        errf(errmsg, errlen, "cannot find the contexts file: set HOME or KEYPLANE_CONFIG_DIR");
        goto err_after_alloc;
    }
    if (stat(c->path, &st) != 0 && errno == ENOENT) {
        c->doc = fy_document_create(NULL);
        if (c->doc == NULL) {
            errf(errmsg, errlen, "out of memory");
            goto err_after_alloc;
        }
    } else if ((c->doc = kp_ctl__yaml_parse_file(c->path, errmsg, errlen)) == NULL) {
        goto err_after_alloc;
    }
    if (check_shape(c, errmsg, errlen) != 0)
        goto err_after_doc;
    *out = c;
    return 0;

err_after_doc:
    fy_document_destroy(c->doc);
err_after_alloc:
    kp_free(c);
    return -1;
}

void kp_ctl__contexts_close(struct kp_ctl_contexts *c)
{
    if (c == NULL)
        return;
    fy_document_destroy(c->doc);
    kp_free(c);
}

/* --- reading -------------------------------------------------------------- */

static struct fy_node *context_list(struct kp_ctl_contexts *c)
{
    struct fy_node *list = lookup(fy_document_root(c->doc), "contexts");
    return list != NULL && fy_node_get_type(list) == FYNT_SEQUENCE ? list : NULL;
}

static bool read_context(struct fy_node *item, struct kp_ctl_context *out)
{
    if (item == NULL || fy_node_get_type(item) != FYNT_MAPPING)
        return false;
    out->name = lookup_str(item, "name");
    out->server = lookup_str(item, "server");
    out->token = lookup_str(item, "token");
    out->cacert = lookup_str(item, "cacert");
    out->cert = lookup_str(item, "cert");
    out->key = lookup_str(item, "key");
    return out->name != NULL;
}

static struct fy_node *find_item(struct kp_ctl_contexts *c, const char *name)
{
    struct fy_node *list = context_list(c);
    struct fy_node *item;
    struct kp_ctl_context ctx;
    void *iter = NULL;

    while (list != NULL && (item = fy_node_sequence_iterate(list, &iter)) != NULL) {
        if (read_context(item, &ctx) && strcmp(ctx.name, name) == 0)
            return item;
    }
    return NULL;
}

const char *kp_ctl__contexts_current(struct kp_ctl_contexts *c)
{
    const char *name = lookup_str(fy_document_root(c->doc), "current-context");
    return name != NULL && name[0] != '\0' ? name : NULL;
}

bool kp_ctl__contexts_find(struct kp_ctl_contexts *c, const char *name, struct kp_ctl_context *out)
{
    return read_context(find_item(c, name), out);
}

size_t kp_ctl__contexts_count(struct kp_ctl_contexts *c)
{
    struct fy_node *list = context_list(c);
    return list != NULL ? (size_t)fy_node_sequence_item_count(list) : 0;
}

bool kp_ctl__contexts_at(struct kp_ctl_contexts *c, size_t i, struct kp_ctl_context *out)
{
    struct fy_node *list = context_list(c);
    return list != NULL && read_context(fy_node_sequence_get_by_index(list, (int)i), out);
}

/* --- changing ------------------------------------------------------------- */

static struct fy_node *scalar(struct fy_document *doc, const char *s)
{
    return fy_node_create_scalar_copy(doc, s, strlen(s));
}

/* Sets @key of mapping @map to the string @value, replacing any old value. */
static int set_field(struct fy_document *doc, struct fy_node *map, const char *key,
                     const char *value)
{
    struct fy_node_pair *pair = fy_node_mapping_lookup_pair_by_string(map, key, FY_NT);
    struct fy_node *v = scalar(doc, value);
    struct fy_node *k;

    if (v == NULL)
        return -1;
    if (pair != NULL)
        return fy_node_pair_set_value(pair, v);
    k = scalar(doc, key);
    if (k == NULL || fy_node_mapping_append(map, k, v) != 0) {
        fy_node_free(k);
        fy_node_free(v);
        return -1;
    }
    return 0;
}

/* The contexts sequence, created when missing (or written as null). */
static struct fy_node *ensure_list(struct kp_ctl_contexts *c)
{
    struct fy_node *root = fy_document_root(c->doc);
    struct fy_node *list = context_list(c);
    struct fy_node_pair *pair;
    struct fy_node *key;

    if (list != NULL)
        return list;
    list = fy_node_create_sequence(c->doc);
    if (list == NULL)
        return NULL;
    pair = fy_node_mapping_lookup_pair_by_string(root, "contexts", FY_NT);
    if (pair != NULL) {
        if (fy_node_pair_set_value(pair, list) == 0)
            return list;
    } else if ((key = scalar(c->doc, "contexts")) != NULL) {
        if (fy_node_mapping_append(root, key, list) == 0)
            return list;
        fy_node_free(key);
    }
    fy_node_free(list);
    return NULL;
}

static struct fy_node *new_item(struct kp_ctl_contexts *c, const char *name)
{
    struct fy_node *list = ensure_list(c);
    struct fy_node *item = list != NULL ? fy_node_create_mapping(c->doc) : NULL;

    if (item == NULL)
        return NULL;
    if (set_field(c->doc, item, "name", name) != 0 || fy_node_sequence_append(list, item) != 0) {
        fy_node_free(item);
        return NULL;
    }
    return item;
}

int kp_ctl__contexts_set(struct kp_ctl_contexts *c, const char *name, const char *server,
                         const char *token, const char *cacert, const char *cert, const char *key)
{
    struct fy_node *item = find_item(c, name);

    if (item == NULL && (item = new_item(c, name)) == NULL)
        return -1;
    if (server != NULL && set_field(c->doc, item, "server", server) != 0)
        return -1;
    if (token != NULL && set_field(c->doc, item, "token", token) != 0)
        return -1;
    if (cacert != NULL && set_field(c->doc, item, "cacert", cacert) != 0)
        return -1;
    if (cert != NULL && set_field(c->doc, item, "cert", cert) != 0)
        return -1;
    if (key != NULL && set_field(c->doc, item, "key", key) != 0)
        return -1;
    return 0;
}

int kp_ctl__contexts_use(struct kp_ctl_contexts *c, const char *name)
{
    if (find_item(c, name) == NULL)
        return -1;
    return set_field(c->doc, fy_document_root(c->doc), "current-context", name);
}

/* --- saving --------------------------------------------------------------- */

/* mkdir -p for the directories above @path; new ones are 0700. */
static int make_parents(const char *path, char *errmsg, size_t errlen)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    for (char *p = dir + 1; *p != '\0'; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(dir, 0700) != 0 && errno != EEXIST)
            return errf(errmsg, errlen, "cannot create %s: %s", dir, strerror(errno));
        *p = '/';
    }
    return 0;
}

static int write_doc(struct fy_document *doc, int fd)
{
    const enum fy_emitter_cfg_flags flags =
        FYECF_MODE_BLOCK | FYECF_INDENT_2 | FYECF_WIDTH_INF | FYECF_DOC_START_MARK_OFF;
    FILE *fp = fdopen(fd, "w");
    int rv;

    if (fp == NULL) {
        close(fd);
        return -1;
    }
    rv = fy_emit_document_to_fp(doc, flags, fp);
    if (fflush(fp) != 0 || fsync(fd) != 0)
        rv = -1;
    if (fclose(fp) != 0)
        rv = -1;
    return rv;
}

int kp_ctl__contexts_save(struct kp_ctl_contexts *c, char *errmsg, size_t errlen)
{
    char tmp[PATH_MAX + 32];
    int fd;

    if (make_parents(c->path, errmsg, errlen) != 0)
        return -1;
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", c->path, (long)getpid());
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return errf(errmsg, errlen, "cannot write %s: %s", tmp, strerror(errno));
    /* The umask could have dropped bits we need; it can never add any. */
    if (fchmod(fd, 0600) != 0) {
        errf(errmsg, errlen, "cannot chmod %s: %s", tmp, strerror(errno));
        close(fd);
        goto err_after_open;
    }
    errno = 0;
    if (write_doc(c->doc, fd) != 0) { /* closes fd */
        errf(errmsg, errlen, "cannot write %s: %s", tmp, errno ? strerror(errno) : "I/O error");
        goto err_after_open;
    }
    if (rename(tmp, c->path) != 0) {
        errf(errmsg, errlen, "cannot replace %s: %s", c->path, strerror(errno));
        goto err_after_open;
    }
    return 0;

err_after_open:
    unlink(tmp);
    return -1;
}
