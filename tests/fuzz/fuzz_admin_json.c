/* libFuzzer driver for the control API's JSON bodies (raftstore/json.c):
 * the first input byte picks an op, the rest is parsed by jansson the way
 * the admin handlers parse a request body and handed to
 * kp_command_from_json. Crashes, sanitizer reports and leaks are what the
 * fuzzer looks for; it also checks the contract:
 *
 *   KP_OK appends a command that kp_command_decode accepts; any refusal
 *   leaves the output buffer untouched and says why;
 *   an accepted command applied to an empty registry never fails for
 *   anything but memory, and rendering whatever entity it made never
 *   fails.
 *
 * The seeds in corpus/admin_json/ are one body per common op, and a
 * policy with every kind of budget window and threshold action. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "raftstore/raftstore.h"

/* An op and the kind of entity it creates (-1: none). */
static const struct {
    enum kp_op op;
    int kind;
} ops[] = {
    {KP_OP_PUT_PROVIDER, KP_KIND_PROVIDER},
    {KP_OP_PUT_KEY, KP_KIND_KEY},
    {KP_OP_PUT_POOL, KP_KIND_POOL},
    {KP_OP_PUT_TENANT, KP_KIND_TENANT},
    {KP_OP_PUT_PROJECT, KP_KIND_PROJECT},
    {KP_OP_PUT_POLICY, KP_KIND_POLICY},
    {KP_OP_PUT_PRICE, KP_KIND_PRICE},
    {KP_OP_PUT_MEMBER, KP_KIND_MEMBER},
    {KP_OP_PUT_WEBHOOK, KP_KIND_WEBHOOK},
    {KP_OP_PUT_TOKEN, KP_KIND_TOKEN},
    {KP_OP_SET_KEY_STATUS, -1},
    {KP_OP_DELETE_KEY, -1},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t pick = data[0] % (sizeof(ops) / sizeof(ops[0]));
    enum kp_op op = ops[pick].op;
    json_t *body = json_loadb((const char *)data + 1, size - 1, JSON_REJECT_DUPLICATES, NULL);
    if (body == NULL)
        return 0;
    struct kp_audit_ctx who = {.actor = (char *)"fuzz", .request_id = (char *)"req_1"};
    struct kp_buf out;
    char err[256], field[160];
    kp_buf_init(&out);
    if (kp_buf_append(&out, "x", 1) != 0)
        abort();
    int rc = kp_command_from_json(op, "e1", body, 1767225600000, &who, false, 0, &out, err,
                                  sizeof(err), field, sizeof(field));
    json_decref(body);
    if (rc != KP_OK) {
        /* Refused: nothing appended, and a message says why. */
        if (out.len != 1 || (rc != KP_EINVAL && rc != KP_ENOMEM) || err[0] == '\0')
            abort();
        kp_buf_free(&out);
        return 0;
    }
    struct kp_command cmd;
    memset(&cmd, 0, sizeof(cmd));
    if (kp_command_decode(out.data + 1, out.len - 1, &cmd, err, sizeof(err)) != KP_OK ||
        cmd.op != op)
        abort();
    kp_command_free(&cmd);

    struct kp_fsm *f = kp_fsm_new();
    struct kp_fsm_result res;
    if (f == NULL || kp_fsm_apply(f, 1, out.data + 1, out.len - 1, &res) != KP_OK)
        abort();
    if (res.code == KP_OK && ops[pick].kind >= 0) {
        const struct kp_entity *e = kp_fsm_get(f, (enum kp_kind)ops[pick].kind, "e1");
        json_t *j = e ? kp_entity_json(e) : NULL;
        if (e == NULL || j == NULL)
            abort();
        json_decref(j);
    }
    kp_fsm_free(f);
    kp_buf_free(&out);
    return 0;
}
