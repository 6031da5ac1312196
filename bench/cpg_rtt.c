/* The floor of one CPG round trip without Python: mcast a message, wait for our own
 * delivery, N times in a row.  Built and run by bench/cpg_bench.py --c-floor on the same
 * cluster as the Python measurement, so the difference is what the language runtime
 * (trio's loop and the cffi callbacks) adds to every message.  Prints one JSON line.
 *
 * usage: cpg_rtt <samples> <size>
 */
#include <corosync/cpg.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static unsigned int own_nodeid;
static int own_seen;

static void on_deliver(cpg_handle_t h, const struct cpg_name *g, uint32_t nodeid, uint32_t pid,
		       void *msg, size_t len)
{
	(void)h; (void)g; (void)msg; (void)len;
	if (nodeid == own_nodeid && pid == (uint32_t)getpid())
		own_seen++;
}

static void on_confchg(cpg_handle_t h, const struct cpg_name *g,
		       const struct cpg_address *m, size_t nm, const struct cpg_address *l,
		       size_t nl, const struct cpg_address *j, size_t nj)
{
	(void)h; (void)g; (void)m; (void)nm; (void)l; (void)nl; (void)j; (void)nj;
}

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static int wait_own(cpg_handle_t h, int fd, int want)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	while (own_seen < want) {
		if (poll(&p, 1, 5000) <= 0)
			return -1;
		if (cpg_dispatch(h, CS_DISPATCH_ALL) != CS_OK)
			return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	int samples = argc > 1 ? atoi(argv[1]) : 2000;
	size_t size = argc > 2 ? (size_t)atoi(argv[2]) : 100;
	cpg_callbacks_t cb = { .cpg_deliver_fn = on_deliver, .cpg_confchg_fn = on_confchg };
	cpg_handle_t h;
	struct cpg_name group;
	int fd;
	char *buf = calloc(1, size);
	double *rtt = calloc((size_t)samples, sizeof(double));

	if (!buf || !rtt || cpg_initialize(&h, &cb) != CS_OK || cpg_local_get(h, &own_nodeid) != CS_OK)
		return 1;
	strcpy(group.value, "cpg_rtt_c");
	group.length = (uint32_t)strlen(group.value) + 1;
	if (cpg_join(h, &group) != CS_OK || cpg_fd_get(h, &fd) != CS_OK)
		return 1;
	struct iovec iov = { .iov_base = buf, .iov_len = size };
	for (int i = 0; i < samples + 200; i++) {
		double t0 = now_us();
		cs_error_t err;
		while ((err = cpg_mcast_joined(h, CPG_TYPE_AGREED, &iov, 1)) == CS_ERR_TRY_AGAIN)
			usleep(100);
		if (err != CS_OK || wait_own(h, fd, i + 1) != 0)
			return 2;
		if (i >= 200) /* the first 200 warm up */
			rtt[i - 200] = now_us() - t0;
	}
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	double cpu = ru.ru_utime.tv_sec + ru.ru_stime.tv_sec
		     + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
	qsort(rtt, (size_t)samples, sizeof(double), cmp);
	printf("{\"rtt_p50_us\": %.0f, \"rtt_p90_us\": %.0f, \"rtt_p99_us\": %.0f, "
	       "\"cpu_us_per_rtt\": %.1f}\n",
	       rtt[samples / 2], rtt[samples * 9 / 10], rtt[samples * 99 / 100],
	       cpu * 1e6 / (samples + 200));
	cpg_finalize(h);
	return 0;
}
