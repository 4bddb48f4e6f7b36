/* raftstore's Raft glue internals: the state machine adapter for
 * canonical/raft (raft_fsm.c) that store.c and the raft_fixture tests share.
 * Nothing outside raftstore/ and its tests includes this. */
#ifndef KP_RAFTSTORE_RAFT_GLUE_H
#define KP_RAFTSTORE_RAFT_GLUE_H

#include <raft.h>
#include <raft/uv.h>

#include "raftstore/raftstore.h"

/* The outcome of the last apply, read by the proposer's callback, which
 * raft runs synchronously right after fsm->apply on the leader. */
struct kp_raft_applied {
    uint64_t index;
    struct kp_fsm_result res;
};

struct kp_raft_fsm {
    struct raft_fsm rf; /* give &rf to raft_init */
    struct kp_fsm *fsm;
    struct raft *raft;
    struct kp_raft_applied last;
    void (*changed)(void *arg); /* after each apply or restore; may be NULL */
    void *arg;
};

/* Set @a up to drive @fsm for @raft (which must be the raft instance that
 * @a->rf is given to). */
void kp_raft_fsm_init(struct kp_raft_fsm *a, struct kp_fsm *fsm, struct raft *raft,
                      void (*changed)(void *arg), void *arg);

/* Frame an encoded command as a log entry payload (raft_malloc'd, for
 * raft_apply). KP_OK, KP_ENOMEM, KP_ETOOBIG. */
int kp_raft_entry_frame(const void *cmd, size_t len, struct raft_buffer *out);

/* The mutual-TLS transport (transport_tls.c). Init loads the certificate
 * chain, its private key and the cluster CA from the files (KP_ECONFIG with
 * @errmsg naming the file and OpenSSL's reason); give @t to raft_uv_init
 * afterwards. Close frees it once raft has closed it (or never used it). */
int kp_raft_tls_init(struct raft_uv_transport *t, uv_loop_t *loop, const char *cert_file,
                     const char *key_file, const char *ca_file, char *errmsg, size_t errlen);
void kp_raft_tls_close(struct raft_uv_transport *t);
/* Read the three files again: links made from now on use them, links open
 * now keep theirs. On failure the old ones stay and @errmsg says why. */
int kp_raft_tls_reload(struct raft_uv_transport *t, char *errmsg, size_t errlen);

#endif
