/* Requests per second on one libqb IPC connection, from C (as PVE::IPCC calls it).
 *
 * The same client measures our daemon, the reference and the bare servers of
 * bench/floors.py, so its own cost (printed as client CPU per request) is the same in
 * every figure and small next to the server's.  One JSON line on stdout.
 *
 * usage: ipc_rps SERVICE OP PAYLOAD_HEX COUNT [WARMUP]
 *   SERVICE      libqb service name (pve2)
 *   OP           request id (GET_FS_VERSION = 1, ...)
 *   PAYLOAD_HEX  request payload after the 16-byte header ("" for none)
 */
#include <errno.h>
#include <qb/qbipc_common.h>
#include <qb/qbipcc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <time.h>

#define MAX_MSG_SIZE (1024 * 1024) /* what PVE::IPCC asks for */

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec)
	       + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static int unhex(const char *s, unsigned char *out, size_t cap, size_t *len)
{
	size_t n = strlen(s);
	if (n % 2 || n / 2 > cap)
		return -1;
	for (size_t i = 0; i < n / 2; i++) {
		unsigned int b;
		if (sscanf(s + 2 * i, "%2x", &b) != 1)
			return -1;
		out[i] = (unsigned char)b;
	}
	*len = n / 2;
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 5) {
		fprintf(stderr, "usage: %s SERVICE OP PAYLOAD_HEX COUNT [WARMUP]\n", argv[0]);
		return 1;
	}
	int op = atoi(argv[2]);
	long count = atol(argv[4]);
	long warmup = argc > 5 ? atol(argv[5]) : 200;
	size_t plen = 0;
	unsigned char *req = calloc(1, MAX_MSG_SIZE);
	char *resp = malloc(MAX_MSG_SIZE);
	if (!req || !resp || count <= 0)
		return 1;
	struct qb_ipc_request_header *hdr = (struct qb_ipc_request_header *)req;
	if (unhex(argv[3], req + sizeof(*hdr), MAX_MSG_SIZE - sizeof(*hdr), &plen) != 0) {
		fprintf(stderr, "bad payload hex\n");
		return 1;
	}
	hdr->id = op;
	hdr->size = (int32_t)(sizeof(*hdr) + plen);
	struct iovec iov = { .iov_base = req, .iov_len = (size_t)hdr->size };

	qb_ipcc_connection_t *c = qb_ipcc_connect(argv[1], MAX_MSG_SIZE);
	if (c == NULL) {
		printf("{\"connect_errno\": %d}\n", errno);
		return 2;
	}
	long errors = 0;
	int first_error = 0;
	ssize_t reply_len = 0;
	double t0 = 0, c0 = 0;
	for (long i = 0; i < warmup + count; i++) {
		if (i == warmup) {
			t0 = now_s();
			c0 = cpu_s();
		}
		ssize_t rc = qb_ipcc_sendv_recv(c, &iov, 1, resp, MAX_MSG_SIZE, 5000);
		if (rc < (ssize_t)sizeof(struct qb_ipc_response_header)) {
			printf("{\"transport_error\": %zd, \"at\": %ld}\n", rc, i);
			qb_ipcc_disconnect(c);
			return 3;
		}
		struct qb_ipc_response_header *rh = (struct qb_ipc_response_header *)resp;
		if (rh->error != 0) {
			errors++;
			if (!first_error)
				first_error = rh->error;
		}
		reply_len = rc - (ssize_t)sizeof(*rh);
	}
	double secs = now_s() - t0, cpu = cpu_s() - c0;
	printf("{\"count\": %ld, \"seconds\": %.6f, \"client_cpu_s\": %.6f, \"errors\": %ld, "
	       "\"first_error\": %d, \"reply_len\": %zd}\n",
	       count, secs, cpu, errors, first_error, reply_len);
	qb_ipcc_disconnect(c);
	return 0;
}
