/*
 * test_partition.c — kreq__murmur2 / kreq__partition_of against Kafka's
 * Java vectors (the ones librdkafka's own unit test uses) and against
 * librdkafka's murmur2 partitioner on random keys, lengths, alignments and
 * partition counts.
 */
#include <check.h>
#include <librdkafka/rdkafka.h>
#include <sodium.h>
#include <string.h>

#include "common/partition.h"
#include "testsupport.h"

START_TEST(test_java_vectors)
{
	static const char aligned4[] = "1234", pre[] = "PreAmbleWillBeRemoved,ThePrePartThatIs";
	static const struct {
		const char *key;
		uint32_t hash;
	} v[] = {
	    {"kafka", 0xd067cf64},      {"giberish123456789", 0x8f552b0c},
	    {aligned4, 0x9fc97b14},     {aligned4 + 1, 0xe7c009ca},
	    {aligned4 + 2, 0x873930da}, {aligned4 + 3, 0x5a4b5ca1},
	    {pre, 0x78424f1c},          {pre + 1, 0x4a62b377},
	    {pre + 2, 0xe0e4e09e},      {pre + 3, 0x62b8b43f},
	    {"", 0x106e08d9},
	};
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
		ck_assert_msg(kreq__murmur2(v[i].key, strlen(v[i].key)) == v[i].hash,
		              "murmur2(\"%s\") = %08x, Java says %08x", v[i].key,
		              kreq__murmur2(v[i].key, strlen(v[i].key)), v[i].hash);
	/* toPositive clears the sign bit: "kafka" hashes negative in Java */
	ck_assert_int_eq(kreq__partition_of("kafka", 5, 1000), (0xd067cf64 & 0x7fffffff) % 1000);
	ck_assert_int_eq(kreq__partition_of("kafka", 5, 1), 0);
}
END_TEST

START_TEST(test_matches_librdkafka)
{
	uint8_t buf[300];
	for (int i = 0; i < 20000; i++) {
		size_t len = 1 + randombytes_uniform(255), off = randombytes_uniform(4);
		randombytes_buf(buf + off, len);
		int32_t n = 1 + (int32_t)randombytes_uniform(i % 2 ? 7 : 5000);
		int32_t want =
		    rd_kafka_msg_partitioner_murmur2(NULL, buf + off, len, n, NULL, NULL);
		ck_assert_int_eq(kreq__partition_of(buf + off, len, n), want);
	}
}
END_TEST

int main(void)
{
	Suite *s = suite_create("partition");
	TCase *tc = tcase_create("murmur2");
	tcase_add_test(tc, test_java_vectors);
	tcase_add_test(tc, test_matches_librdkafka);
	suite_add_tcase(s, tc);
	return kreq_test_run_suite(s);
}
