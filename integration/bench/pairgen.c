/* SPDX-License-Identifier: Apache-2.0
 *
 * pairgen: the bench generator for the vNIC sweep. testpmd's `5tswap` loop, but the packets
 * that seed the loop carry a source and destination IPv4 address given *per port*.
 *
 * Why not dpdk-testpmd: its `--tx-ip` is global, so every vNIC pair would send the same
 * addresses, and a switch that binds one unique IP per vNIC (vdfwd's spoof guard, OVS
 * anti-spoof flows) rightly drops every pair but the first. Running one testpmd per pair on
 * the generator core does not fix it either: the processes would time-share the core in
 * scheduler slices, so at any instant only one pair's loop would move.
 *
 * What it does, like `testpmd --forward-mode=5tswap --port-topology=loop` with
 * `set fwd 5tswap retry` + `start tx_first N`: one forwarding lcore polls every port in turn
 * (burst 32), swaps the Ethernet, IPv4 and UDP/TCP addresses of what it received and sends it
 * back out of the same port, retrying a full TX ring up to 64 times 1 us apart; on start it
 * first sends N bursts of 32 UDP packets on each port that has a `--port-flow`. Mbuf pool,
 * ring sizes and EAL options are the harness's testpmd ones.
 *
 * The harness drives it over stdin with the testpmd commands it uses (`show port summary
 * all`, `show port info all`, `show port stats all`, `set fwd ...`, `start tx_first N`,
 * `start`, `stop`, `quit`) and parses the same answer lines, so both generators share one
 * driver (bench.py `Testpmd`).
 *
 * Latency (`--stamp`, the harness's `latency` figure): every packet pairgen transmits (seeded
 * or echoed) carries a magic word and the TSC (rte_rdtsc) read just before its TX burst in the
 * first 12 bytes of its UDP payload; on receipt the TSC read just after the RX burst minus that
 * stamp is one trip through the subject (A -> subject -> B or back). All ports are polled by
 * the one forwarding lcore, so both stamps come from the same core's clock. The trip includes
 * the sender's virtio-user enqueue and kick and the wait until the receiving port is polled
 * again (at most one pass over the ports), but not pairgen's own swap. Kept: count, sum, min,
 * max and a log-linear histogram (32 sub-buckets per power of two: <= 3 % bucket width) for
 * the percentiles; `clear latency` resets them, `show latency` prints one line
 * `Latency: samples=N mean_ns=... min_ns=... p50_ns=... p90_ns=... p99_ns=... p999_ns=...
 * max_ns=... tsc_hz=...` (nanoseconds via rte_get_tsc_hz()). Both are served by the
 * forwarding lcore between two polling passes, so a snapshot is consistent.
 * `--seed-burst=N` (default 32) is the size of each seed burst: with `start tx_first 1` and
 * `--seed-burst=1` one packet circulates per pair, so nothing ever queues behind another
 * (the harness's drop-free, low-load latency).
 *
 * Build: gcc -O2 -o pairgen pairgen.c $(pkg-config --cflags --libs libdpdk)   (bench.py does it)
 * Args:  [EAL args] -- [-i] --frame=BYTES --udp=SRC,DST [--mbufs=N] [--stamp] [--seed-burst=N]
 *                      --port-flow=PORT,DST_MAC,SRC_IP,DST_IP (repeatable)
 */

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rte_byteorder.h>
#include <rte_common.h>
#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_ethdev.h>
#include <rte_ether.h>
#include <rte_ip.h>
#include <rte_launch.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_tcp.h>
#include <rte_udp.h>

#define MAX_PORTS 128
#define BURST 32 /* testpmd --burst=32 */
#define RING 256 /* testpmd --rxd=256 --txd=256 */
#define TX_RETRY_NUM 64 /* testpmd's burst_tx_retry_num */
#define TX_RETRY_US 1 /* testpmd's burst_tx_delay_time */
#define MBUF_CACHE 250 /* testpmd's mempool cache */

/* The packet a port sends first; afterwards it only echoes (swapped) what it receives. */
struct port_flow {
	bool set;
	struct rte_ether_addr dst_mac;
	uint32_t src_ip; /* host byte order */
	uint32_t dst_ip;
};

static struct port_flow flows[MAX_PORTS];
static uint16_t nb_ports;
static uint16_t frame_len = 64;
static uint16_t udp_src = 1000;
static uint16_t udp_dst = 1001;
static unsigned int nb_mbufs = 16384;
static struct rte_mempool *pool;

/* Written by the main lcore, read by the forwarding lcore. */
static volatile bool forwarding;
static unsigned int seed_bursts;
static unsigned int fwd_lcore = RTE_MAX_LCORE;
static uint16_t seed_burst = BURST; /* packets per seed burst (--seed-burst) */

/* ---- Latency stamps (--stamp) ---------------------------------------------------------- */

static bool stamping;
#define STAMP_MAGIC 0x4e54414cu /* "LATN" */
/* Ethernet + IPv4 (no options, as seeded) + UDP: where the payload, and the stamp, start. */
#define STAMP_OFF (sizeof(struct rte_ether_hdr) + sizeof(struct rte_ipv4_hdr) + sizeof(struct rte_udp_hdr))
#define STAMP_LEN (sizeof(uint32_t) + sizeof(uint64_t))

/* Log-linear histogram of TSC cycles: values below 2^SUB are exact, above each power of two
 * is split into 2^SUB equal buckets (HdrHistogram's layout with SUB significant bits). */
#define LAT_SUB 5
#define LAT_N (1u << LAT_SUB)
#define LAT_BUCKETS ((65 - LAT_SUB) * LAT_N)

struct lat_stats {
	uint64_t count;
	uint64_t sum;
	uint64_t min;
	uint64_t max;
	uint64_t hist[LAT_BUCKETS];
};

/* Owned by the forwarding lcore while it runs; the main lcore asks it (lat_req) to clear them
 * or to copy them into lat_snap, so the command never reads a half-updated record. */
static struct lat_stats lat;
static struct lat_stats lat_snap;
enum { LAT_REQ_NONE, LAT_REQ_SNAPSHOT, LAT_REQ_CLEAR };
static volatile int lat_req;

static inline unsigned int lat_bucket(uint64_t v)
{
	if (v < LAT_N)
		return (unsigned int)v;
	unsigned int e = 63 - (unsigned int)__builtin_clzll(v); /* >= LAT_SUB */
	unsigned int m = (unsigned int)(v >> (e - LAT_SUB)) & (LAT_N - 1);
	return (e - LAT_SUB + 1) * LAT_N + m;
}

/* Lowest value of bucket `i` and its width. */
static void lat_bucket_range(unsigned int i, uint64_t *lo, uint64_t *width)
{
	if (i < LAT_N) {
		*lo = i;
		*width = 1;
		return;
	}
	unsigned int e = i / LAT_N + LAT_SUB - 1;
	unsigned int m = i % LAT_N;
	*lo = (uint64_t)(LAT_N + m) << (e - LAT_SUB);
	*width = (uint64_t)1 << (e - LAT_SUB);
}

static void lat_clear(struct lat_stats *s)
{
	memset(s, 0, sizeof(*s));
	s->min = UINT64_MAX;
}

/* Answers the main lcore's request, if any (forwarding lcore, between polling passes). */
static inline void lat_serve(void)
{
	int req = lat_req;
	if (likely(req == LAT_REQ_NONE))
		return;
	rte_smp_rmb();
	if (req == LAT_REQ_CLEAR)
		lat_clear(&lat);
	else
		lat_snap = lat;
	rte_smp_wmb();
	lat_req = LAT_REQ_NONE;
}

/* Where a stamp is (or goes) in `m`, or NULL if it is not an IPv4/UDP frame long enough. */
static inline char *stamp_at(struct rte_mbuf *m)
{
	if (rte_pktmbuf_data_len(m) < STAMP_OFF + STAMP_LEN)
		return NULL;
	struct rte_ether_hdr *eth = rte_pktmbuf_mtod(m, struct rte_ether_hdr *);
	struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)(eth + 1);
	if (eth->ether_type != rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4) ||
	    ip->version_ihl != RTE_IPV4_VHL_DEF || ip->next_proto_id != IPPROTO_UDP)
		return NULL;
	return rte_pktmbuf_mtod_offset(m, char *, STAMP_OFF);
}

static inline void stamp_write(struct rte_mbuf *m, uint64_t tsc)
{
	char *p = stamp_at(m);
	uint32_t magic = STAMP_MAGIC;

	if (p == NULL)
		return;
	memcpy(p, &magic, sizeof(magic));
	memcpy(p + sizeof(magic), &tsc, sizeof(tsc));
}

/* Records one trip if `m` carries a stamp of ours, and consumes the stamp. */
static inline void stamp_record(struct rte_mbuf *m, uint64_t now)
{
	char *p = stamp_at(m);
	uint32_t magic;
	uint64_t then;

	if (p == NULL)
		return;
	memcpy(&magic, p, sizeof(magic));
	if (magic != STAMP_MAGIC)
		return;
	memcpy(&then, p + sizeof(magic), sizeof(then));
	memset(p, 0, sizeof(magic)); /* a packet echoed without a new stamp must not count twice */
	if (then > now) /* cannot happen on one lcore's TSC; never record garbage */
		return;
	uint64_t d = now - then;
	lat.count++;
	lat.sum += d;
	if (d < lat.min)
		lat.min = d;
	if (d > lat.max)
		lat.max = d;
	lat.hist[lat_bucket(d)]++;
}

static void usage(const char *prog)
{
	fprintf(stderr,
		"usage: %s [EAL args] -- [-i] --frame=BYTES --udp=SRC,DST [--mbufs=N] [--stamp] [--seed-burst=N]\n"
		"          --port-flow=PORT,DST_MAC,SRC_IP,DST_IP (repeatable)\n",
		prog);
}

static int parse_port_flow(const char *arg)
{
	char buf[128];
	char *save = NULL;
	struct in_addr a;

	if (strlen(arg) >= sizeof(buf))
		return -1;
	strcpy(buf, arg);
	char *port_s = strtok_r(buf, ",", &save);
	char *mac_s = strtok_r(NULL, ",", &save);
	char *src_s = strtok_r(NULL, ",", &save);
	char *dst_s = strtok_r(NULL, ",", &save);
	if (!port_s || !mac_s || !src_s || !dst_s)
		return -1;
	char *end;
	unsigned long port = strtoul(port_s, &end, 10);
	if (*end != '\0' || port >= MAX_PORTS)
		return -1;
	struct port_flow *f = &flows[port];
	if (rte_ether_unformat_addr(mac_s, &f->dst_mac) != 0)
		return -1;
	if (inet_pton(AF_INET, src_s, &a) != 1)
		return -1;
	f->src_ip = ntohl(a.s_addr);
	if (inet_pton(AF_INET, dst_s, &a) != 1)
		return -1;
	f->dst_ip = ntohl(a.s_addr);
	f->set = true;
	return 0;
}

static int parse_args(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "frame", required_argument, NULL, 'f' },
		{ "udp", required_argument, NULL, 'u' },
		{ "mbufs", required_argument, NULL, 'm' },
		{ "port-flow", required_argument, NULL, 'p' },
		{ "stamp", no_argument, NULL, 's' },
		{ "seed-burst", required_argument, NULL, 'b' },
		{ NULL, 0, NULL, 0 },
	};
	int c, n;
	unsigned int s, d;

	while ((c = getopt_long(argc, argv, "i", opts, NULL)) != -1) {
		switch (c) {
		case 'i': /* interactive: the only mode, accepted for testpmd's command line */
			break;
		case 'f':
			frame_len = (uint16_t)atoi(optarg);
			break;
		case 'u':
			if (sscanf(optarg, "%u,%u", &s, &d) != 2 || s > 65535 || d > 65535)
				return -1;
			udp_src = (uint16_t)s;
			udp_dst = (uint16_t)d;
			break;
		case 'm':
			nb_mbufs = (unsigned int)atoi(optarg);
			break;
		case 's':
			stamping = true;
			break;
		case 'b':
			n = atoi(optarg);
			if (n < 1 || n > BURST)
				return -1;
			seed_burst = (uint16_t)n;
			break;
		case 'p':
			if (parse_port_flow(optarg) != 0) {
				fprintf(stderr, "bad --port-flow %s\n", optarg);
				return -1;
			}
			break;
		default:
			return -1;
		}
	}
	/* Ethernet + IPv4 + UDP headers must fit; virtio frames carry no FCS. */
	if (frame_len < sizeof(struct rte_ether_hdr) + sizeof(struct rte_ipv4_hdr) +
				sizeof(struct rte_udp_hdr) ||
	    frame_len > RTE_MBUF_DEFAULT_DATAROOM)
		return -1;
	if (stamping && frame_len < STAMP_OFF + STAMP_LEN) {
		fprintf(stderr, "--stamp needs --frame >= %zu\n", STAMP_OFF + STAMP_LEN);
		return -1;
	}
	return 0;
}

static int port_init(uint16_t port)
{
	struct rte_eth_conf conf;
	int ret;

	memset(&conf, 0, sizeof(conf));
	ret = rte_eth_dev_configure(port, 1, 1, &conf);
	if (ret < 0)
		return ret;
	uint16_t rxd = RING, txd = RING;
	ret = rte_eth_dev_adjust_nb_rx_tx_desc(port, &rxd, &txd);
	if (ret < 0)
		return ret;
	int socket = rte_eth_dev_socket_id(port);
	ret = rte_eth_rx_queue_setup(port, 0, rxd, socket, NULL, pool);
	if (ret < 0)
		return ret;
	ret = rte_eth_tx_queue_setup(port, 0, txd, socket, NULL);
	if (ret < 0)
		return ret;
	ret = rte_eth_dev_start(port);
	if (ret < 0)
		return ret;
	/* As testpmd does; virtio-user without a control queue may refuse, which is harmless. */
	rte_eth_promiscuous_enable(port);
	return 0;
}

/* Sends `n` packets, retrying a full ring like testpmd's `retry` modes; frees the rest. */
static void send_burst(uint16_t port, struct rte_mbuf **pkts, uint16_t n)
{
	uint16_t sent = rte_eth_tx_burst(port, 0, pkts, n);
	unsigned int retry = 0;

	while (sent < n && retry++ < TX_RETRY_NUM) {
		rte_delay_us(TX_RETRY_US);
		sent += rte_eth_tx_burst(port, 0, pkts + sent, n - sent);
	}
	if (sent < n)
		rte_pktmbuf_free_bulk(pkts + sent, n - sent);
}

static void fill_seed(struct rte_mbuf *m, uint16_t port)
{
	const struct port_flow *f = &flows[port];
	uint16_t l3_len = frame_len - sizeof(struct rte_ether_hdr);
	uint16_t l4_len = l3_len - sizeof(struct rte_ipv4_hdr);
	char *data = rte_pktmbuf_append(m, frame_len);

	memset(data, 0, frame_len);
	struct rte_ether_hdr *eth = (struct rte_ether_hdr *)data;
	rte_ether_addr_copy(&f->dst_mac, &eth->dst_addr);
	rte_eth_macaddr_get(port, &eth->src_addr);
	eth->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
	struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)(eth + 1);
	ip->version_ihl = RTE_IPV4_VHL_DEF;
	ip->total_length = rte_cpu_to_be_16(l3_len);
	ip->time_to_live = 64;
	ip->next_proto_id = IPPROTO_UDP;
	ip->src_addr = rte_cpu_to_be_32(f->src_ip);
	ip->dst_addr = rte_cpu_to_be_32(f->dst_ip);
	ip->hdr_checksum = rte_ipv4_cksum(ip);
	struct rte_udp_hdr *udp = (struct rte_udp_hdr *)(ip + 1);
	udp->src_port = rte_cpu_to_be_16(udp_src);
	udp->dst_port = rte_cpu_to_be_16(udp_dst);
	udp->dgram_len = rte_cpu_to_be_16(l4_len);
	udp->dgram_cksum = 0; /* as testpmd's txonly: none */
	m->l2_len = sizeof(*eth);
	m->l3_len = sizeof(*ip);
}

/* testpmd's 5tswap for IPv4: swap MACs, addresses and L4 ports (checksums are unchanged). */
static inline void swap5(struct rte_mbuf *m)
{
	struct rte_ether_hdr *eth = rte_pktmbuf_mtod(m, struct rte_ether_hdr *);
	struct rte_ether_addr tmp_mac;

	rte_ether_addr_copy(&eth->dst_addr, &tmp_mac);
	rte_ether_addr_copy(&eth->src_addr, &eth->dst_addr);
	rte_ether_addr_copy(&tmp_mac, &eth->src_addr);
	if (eth->ether_type != rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4) ||
	    rte_pktmbuf_data_len(m) < sizeof(*eth) + sizeof(struct rte_ipv4_hdr))
		return;
	struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)(eth + 1);
	uint32_t a = ip->src_addr;
	ip->src_addr = ip->dst_addr;
	ip->dst_addr = a;
	size_t ihl = (size_t)(ip->version_ihl & RTE_IPV4_HDR_IHL_MASK) * 4;
	if ((ip->next_proto_id == IPPROTO_UDP || ip->next_proto_id == IPPROTO_TCP) &&
	    rte_pktmbuf_data_len(m) >= sizeof(*eth) + ihl + 4) {
		/* UDP and TCP both start with the two ports. */
		uint16_t *ports = (uint16_t *)((char *)ip + ihl);
		uint16_t p = ports[0];
		ports[0] = ports[1];
		ports[1] = p;
	}
}

static int fwd_loop(void *arg __rte_unused)
{
	struct rte_mbuf *pkts[BURST];

	for (unsigned int b = 0; b < seed_bursts; b++) {
		for (uint16_t port = 0; port < nb_ports; port++) {
			if (!flows[port].set)
				continue;
			if (rte_pktmbuf_alloc_bulk(pool, pkts, seed_burst) != 0)
				continue;
			for (int i = 0; i < seed_burst; i++)
				fill_seed(pkts[i], port);
			if (stamping) {
				uint64_t now = rte_rdtsc();
				for (int i = 0; i < seed_burst; i++)
					stamp_write(pkts[i], now);
			}
			send_burst(port, pkts, seed_burst);
		}
	}
	while (forwarding) {
		lat_serve();
		for (uint16_t port = 0; port < nb_ports; port++) {
			uint16_t n = rte_eth_rx_burst(port, 0, pkts, BURST);
			if (n == 0)
				continue;
			if (stamping) {
				uint64_t now = rte_rdtsc();
				for (uint16_t i = 0; i < n; i++)
					stamp_record(pkts[i], now);
			}
			for (uint16_t i = 0; i < n; i++)
				swap5(pkts[i]);
			if (stamping) {
				uint64_t now = rte_rdtsc();
				for (uint16_t i = 0; i < n; i++)
					stamp_write(pkts[i], now);
			}
			send_burst(port, pkts, n);
		}
	}
	return 0;
}

static void start(unsigned int bursts)
{
	if (forwarding) {
		printf("Packet forwarding already started\n");
		return;
	}
	seed_bursts = bursts;
	forwarding = true;
	rte_smp_wmb();
	if (rte_eal_remote_launch(fwd_loop, NULL, fwd_lcore) != 0) {
		forwarding = false;
		printf("cannot launch the forwarding lcore\n");
		return;
	}
	printf("Start pairgen 5tswap forwarding on lcore %u, %u seed bursts\n", fwd_lcore, bursts);
}

static void stop(void)
{
	if (!forwarding)
		return;
	forwarding = false;
	rte_eal_wait_lcore(fwd_lcore);
	printf("Done.\n");
}

static void show_stats(void)
{
	for (uint16_t port = 0; port < nb_ports; port++) {
		struct rte_eth_stats s;
		if (rte_eth_stats_get(port, &s) != 0)
			memset(&s, 0, sizeof(s));
		/* Same lines (and keys) as testpmd's `show port stats`. */
		printf("\n  ######################## NIC statistics for port %u  ########################\n", port);
		printf("  RX-packets: %" PRIu64 " RX-missed: %" PRIu64 " RX-bytes:  %" PRIu64 "\n", s.ipackets,
		       s.imissed, s.ibytes);
		printf("  RX-errors: %" PRIu64 "\n  RX-nombuf:  %" PRIu64 "\n", s.ierrors, s.rx_nombuf);
		printf("  TX-packets: %" PRIu64 " TX-errors: %" PRIu64 " TX-bytes:  %" PRIu64 "\n", s.opackets,
		       s.oerrors, s.obytes);
		printf("  Rx-pps: 0\n  Tx-pps: 0\n");
		printf("  ############################################################################\n");
	}
}

/* The value below which a fraction `q` of the samples lie: the middle of its bucket, kept
 * within the observed min..max. */
static uint64_t lat_quantile(const struct lat_stats *s, uint64_t total, double q)
{
	uint64_t want = (uint64_t)(q * (double)total + 0.999999);
	uint64_t seen = 0;

	if (want == 0)
		want = 1;
	for (unsigned int i = 0; i < LAT_BUCKETS; i++) {
		seen += s->hist[i];
		if (seen >= want) {
			uint64_t lo, w;
			lat_bucket_range(i, &lo, &w);
			uint64_t v = lo + w / 2;
			return RTE_MAX(s->min, RTE_MIN(s->max, v));
		}
	}
	return s->max;
}

/* Asks the forwarding lcore to serve `req` (it does so between polling passes); done directly
 * when it is not running. False if it did not answer within a second. */
static bool lat_request(int req)
{
	if (!forwarding) {
		if (req == LAT_REQ_CLEAR)
			lat_clear(&lat);
		else
			lat_snap = lat;
		return true;
	}
	rte_smp_wmb();
	lat_req = req;
	for (int i = 0; i < 10000 && lat_req != LAT_REQ_NONE; i++)
		rte_delay_us_sleep(100);
	rte_smp_rmb();
	return lat_req == LAT_REQ_NONE;
}

static void show_latency(void)
{
	if (!lat_request(LAT_REQ_SNAPSHOT)) {
		printf("Latency: error=forwarding-lcore-did-not-answer\n");
		return;
	}
	const struct lat_stats *s = &lat_snap;
	double ns = 1e9 / (double)rte_get_tsc_hz();
	uint64_t total = 0;
	for (unsigned int i = 0; i < LAT_BUCKETS; i++)
		total += s->hist[i];
	if (total == 0) {
		printf("Latency: samples=0 stamping=%s tsc_hz=%" PRIu64 "\n", stamping ? "on" : "off",
		       rte_get_tsc_hz());
		return;
	}
	printf("Latency: samples=%" PRIu64 " mean_ns=%.0f min_ns=%.0f p50_ns=%.0f p90_ns=%.0f p99_ns=%.0f"
	       " p999_ns=%.0f max_ns=%.0f tsc_hz=%" PRIu64 "\n",
	       total, (double)s->sum / (double)total * ns, (double)s->min * ns,
	       (double)lat_quantile(s, total, 0.5) * ns, (double)lat_quantile(s, total, 0.9) * ns,
	       (double)lat_quantile(s, total, 0.99) * ns, (double)lat_quantile(s, total, 0.999) * ns,
	       (double)s->max * ns, rte_get_tsc_hz());
}

static void show_info(void)
{
	for (uint16_t port = 0; port < nb_ports; port++) {
		struct rte_eth_link link;
		memset(&link, 0, sizeof(link));
		rte_eth_link_get_nowait(port, &link);
		printf("\n********************* Infos for port %u  *********************\n", port);
		printf("Link status: %s\n", link.link_status ? "up" : "down");
	}
}

static void command_loop(void)
{
	char line[256];

	printf("pairgen> ");
	while (fgets(line, sizeof(line), stdin) != NULL) {
		unsigned int n;
		line[strcspn(line, "\r\n")] = '\0';
		if (strcmp(line, "show port summary all") == 0)
			printf("Number of available ports: %u\n", nb_ports);
		else if (strcmp(line, "show port info all") == 0)
			show_info();
		else if (strcmp(line, "show port stats all") == 0)
			show_stats();
		else if (strcmp(line, "show latency") == 0)
			show_latency();
		else if (strcmp(line, "clear latency") == 0) {
			if (!lat_request(LAT_REQ_CLEAR))
				printf("clear latency: forwarding lcore did not answer\n");
		}
		else if (sscanf(line, "start tx_first %u", &n) == 1)
			start(n);
		else if (strcmp(line, "start tx_first") == 0)
			start(1);
		else if (strcmp(line, "start") == 0)
			start(0);
		else if (strcmp(line, "stop") == 0)
			stop();
		else if (strcmp(line, "quit") == 0)
			break;
		else if (strncmp(line, "set fwd ", 8) == 0 || line[0] == '\0')
			; /* always 5tswap with retry */
		else
			printf("Bad command: %s\n", line);
		printf("pairgen> ");
	}
	stop();
}

int main(int argc, char **argv)
{
	int ret = rte_eal_init(argc, argv);
	if (ret < 0) {
		fprintf(stderr, "EAL init failed: %s\n", rte_strerror(rte_errno));
		return 1;
	}
	argc -= ret;
	argv += ret;
	if (parse_args(argc, argv) != 0) {
		usage(argv[0]);
		return 1;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	nb_ports = rte_eth_dev_count_avail();
	if (nb_ports == 0 || nb_ports > MAX_PORTS) {
		fprintf(stderr, "%u ports (want 1..%d)\n", nb_ports, MAX_PORTS);
		return 1;
	}
	fwd_lcore = rte_get_next_lcore(-1, 1, 0);
	if (fwd_lcore >= RTE_MAX_LCORE) {
		fprintf(stderr, "no lcore for forwarding: give -l with two lcores\n");
		return 1;
	}
	lat_clear(&lat);
	lat_clear(&lat_snap);
	pool = rte_pktmbuf_pool_create("pairgen_pool", nb_mbufs, MBUF_CACHE, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
				       rte_socket_id());
	if (pool == NULL) {
		fprintf(stderr, "mbuf pool: %s\n", rte_strerror(rte_errno));
		return 1;
	}
	for (uint16_t port = 0; port < nb_ports; port++) {
		ret = port_init(port);
		if (ret < 0) {
			fprintf(stderr, "port %u init failed: %s\n", port, rte_strerror(-ret));
			return 1;
		}
	}
	command_loop();
	for (uint16_t port = 0; port < nb_ports; port++) {
		rte_eth_dev_stop(port);
		rte_eth_dev_close(port);
	}
	rte_eal_cleanup();
	return 0;
}
