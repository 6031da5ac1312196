/* The floor of one FUSE request in C: a trivial libfuse3 low-level filesystem, one
 * thread, serving a root directory and one file ("file", FILE_SIZE bytes).  Attribute and
 * entry timeouts are 0 and opens are direct_io, so every fstat is a GETATTR and every
 * pread a READ that reaches us.  bench/floors.py runs it and its pyfuse3 twin (in
 * floors.py) under the same client (bench/fuse_client.c).
 *
 * usage: fuse_floor_fs MOUNTPOINT   (foreground; prints "ready" once mounted; SIGTERM ends)
 */
#define FUSE_USE_VERSION 35
#include <errno.h>
#include <fuse_lowlevel.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FILE_INO 2
#define FILE_SIZE 4096

static char content[FILE_SIZE];
static unsigned long requests;

static void fill(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	if (ino == FUSE_ROOT_ID) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | 0644;
		st->st_nlink = 1;
		st->st_size = FILE_SIZE;
	}
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	requests++;
	if (parent != FUSE_ROOT_ID || strcmp(name, "file") != 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	struct fuse_entry_param e;
	memset(&e, 0, sizeof(e));
	e.ino = FILE_INO;
	fill(FILE_INO, &e.attr);
	fuse_reply_entry(req, &e); /* timeouts 0 */
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	requests++;
	if (ino != FUSE_ROOT_ID && ino != FILE_INO) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	struct stat st;
	fill(ino, &st);
	fuse_reply_attr(req, &st, 0.0);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	requests++;
	if (ino != FILE_INO) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	fi->direct_io = 1;
	fi->fh = 1;
	fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	(void)ino; (void)fi;
	requests++;
	if (off >= FILE_SIZE) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if ((size_t)(FILE_SIZE - off) < size)
		size = (size_t)(FILE_SIZE - off);
	fuse_reply_buf(req, content + off, size);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino; (void)fi;
	requests++;
	fuse_reply_err(req, 0);
}

static const struct fuse_lowlevel_ops ops = {
	.lookup = op_lookup,
	.getattr = op_getattr,
	.open = op_open,
	.read = op_read,
	.release = op_release,
};

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s MOUNTPOINT\n", argv[0]);
		return 1;
	}
	memset(content, 'x', sizeof(content));
	char *fargv[] = { argv[0], "-o", "default_permissions,fsname=floor_c", NULL };
	struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
	struct fuse_session *se = fuse_session_new(&args, &ops, sizeof(ops), NULL);
	if (se == NULL)
		return 2;
	if (fuse_set_signal_handlers(se) != 0 || fuse_session_mount(se, argv[1]) != 0)
		return 3;
	printf("ready\n");
	fflush(stdout);
	int rc = fuse_session_loop(se);
	fuse_session_unmount(se);
	fuse_remove_signal_handlers(se);
	fuse_session_destroy(se);
	fprintf(stderr, "requests %lu\n", requests);
	return rc < 0 ? 4 : 0;
}
