/* SipHash-2-4 with a 128-bit tag (Aumasson and Bernstein): a keyed
 * pseudo-random function, fast on short inputs. Whoever lacks the key can
 * neither predict a tag nor find two inputs with the same one, so a tag can
 * stand for a secret in memory where the secret itself must not be kept. */
#ifndef KP_CORE_SIPHASH_H
#define KP_CORE_SIPHASH_H

#include <stddef.h>
#include <stdint.h>

#define KP_SIPHASH_KEY_LEN 16
#define KP_SIPHASH_TAG_LEN 16

/* The tag of the @len bytes at @in under @key, into @out (the bytes of the
 * reference implementation's output, as OpenSSL's SIPHASH with size 16). */
void kp_siphash128(const uint8_t key[KP_SIPHASH_KEY_LEN], const void *in, size_t len,
                   uint8_t out[KP_SIPHASH_TAG_LEN]);

#endif
