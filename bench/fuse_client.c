/* The client of the FUSE floors: one syscall in a loop on a file of a FUSE mount, the
 * same binary for the C and the pyfuse3 filesystem.  One JSON line on stdout.
 *
 * usage: fuse_client PATH OP COUNT
 *   fstat  fstat(2) on an open descriptor: one GETATTR per call (attr timeout 0)
 *   pread  pread(2) of 4 KiB at offset 0: one READ per call (direct_io)
 *   stat   stat(2) by path: LOOKUP + GETATTR per call (entry timeout 0)
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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

static int one(int kind, int fd, const char *path, char *buf)
{
	struct stat st;
	switch (kind) {
	case 0:
		return fstat(fd, &st);
	case 1:
		return pread(fd, buf, 4096, 0) == 4096 ? 0 : -1;
	default:
		return stat(path, &st);
	}
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s PATH fstat|pread|stat COUNT\n", argv[0]);
		return 1;
	}
	int kind = strcmp(argv[2], "fstat") == 0 ? 0 : strcmp(argv[2], "pread") == 0 ? 1 : 2;
	long count = atol(argv[3]);
	static char buf[4096];
	int fd = open(argv[1], O_RDONLY);
	if (fd < 0) {
		perror("open");
		return 2;
	}
	for (int i = 0; i < 200; i++)
		if (one(kind, fd, argv[1], buf) != 0) {
			perror(argv[2]);
			return 3;
		}
	double t0 = now_s(), c0 = cpu_s();
	for (long i = 0; i < count; i++)
		if (one(kind, fd, argv[1], buf) != 0) {
			perror(argv[2]);
			return 3;
		}
	double secs = now_s() - t0, cpu = cpu_s() - c0;
	close(fd);
	printf("{\"count\": %ld, \"seconds\": %.6f, \"client_cpu_s\": %.6f}\n", count, secs, cpu);
	return 0;
}
