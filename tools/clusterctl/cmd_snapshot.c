/* `snapshot save FILE`: the registry as one file (GET /admin/v1/snapshot),
 * for backups and for starting a new cluster from it (keyplaned --restore,
 * docs/operations.md).
 *
 * The file is what the leader answers, byte for byte: a keyplane snapshot
 * (docs/registry.md), which checks itself when restored. Here the answer's
 * SHA-256 is compared with the X-Keyplane-Snapshot-Sha256 header and its
 * first bytes with the snapshot magic before anything is written, so a
 * truncated or mangled download never becomes a backup. It is written to
 * FILE.tmp (mode 0600: it holds sealed secrets and the token pepper),
 * flushed to disk and renamed to FILE. */
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "clusterctl.h"

static const char snapshot_magic[8] = {'K', 'P', 'S', 'N', 'A', 'P', '\r', '\n'};

/* The body is the snapshot the headers announce. */
static int check_answer(struct kp_ctl *ctl, const struct kp_ctl_response *resp)
{
    uint8_t sum[32];
    char hex[65];
    if (resp->body.len < sizeof(snapshot_magic) ||
        memcmp(resp->body.data, snapshot_magic, sizeof(snapshot_magic)) != 0) {
        kp_ctl__error(ctl, "snapshot save: the answer is not a keyplane snapshot");
        return KP_CTL_EXIT_NO;
    }
    if (EVP_Digest(resp->body.data, resp->body.len, sum, NULL, EVP_sha256(), NULL) != 1) {
        kp_ctl__error(ctl, "snapshot save: cannot compute SHA-256");
        return KP_CTL_EXIT_NO;
    }
    kp_hex_encode(sum, sizeof(sum), hex);
    if (resp->snapshot_sha256[0] == '\0' || strcasecmp(hex, resp->snapshot_sha256) != 0) {
        kp_ctl__error(ctl,
                      "snapshot save: the download is damaged (SHA-256 %s, the server said %s); "
                      "nothing was written, try again",
                      hex, resp->snapshot_sha256[0] ? resp->snapshot_sha256 : "nothing");
        return KP_CTL_EXIT_NO;
    }
    return KP_CTL_EXIT_OK;
}

static int write_file(struct kp_ctl *ctl, const char *file, const void *data, size_t len)
{
    char tmp[4200];
    snprintf(tmp, sizeof(tmp), "%s.tmp", file);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        kp_ctl__error(ctl, "snapshot save: cannot write %s: %s", tmp, strerror(errno));
        return KP_CTL_EXIT_NO;
    }
    bool ok = kp_write_all(fd, data, len) == KP_OK && fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    ok = ok && rename(tmp, file) == 0;
    if (!ok) {
        kp_ctl__error(ctl, "snapshot save: cannot write %s: %s", file, strerror(errno));
        unlink(tmp);
        return KP_CTL_EXIT_NO;
    }
    return KP_CTL_EXIT_OK;
}

static int snapshot_save(struct kp_ctl *ctl, int argc, char **argv)
{
    struct kp_ctl_response resp;
    int first, rc = kp_ctl__parse(ctl, argc, argv, NULL, 0, &first);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__positionals(ctl, argc - first, 1, 1, "FILE", false);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc != KP_CTL_EXIT_OK)
        return rc;
    const char *file = argv[first];
    if (kp_ctl__get(ctl, "/admin/v1/snapshot", &resp) != 0)
        return kp_ctl__unreachable(ctl);
    if (resp.status != 200)
        rc = kp_ctl__refused(ctl, "/admin/v1/snapshot", &resp);
    if (rc == KP_CTL_EXIT_OK)
        rc = check_answer(ctl, &resp);
    if (rc == KP_CTL_EXIT_OK && strcmp(file, "-") == 0) {
        if (fwrite(resp.body.data, 1, resp.body.len, stdout) != resp.body.len ||
            fflush(stdout) != 0) {
            kp_ctl__error(ctl, "snapshot save: cannot write to stdout: %s", strerror(errno));
            rc = KP_CTL_EXIT_NO;
        }
    } else if (rc == KP_CTL_EXIT_OK) {
        rc = write_file(ctl, file, resp.body.data, resp.body.len);
    }
    if (rc == KP_CTL_EXIT_OK)
        fprintf(stderr,
                "%s: snapshot of cluster %s at index %s (%zu bytes, sha256 %s, master key %s) "
                "saved to %s. It holds the sealed provider keys and the token pepper: keep it "
                "as safe as the master key.\n",
                ctl->prog, resp.cluster_id[0] ? resp.cluster_id : "?",
                resp.snapshot_index[0] ? resp.snapshot_index : "?", resp.body.len,
                resp.snapshot_sha256, resp.kek_id[0] ? resp.kek_id : "?",
                strcmp(file, "-") == 0 ? "stdout" : file);
    kp_ctl__response_free(&resp);
    return rc;
}

static const struct kp_ctl_command snapshot_commands[] = {
    {"save", "FILE",
     "save the registry as a snapshot file (admin token); start a new cluster from it with "
     "keyplaned --restore FILE",
     snapshot_save, false},
};

int kp_ctl__cmd_snapshot(struct kp_ctl *ctl, int argc, char **argv)
{
    return kp_ctl__group(ctl, "snapshot", snapshot_commands,
                         sizeof(snapshot_commands) / sizeof(snapshot_commands[0]), argc, argv);
}
