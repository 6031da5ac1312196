"""cffi API-mode builder for the corosync client libraries.

Compiled against the system headers (libcpg-dev, libquorum-dev, libcmap-dev,
libvotequorum-dev, libcorosync-common-dev, libqb-dev) when the package is built, so struct
layouts and constants come from the headers, not from hand-copied offsets.
"""

from __future__ import annotations

from cffi import FFI

ffibuilder = FFI()

ffibuilder.cdef(
    r"""
    /* ---- corotypes.h ---- */
    typedef int... cs_error_t;  /* C enum; values checked in Python */
    typedef int... cs_dispatch_flags_t;
    #define CS_OK ...
    #define CS_ERR_TRY_AGAIN ...
    #define CS_ERR_NO_SECTIONS ...
    #define CS_DISPATCH_ONE ...
    #define CS_DISPATCH_ALL ...
    #define CS_DISPATCH_ONE_NONBLOCKING ...
    #define CS_TRACK_CURRENT ...
    #define CS_TRACK_CHANGES ...
    #define CS_TRACK_CHANGES_ONLY ...
    const char *cs_strerror(cs_error_t err);

    struct iovec { void *iov_base; size_t iov_len; };

    /* ---- cpg.h ---- */
    typedef uint64_t cpg_handle_t;
    typedef int... cpg_guarantee_t;
    typedef int... cpg_flow_control_state_t;
    #define CPG_MAX_NAME_LENGTH ...
    #define CPG_MEMBERS_MAX ...
    #define CPG_TYPE_AGREED ...

    struct cpg_address { uint32_t nodeid; uint32_t pid; uint32_t reason; };
    struct cpg_name { uint32_t length; char value[...]; };

    typedef void (*cpg_deliver_fn_t)(cpg_handle_t handle,
        const struct cpg_name *group_name, uint32_t nodeid, uint32_t pid,
        void *msg, size_t msg_len);
    typedef void (*cpg_confchg_fn_t)(cpg_handle_t handle,
        const struct cpg_name *group_name,
        const struct cpg_address *member_list, size_t member_list_entries,
        const struct cpg_address *left_list, size_t left_list_entries,
        const struct cpg_address *joined_list, size_t joined_list_entries);
    typedef struct {
        cpg_deliver_fn_t cpg_deliver_fn;
        cpg_confchg_fn_t cpg_confchg_fn;
    } cpg_callbacks_t;

    cs_error_t cpg_initialize(cpg_handle_t *handle, cpg_callbacks_t *callbacks);
    cs_error_t cpg_finalize(cpg_handle_t handle);
    cs_error_t cpg_fd_get(cpg_handle_t handle, int *fd);
    cs_error_t cpg_max_atomic_msgsize_get(cpg_handle_t handle, uint32_t *size);
    cs_error_t cpg_dispatch(cpg_handle_t handle, cs_dispatch_flags_t dispatch_types);
    cs_error_t cpg_join(cpg_handle_t handle, const struct cpg_name *group);
    cs_error_t cpg_leave(cpg_handle_t handle, const struct cpg_name *group);
    cs_error_t cpg_mcast_joined(cpg_handle_t handle, cpg_guarantee_t guarantee,
        const struct iovec *iovec, unsigned int iov_len);
    cs_error_t cpg_membership_get(cpg_handle_t handle, struct cpg_name *groupName,
        struct cpg_address *member_list, int *member_list_entries);
    cs_error_t cpg_local_get(cpg_handle_t handle, unsigned int *local_nodeid);
    cs_error_t cpg_flow_control_state_get(cpg_handle_t handle,
        cpg_flow_control_state_t *flow_control_enabled);

    extern "Python" void _py_cpg_deliver(cpg_handle_t, const struct cpg_name *,
        uint32_t, uint32_t, void *, size_t);
    extern "Python" void _py_cpg_confchg(cpg_handle_t, const struct cpg_name *,
        const struct cpg_address *, size_t, const struct cpg_address *, size_t,
        const struct cpg_address *, size_t);

    /* ---- quorum.h (v0 API) ---- */
    typedef uint64_t quorum_handle_t;
    #define QUORUM_FREE ...
    #define QUORUM_SET ...
    typedef void (*quorum_notification_fn_t)(quorum_handle_t handle,
        uint32_t quorate, uint64_t ring_seq, uint32_t view_list_entries,
        uint32_t *view_list);
    typedef struct { quorum_notification_fn_t quorum_notify_fn; } quorum_callbacks_t;
    cs_error_t quorum_initialize(quorum_handle_t *handle,
        quorum_callbacks_t *callbacks, uint32_t *quorum_type);
    cs_error_t quorum_finalize(quorum_handle_t handle);
    cs_error_t quorum_fd_get(quorum_handle_t handle, int *fd);
    cs_error_t quorum_dispatch(quorum_handle_t handle, cs_dispatch_flags_t dispatch_types);
    cs_error_t quorum_getquorate(quorum_handle_t handle, int *quorate);
    cs_error_t quorum_trackstart(quorum_handle_t handle, unsigned int flags);
    cs_error_t quorum_trackstop(quorum_handle_t handle);

    extern "Python" void _py_quorum_notify(quorum_handle_t, uint32_t, uint64_t,
        uint32_t, uint32_t *);

    /* ---- cmap.h ---- */
    typedef uint64_t cmap_handle_t;
    typedef uint64_t cmap_iter_handle_t;
    typedef uint64_t cmap_track_handle_t;
    typedef int... cmap_value_types_t;
    #define CMAP_KEYNAME_MAXLEN ...
    #define CMAP_TRACK_ADD ...
    #define CMAP_TRACK_DELETE ...
    #define CMAP_TRACK_MODIFY ...
    #define CMAP_TRACK_PREFIX ...
    #define CMAP_VALUETYPE_INT8 ...
    #define CMAP_VALUETYPE_UINT8 ...
    #define CMAP_VALUETYPE_INT16 ...
    #define CMAP_VALUETYPE_UINT16 ...
    #define CMAP_VALUETYPE_INT32 ...
    #define CMAP_VALUETYPE_UINT32 ...
    #define CMAP_VALUETYPE_INT64 ...
    #define CMAP_VALUETYPE_UINT64 ...
    #define CMAP_VALUETYPE_FLOAT ...
    #define CMAP_VALUETYPE_DOUBLE ...
    #define CMAP_VALUETYPE_STRING ...
    #define CMAP_VALUETYPE_BINARY ...
    struct cmap_notify_value { cmap_value_types_t type; size_t len; const void *data; };
    typedef void (*cmap_notify_fn_t)(cmap_handle_t cmap_handle,
        cmap_track_handle_t cmap_track_handle, int32_t event, const char *key_name,
        struct cmap_notify_value new_value, struct cmap_notify_value old_value,
        void *user_data);
    cs_error_t cmap_initialize(cmap_handle_t *handle);
    cs_error_t cmap_finalize(cmap_handle_t handle);
    cs_error_t cmap_fd_get(cmap_handle_t handle, int *fd);
    cs_error_t cmap_dispatch(cmap_handle_t handle, cs_dispatch_flags_t dispatch_types);
    cs_error_t cmap_get(cmap_handle_t handle, const char *key_name, void *value,
        size_t *value_len, cmap_value_types_t *type);
    cs_error_t cmap_iter_init(cmap_handle_t handle, const char *prefix,
        cmap_iter_handle_t *cmap_iter_handle);
    cs_error_t cmap_iter_next(cmap_handle_t handle, cmap_iter_handle_t iter_handle,
        char key_name[], size_t *value_len, cmap_value_types_t *type);
    cs_error_t cmap_iter_finalize(cmap_handle_t handle, cmap_iter_handle_t iter_handle);
    cs_error_t cmap_track_add(cmap_handle_t handle, const char *key_name,
        int32_t track_type, cmap_notify_fn_t notify_fn, void *user_data,
        cmap_track_handle_t *cmap_track_handle);
    cs_error_t cmap_track_delete(cmap_handle_t handle, cmap_track_handle_t track_handle);

    extern "Python" void _py_cmap_notify(cmap_handle_t, cmap_track_handle_t, int32_t,
        const char *, struct cmap_notify_value, struct cmap_notify_value, void *);

    /* ---- votequorum.h ---- */
    typedef uint64_t votequorum_handle_t;
    #define VOTEQUORUM_QDEVICE_MAX_NAME_LEN ...
    #define VOTEQUORUM_INFO_QUORATE ...
    #define VOTEQUORUM_INFO_QDEVICE_CAST_VOTE ...
    struct votequorum_info {
        unsigned int node_id;
        unsigned int node_state;
        unsigned int node_votes;
        unsigned int node_expected_votes;
        unsigned int highest_expected;
        unsigned int total_votes;
        unsigned int quorum;
        unsigned int flags;
        unsigned int qdevice_votes;
        char qdevice_name[...];
    };
    typedef struct { ...; } votequorum_callbacks_t;
    cs_error_t votequorum_initialize(votequorum_handle_t *handle,
        votequorum_callbacks_t *callbacks);
    cs_error_t votequorum_finalize(votequorum_handle_t handle);
    cs_error_t votequorum_getinfo(votequorum_handle_t handle, unsigned int nodeid,
        struct votequorum_info *info);

    /* ---- libqb IPC server (qbipcs.h) and client (qbipcc.h) ---- */
    typedef unsigned int uid_t;
    typedef unsigned int gid_t;
    typedef unsigned int mode_t;
    enum qb_ipc_type { QB_IPC_SOCKET, QB_IPC_SHM, QB_IPC_POSIX_MQ, QB_IPC_SYSV_MQ,
        QB_IPC_NATIVE, ... };
    enum qb_loop_priority { QB_LOOP_LOW, QB_LOOP_MED, QB_LOOP_HIGH, ... };
    typedef struct qb_ipcs_service qb_ipcs_service_t;
    typedef struct qb_ipcs_connection qb_ipcs_connection_t;
    typedef struct qb_ipcc_connection qb_ipcc_connection_t;
    struct qb_ipcs_connection_stats { int32_t client_pid; ...; };
    typedef void (*qb_loop_job_dispatch_fn)(void *data);
    typedef int32_t (*qb_ipcs_dispatch_fn_t)(int32_t fd, int32_t revents, void *data);
    struct qb_ipcs_poll_handlers {
        int32_t (*job_add)(enum qb_loop_priority p, void *data,
            qb_loop_job_dispatch_fn dispatch_fn);
        int32_t (*dispatch_add)(enum qb_loop_priority p, int32_t fd, int32_t events,
            void *data, qb_ipcs_dispatch_fn_t fn);
        int32_t (*dispatch_mod)(enum qb_loop_priority p, int32_t fd, int32_t events,
            void *data, qb_ipcs_dispatch_fn_t fn);
        int32_t (*dispatch_del)(int32_t fd);
    };
    struct qb_ipcs_service_handlers {
        int32_t (*connection_accept)(qb_ipcs_connection_t *c, uid_t uid, gid_t gid);
        void (*connection_created)(qb_ipcs_connection_t *c);
        int32_t (*msg_process)(qb_ipcs_connection_t *c, void *data, size_t size);
        int32_t (*connection_closed)(qb_ipcs_connection_t *c);
        void (*connection_destroyed)(qb_ipcs_connection_t *c);
    };
    qb_ipcs_service_t *qb_ipcs_create(const char *name, int32_t service_id,
        enum qb_ipc_type type, struct qb_ipcs_service_handlers *handlers);
    void qb_ipcs_poll_handlers_set(qb_ipcs_service_t *s,
        struct qb_ipcs_poll_handlers *handlers);
    void qb_ipcs_service_context_set(qb_ipcs_service_t *s, void *context);
    void *qb_ipcs_connection_service_context_get(qb_ipcs_connection_t *c);
    int32_t qb_ipcs_run(qb_ipcs_service_t *s);
    void qb_ipcs_destroy(qb_ipcs_service_t *s);
    ssize_t qb_ipcs_response_send(qb_ipcs_connection_t *c, const void *data, size_t size);
    ssize_t qb_ipcs_response_sendv(qb_ipcs_connection_t *c, const struct iovec *iov,
        size_t iov_len);
    void qb_ipcs_connection_ref(qb_ipcs_connection_t *c);
    void qb_ipcs_connection_unref(qb_ipcs_connection_t *c);
    void qb_ipcs_disconnect(qb_ipcs_connection_t *c);
    void qb_ipcs_context_set(qb_ipcs_connection_t *c, void *context);
    void *qb_ipcs_context_get(qb_ipcs_connection_t *c);
    int32_t qb_ipcs_connection_stats_get(qb_ipcs_connection_t *c,
        struct qb_ipcs_connection_stats *stats, int32_t clear_after_read);
    int32_t qb_ipcs_connection_get_buffer_size(qb_ipcs_connection_t *c);

    qb_ipcc_connection_t *qb_ipcc_connect(const char *name, size_t max_msg_size);
    void qb_ipcc_disconnect(qb_ipcc_connection_t *c);
    ssize_t qb_ipcc_sendv_recv(qb_ipcc_connection_t *c, const struct iovec *iov,
        uint32_t iov_len, void *res_msg, size_t res_len, int32_t timeout);

    extern "Python" int32_t _py_qb_job_add(enum qb_loop_priority, void *,
        qb_loop_job_dispatch_fn);
    extern "Python" int32_t _py_qb_dispatch_add(enum qb_loop_priority, int32_t, int32_t,
        void *, qb_ipcs_dispatch_fn_t);
    extern "Python" int32_t _py_qb_dispatch_mod(enum qb_loop_priority, int32_t, int32_t,
        void *, qb_ipcs_dispatch_fn_t);
    extern "Python" int32_t _py_qb_dispatch_del(int32_t);
    extern "Python" int32_t _py_qbs_accept(qb_ipcs_connection_t *, uid_t, gid_t);
    extern "Python" void _py_qbs_created(qb_ipcs_connection_t *);
    extern "Python" int32_t _py_qbs_msg_process(qb_ipcs_connection_t *, void *, size_t);
    extern "Python" int32_t _py_qbs_closed(qb_ipcs_connection_t *);
    extern "Python" void _py_qbs_destroyed(qb_ipcs_connection_t *);
    """
)

ffibuilder.set_source(
    "cpg._corosync",
    r"""
    #include <sys/uio.h>
    #include <corosync/corotypes.h>
    #include <corosync/cpg.h>
    #include <corosync/quorum.h>
    #include <corosync/cmap.h>
    #include <corosync/votequorum.h>
    #include <qb/qbipcs.h>
    #include <qb/qbipcc.h>
    """,
    libraries=["cpg", "quorum", "cmap", "votequorum", "corosync_common", "qb"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
