/* The floor of one libqb IPC request in C: a shared-memory libqb server on libqb's own
 * event loop whose handler answers every request at once with an empty payload.
 * bench/floors.py runs it and the same trivial server on cpg/ipcs.py (trio) under the
 * same client (bench/ipc_rps.c).
 *
 * usage: ipc_floor_server NAME   (prints "ready" once listening; SIGTERM ends it)
 */
#include <errno.h>
#include <qb/qbipc_common.h>
#include <qb/qbipcs.h>
#include <qb/qbloop.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

static qb_loop_t *loop;

static int32_t on_accept(qb_ipcs_connection_t *c, uid_t uid, gid_t gid)
{
	(void)c; (void)uid; (void)gid;
	return 0;
}

static int32_t on_msg(qb_ipcs_connection_t *c, void *data, size_t size)
{
	(void)size;
	struct qb_ipc_request_header *req = data;
	struct qb_ipc_response_header resp = { .id = req->id, .size = sizeof(resp), .error = 0 };
	qb_ipcs_response_send(c, &resp, sizeof(resp));
	return 0;
}

static int32_t job_add(enum qb_loop_priority p, void *data, qb_loop_job_dispatch_fn fn)
{
	return qb_loop_job_add(loop, p, data, fn);
}

static int32_t dispatch_add(enum qb_loop_priority p, int32_t fd, int32_t events, void *data,
			    qb_ipcs_dispatch_fn_t fn)
{
	return qb_loop_poll_add(loop, p, fd, events, data, fn);
}

static int32_t dispatch_mod(enum qb_loop_priority p, int32_t fd, int32_t events, void *data,
			    qb_ipcs_dispatch_fn_t fn)
{
	return qb_loop_poll_mod(loop, p, fd, events, data, fn);
}

static int32_t dispatch_del(int32_t fd)
{
	return qb_loop_poll_del(loop, fd);
}

static int32_t on_signal(int32_t sig, void *data)
{
	(void)sig; (void)data;
	qb_loop_stop(loop);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s NAME\n", argv[0]);
		return 1;
	}
	struct qb_ipcs_service_handlers sh = { .connection_accept = on_accept, .msg_process = on_msg };
	struct qb_ipcs_poll_handlers ph = { .job_add = job_add, .dispatch_add = dispatch_add,
					    .dispatch_mod = dispatch_mod, .dispatch_del = dispatch_del };
	qb_loop_signal_handle sig;
	loop = qb_loop_create();
	qb_ipcs_service_t *s = qb_ipcs_create(argv[1], 1, QB_IPC_SHM, &sh);
	if (loop == NULL || s == NULL)
		return 2;
	qb_ipcs_poll_handlers_set(s, &ph);
	if (qb_ipcs_run(s) != 0)
		return 3;
	qb_loop_signal_add(loop, QB_LOOP_HIGH, SIGTERM, NULL, on_signal, &sig);
	qb_loop_signal_add(loop, QB_LOOP_HIGH, SIGINT, NULL, on_signal, &sig);
	printf("ready\n");
	fflush(stdout);
	qb_loop_run(loop);
	qb_ipcs_destroy(s);
	qb_loop_destroy(loop);
	return 0;
}
