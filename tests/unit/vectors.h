/* vectors.h — the protocol test vectors published in docs/protocol.md. */
#ifndef KREQ_TEST_VECTORS_H
#define KREQ_TEST_VECTORS_H

#include <stdio.h>

/* Writes the vector block (the text between the test-vectors markers of
 * docs/protocol.md, without the code fence). */
void kreq_test_vectors_write(FILE *out);

/* Fails the running Check test unless doc_path holds exactly that block and
 * each vector's envelope, decoded from the doc's hex, verifies. */
void kreq_test_check_vectors(const char *doc_path);

#endif
