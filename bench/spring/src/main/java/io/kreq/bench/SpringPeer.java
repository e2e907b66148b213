/*
 * SpringPeer — the Java peer of bench/bench_roundtrip (issue #18): request/reply
 * over Apache Kafka the way a Java team would write it with Spring for Apache
 * Kafka, measured the way bench_roundtrip measures kreq.
 *
 *   client: ReplyingKafkaTemplate.sendAndReceive() -> <prefix>.requests ->
 *   echo:   @KafkaListener + @SendTo (reply topic and correlation id from the
 *           request's headers) -> <prefix>.replies -> the template's reply
 *           container -> the RequestReplyFuture completes.
 *
 * Two echo services, as Spring's reference documentation describes them:
 *   plain          a record listener returning the payload; auto-commit off,
 *                  the container commits offsets (AckMode.BATCH, the default).
 *   transactional  exactly-once read-process-write: a KafkaTransactionManager
 *                  on the container, a transactional producer factory
 *                  (transactional.id prefix), read_committed consumers (the
 *                  echo's and the client's reply consumer: a reply is seen
 *                  once its transaction committed, as kreq's client does), a
 *                  BATCH listener (one transaction per poll, not per record:
 *                  what "batch listener where it helps" means under load) and
 *                  retry.backoff.ms=5 (back-to-back transactions meet
 *                  CONCURRENT_TRANSACTIONS while the previous markers are
 *                  written; the default 100 ms backoff stalls each one).
 * Both: linger.ms=0 on every producer (Kafka 4's clients default to 5 ms, a
 * floor under the latency at 1 in flight; under load the producer batches
 * anyway while requests are in flight), 256-byte payloads, one partition per
 * topic, everything in one JVM (as bench_roundtrip runs its echo workers in
 * its own process), so CPU per call covers client + echo.
 *
 * Usage (KREQ_TEST_BOOTSTRAP=host:port, KREQ_BENCH_BROKER_PID=pid optional):
 *   java -cp 'LIBS/*' io.kreq.bench.SpringPeer plain|transactional
 *        [calls-at-1-in-flight] [seconds-per-load] [loads, e.g. 16,256]
 * Prints one line per measurement, "key=value" words after the tag "spring":
 *   spring mode=M load=1 calls=N p50_us=X p99_us=Y
 *   spring mode=M inflight=W calls_per_s=R cpu_us=C broker_cpu_us=B errors=E
 * (cpu_us: CPU microseconds of this JVM per call; broker_cpu_us: the same for
 * the Kafka broker's process, from /proc/PID/stat, 0 without the pid).
 * Exit status 0 only if every call got its echo back, byte for byte.
 */
package io.kreq.bench;

import java.lang.management.ManagementFactory;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.Set;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;
import org.springframework.context.annotation.AnnotationConfigApplicationContext;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.kafka.annotation.EnableKafka;
import org.springframework.kafka.annotation.KafkaListener;
import org.springframework.kafka.config.ConcurrentKafkaListenerContainerFactory;
import org.springframework.kafka.core.DefaultKafkaConsumerFactory;
import org.springframework.kafka.core.DefaultKafkaProducerFactory;
import org.springframework.kafka.core.KafkaTemplate;
import org.springframework.kafka.listener.ConcurrentMessageListenerContainer;
import org.springframework.kafka.listener.ContainerProperties;
import org.springframework.kafka.requestreply.ReplyingKafkaTemplate;
import org.springframework.kafka.requestreply.RequestReplyFuture;
import org.springframework.kafka.support.KafkaHeaders;
import org.springframework.kafka.transaction.KafkaTransactionManager;
import org.springframework.messaging.Message;
import org.springframework.messaging.handler.annotation.SendTo;
import org.springframework.messaging.support.MessageBuilder;

public final class SpringPeer {
	static final int PAYLOAD = 256;

	private SpringPeer() {
	}

	/* The run's settings, read by the @Configuration below (one run per JVM). */
	static String bootstrap, prefix;
	static boolean transactional;

	static String requests() {
		return prefix + ".requests";
	}

	static String replies() {
		return prefix + ".replies";
	}

	static Map<String, Object> producerProps() {
		Map<String, Object> p = new HashMap<>();
		p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
		p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
		p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
		p.put(ProducerConfig.LINGER_MS_CONFIG, Integer.getInteger("bench.linger.ms", 0));
		if (transactional)
			p.put(ProducerConfig.RETRY_BACKOFF_MS_CONFIG, Integer.getInteger("bench.retry.backoff.ms", 5));
		return p;
	}

	static Map<String, Object> consumerProps(String group) {
		Map<String, Object> c = new HashMap<>();
		c.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
		c.put(ConsumerConfig.GROUP_ID_CONFIG, group);
		c.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class);
		c.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
		c.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
		c.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
		if (transactional)
			c.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
		return c;
	}

	/* The echo service: a listener container factory with a reply template. */
	@Configuration
	@EnableKafka
	public static class EchoConfig {
		@Bean
		public DefaultKafkaProducerFactory<String, byte[]> echoProducerFactory() {
			DefaultKafkaProducerFactory<String, byte[]> pf = new DefaultKafkaProducerFactory<>(producerProps());
			if (transactional)
				pf.setTransactionIdPrefix(prefix + "-echo-tx-");
			return pf;
		}

		@Bean
		public KafkaTemplate<String, byte[]> echoTemplate(DefaultKafkaProducerFactory<String, byte[]> pf) {
			return new KafkaTemplate<>(pf);
		}

		@Bean
		public ConcurrentKafkaListenerContainerFactory<String, byte[]> echoFactory(
				DefaultKafkaProducerFactory<String, byte[]> pf, KafkaTemplate<String, byte[]> template) {
			ConcurrentKafkaListenerContainerFactory<String, byte[]> f = new ConcurrentKafkaListenerContainerFactory<>();
			f.setConsumerFactory(new DefaultKafkaConsumerFactory<>(consumerProps(prefix + "-echo")));
			f.setReplyTemplate(template);
			if (transactional) {
				f.getContainerProperties().setKafkaAwareTransactionManager(new KafkaTransactionManager<>(pf));
				f.setBatchListener(true);
			}
			return f;
		}
	}

	/* Record listener: the reply goes to the request's REPLY_TOPIC header with
	 * its CORRELATION_ID (what @SendTo without a value does). */
	public static class PlainEcho {
		@KafkaListener(id = "echo", topics = "${kreq.bench.requests}", containerFactory = "echoFactory")
		@SendTo
		public byte[] echo(byte[] request) {
			return request;
		}
	}

	/* Batch listener: one transaction per poll. As Spring's documentation
	 * says for batch listeners, each reply Message carries its topic and
	 * correlation id itself (from the request's REPLY_TOPIC and
	 * CORRELATION_ID headers). The @SendTo value must be there all the same:
	 * without one a batch listener's replies are dropped, logged at DEBUG
	 * only ("No replyTopic to handle the reply", spring-kafka 4.1.2); the
	 * Message's TOPIC header wins over it. The replies are sent by the
	 * container's transactional KafkaTemplate, in the transaction that also
	 * carries the batch's offsets. */
	public static class BatchEcho {
		@KafkaListener(id = "echo", topics = "${kreq.bench.requests}", containerFactory = "echoFactory")
		@SendTo("${kreq.bench.replies}")
		public List<Message<byte[]>> echo(List<ConsumerRecord<String, byte[]>> batch) {
			List<Message<byte[]>> out = new ArrayList<>(batch.size());
			for (ConsumerRecord<String, byte[]> r : batch) {
				Header topic = r.headers().lastHeader(KafkaHeaders.REPLY_TOPIC);
				Header corr = r.headers().lastHeader(KafkaHeaders.CORRELATION_ID);
				if (topic == null || corr == null)
					continue; /* not a request from a ReplyingKafkaTemplate */
				out.add(MessageBuilder.withPayload(r.value())
						.setHeader(KafkaHeaders.TOPIC, new String(topic.value(), StandardCharsets.UTF_8))
						.setHeader(KafkaHeaders.CORRELATION_ID, corr.value()).build());
			}
			return out;
		}
	}

	static final class Stats {
		final AtomicLong done = new AtomicLong(), errors = new AtomicLong();
	}

	static ReplyingKafkaTemplate<String, byte[], byte[]> client() {
		ContainerProperties cp = new ContainerProperties(replies());
		ConcurrentMessageListenerContainer<String, byte[]> replies = new ConcurrentMessageListenerContainer<>(
				new DefaultKafkaConsumerFactory<>(consumerProps(prefix + "-client")), cp);
		Map<String, Object> p = producerProps();
		p.remove(ProducerConfig.RETRY_BACKOFF_MS_CONFIG);
		ReplyingKafkaTemplate<String, byte[], byte[]> t = new ReplyingKafkaTemplate<>(
				new DefaultKafkaProducerFactory<>(p), replies);
		t.setDefaultReplyTimeout(Duration.ofSeconds(30));
		t.setDefaultTopic(requests());
		t.afterPropertiesSet();
		t.start();
		return t;
	}

	static long cpuNanos() {
		return ((com.sun.management.OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean())
				.getProcessCpuTime();
	}

	/* utime + stime of another process in seconds (0 if unknown). */
	static double brokerCpuSeconds(String pid, double ticks) {
		if (pid == null || pid.isEmpty())
			return 0;
		try {
			String s = Files.readString(Path.of("/proc", pid, "stat"));
			String[] f = s.substring(s.lastIndexOf(')') + 2).split(" ");
			return (Long.parseLong(f[11]) + Long.parseLong(f[12])) / ticks;
		} catch (Exception e) {
			return 0;
		}
	}

	static void check(ConsumerRecord<String, byte[]> reply, byte[] payload, Stats st) {
		if (reply == null || !Arrays.equals(reply.value(), payload))
			st.errors.incrementAndGet();
	}

	public static void main(String[] args) throws Exception {
		if (args.length < 1 || args.length > 4 || !Set.of("plain", "transactional").contains(args[0])) {
			System.err.println("usage: SpringPeer plain|transactional [calls-at-1-in-flight] "
					+ "[seconds-per-load] [loads, e.g. 16,256] (KREQ_TEST_BOOTSTRAP=host:port)");
			System.exit(2);
		}
		bootstrap = System.getenv("KREQ_TEST_BOOTSTRAP");
		if (bootstrap == null || bootstrap.isEmpty()) {
			System.err.println("SpringPeer: KREQ_TEST_BOOTSTRAP is not set");
			System.exit(2);
		}
		String mode = args[0];
		transactional = mode.equals("transactional");
		int n = args.length > 1 ? Integer.parseInt(args[1]) : 1000;
		double secs = args.length > 2 ? Double.parseDouble(args[2]) : 5;
		String loads = args.length > 3 ? args[3] : "16,256";
		String brokerPid = System.getenv("KREQ_BENCH_BROKER_PID");
		double ticks = Double.parseDouble(System.getProperty("bench.clk.tck", "100"));
		Random rnd = new Random();
		prefix = "kreq-spring-" + Integer.toUnsignedString(rnd.nextInt());
		byte[] payload = new byte[PAYLOAD];
		rnd.nextBytes(payload);

		Map<String, Object> ac = Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
		int rc = 0;
		try (Admin admin = Admin.create(ac)) {
			admin.createTopics(List.of(new NewTopic(requests(), 1, (short) 1), new NewTopic(replies(), 1, (short) 1)))
					.all().get(30, TimeUnit.SECONDS);
			System.setProperty("kreq.bench.requests", requests()); /* the listeners' topics */
			System.setProperty("kreq.bench.replies", replies());
			AnnotationConfigApplicationContext ctx = new AnnotationConfigApplicationContext();
			ReplyingKafkaTemplate<String, byte[], byte[]> t = null;
			try {
				ctx.register(EchoConfig.class, transactional ? BatchEcho.class : PlainEcho.class);
				ctx.refresh();
				t = client();
				if (!t.waitForAssignment(Duration.ofSeconds(60)))
					throw new IllegalStateException("reply container not assigned in 60 s");
				rc = run(t, mode, payload, n, secs, loads, brokerPid, ticks);
			} finally {
				if (t != null) {
					t.stop();
					t.destroy();
				}
				ctx.close();
				admin.deleteTopics(List.of(requests(), replies())).all().get(30, TimeUnit.SECONDS);
			}
		}
		System.exit(rc);
	}

	static int run(ReplyingKafkaTemplate<String, byte[], byte[]> t, String mode, byte[] payload, int n, double secs,
			String loads, String brokerPid, double ticks) throws Exception {
		Stats st = new Stats();
		/* warm-up: JIT, the echo's assignment, the transactional producer's init */
		for (int i = 0; i < Math.max(200, n / 4); i++)
			check(t.sendAndReceive(new ProducerRecord<>(requests(), payload)).get(60, TimeUnit.SECONDS), payload, st);
		long[] lat = new long[n];
		for (int i = 0; i < n; i++) {
			long t0 = System.nanoTime();
			ConsumerRecord<String, byte[]> r = t.sendAndReceive(new ProducerRecord<>(requests(), payload)).get(30,
					TimeUnit.SECONDS);
			lat[i] = System.nanoTime() - t0;
			check(r, payload, st);
		}
		Arrays.sort(lat);
		System.out.printf("spring mode=%s load=1 calls=%d p50_us=%.0f p99_us=%.0f%n", mode, n, lat[n / 2] / 1e3,
				lat[(int) (n * 0.99)] / 1e3);
		System.out.flush();
		for (String w : loads.split(",")) {
			int window = Integer.parseInt(w.trim());
			Semaphore sem = new Semaphore(window);
			Stats ls = new Stats();
			long c0 = cpuNanos();
			double b0 = brokerCpuSeconds(brokerPid, ticks);
			long start = System.nanoTime(), end = start + (long) (secs * 1e9);
			while (System.nanoTime() < end) {
				if (!sem.tryAcquire(30, TimeUnit.SECONDS))
					throw new IllegalStateException("no reply in 30 s at " + window + " in flight");
				RequestReplyFuture<String, byte[], byte[]> f = t.sendAndReceive(new ProducerRecord<>(requests(), payload));
				f.whenComplete((r, e) -> {
					if (e != null)
						ls.errors.incrementAndGet();
					else
						check(r, payload, ls);
					ls.done.incrementAndGet();
					sem.release();
				});
			}
			long calls = ls.done.get();
			double elapsed = (System.nanoTime() - start) / 1e9;
			long c1 = cpuNanos();
			double b1 = brokerCpuSeconds(brokerPid, ticks);
			if (!sem.tryAcquire(window, 60, TimeUnit.SECONDS))
				throw new IllegalStateException("calls still pending 60 s after the load at " + window);
			System.out.printf("spring mode=%s inflight=%d calls_per_s=%.0f cpu_us=%.1f broker_cpu_us=%.1f errors=%d%n",
					mode, window, calls / elapsed, calls > 0 ? (c1 - c0) / 1e3 / calls : 0,
					calls > 0 ? (b1 - b0) * 1e6 / calls : 0, ls.errors.get());
			System.out.flush();
			st.errors.addAndGet(ls.errors.get());
		}
		if (st.errors.get() > 0) {
			System.err.printf("SpringPeer: %d calls failed or came back altered%n", st.errors.get());
			return 1;
		}
		return 0;
	}
}
