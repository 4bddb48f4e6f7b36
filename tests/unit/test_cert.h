/* Test certificates, shared by the unit tests that need a TLS peer. */
#ifndef KP_TEST_CERT_H
#define KP_TEST_CERT_H

/* A self-signed P-256 certificate for CN=@cn with @serial, valid for an
 * hour, written as PEM to @crt and its key to @key. Fails the test on
 * any error. */
void test_make_cert(const char *crt, const char *key, const char *cn, long serial);

#endif
