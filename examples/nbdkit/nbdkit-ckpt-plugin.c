/*
 * nbdkit-ckpt-plugin: serve a Hyper-V virtual disk (a VHDX, or a
 * differencing AVHDX together with the whole chain of parents under it)
 * over NBD, through libckpt.
 *
 *   nbdkit target/release/nbdkit-ckpt-plugin.so file=DISK.avhdx [readonly=true]
 *   nbdkit target/release/nbdkit-ckpt-plugin.so vm=DIR [readonly=true]
 *
 * Written against include/libckpt.h alone; examples/nbdkit/build.sh builds
 * it. The export is the virtual disk the file reads as: reads go through
 * the chain, writes, trims and zeroes go to the top file only (the parents
 * are never written), flush makes every completed write durable.
 *
 * VM mode (vm=DIR): the VM folder is opened with ckpt_vm_open in
 * .get_ready and held until .unload. Each of its disks is an export named
 * by its index ("0", "1", ...; the default export "" is disk 0; all are in
 * .list_exports), served through the VM's live handle (ckpt_vm_disk):
 * borrowed from the VM, never closed by the plugin, and switched by
 * libckpt to the new current file in a short pause whenever a checkpoint
 * operation runs. The plugin offers the VM's control channel
 * (ckpt_vm_serve_control, DIR/ckpt-control.sock; started in .after_fork,
 * since its threads would not survive nbdkit's fork into the background), so `ckpt checkpoint
 * create|delete|rename|list ...` from another process runs on the held VM,
 * live, while clients read and write; so does `ckpt vm compact DIR N`
 * (the compaction runs on the live handle while clients write). .unload
 * stops the channel, then closes the VM (which flushes and closes the
 * live handles).
 *
 * Size: nbdkit asks .get_size once per connection and keeps the answer for
 * that connection; the plugin answers with the handle's current size. A
 * live resize of a VM disk is therefore seen by the next connection (a
 * client reconnects to see it); a connection made before it keeps the old
 * size, and its requests past a smaller end fail with EINVAL.
 *
 * Changes since a point (VM mode): the export named
 * "ckpt:changed-since:REF" (disk 0) or "K:ckpt:changed-since:REF" (disk K)
 * serves disk K read-only, and its block status (base:allocation) says
 * which ranges changed since REF, a checkpoint or a reference point: a
 * changed range is data (0), everything else a hole that is NOT said to
 * read as zeros (NBDKIT_EXTENT_HOLE alone: unchanged, read it from the
 * earlier backup). A backup tool that speaks NBD maps the export
 * (`qemu-img map`, or NBD_CMD_BLOCK_STATUS) and reads only what changed.
 * nbdkit plugins cannot define their own metadata contexts, so the
 * context's name is the export's name. The changes are computed when the
 * connection opens (ckpt_vm_changes_open, the live disk's state then; a
 * guest writing meanwhile adds more, which the next connection sees);
 * reads serve the live disk. Such exports are not in .list_exports. An
 * unknown REF fails the connection with libckpt's message.
 *
 * readonly=true in VM mode: the exports are read-only (nbdkit refuses
 * writes, trims and zeroes with EROFS), but the VM is still opened live
 * and the control channel still offered: the disks are opened for writing
 * by libckpt (a checkpoint switches them), and checkpoint operations sent
 * through the channel still change the VM folder. Only the NBD clients
 * cannot write. To leave a disk file untouched, serve it with
 * file=... readonly=true instead.
 *
 * file= and vm= together are a configuration error.
 *
 * Design (both modes):
 *
 * - One libckpt disk handle per export is shared by every connection to it. It is
 *   opened in .get_ready (before nbdkit forks into the background, so a bad file
 *   stops nbdkit at start-up with libckpt's message) and closed in
 *   .unload, which flushes and leaves the file with an empty log (in VM
 *   mode: ckpt_vm_close does this for every disk).
 *
 * - A ckpt_disk allows concurrent reads, writes, flushes and trims from
 *   several threads (see ckpt_disk in libckpt.h), so the thread model is
 *   NBDKIT_THREAD_MODEL_PARALLEL.
 *
 * - Because all connections share the handle, a write completed on one
 *   connection is seen by reads on every other, and a flush on any
 *   connection makes the writes of all connections durable: that is what
 *   NBD multi-conn promises, so .can_multi_conn is true.
 *
 * - One exception to "fully parallel": on a differencing disk libckpt
 *   completes a write that does not cover whole logical sectors by reading
 *   and rewriting the rest of its first and last sector, so two such
 *   writes at once may undo each other's bytes in a shared sector (see
 *   ckpt_disk in libckpt.h). Unaligned writes, trims and zeroes therefore
 *   take a lock exclusively, aligned ones take it shared, reads not at
 *   all. NBD clients such as QEMU send aligned requests, so the lock is
 *   never contended in practice.
 *
 * - FUA is native: a write, trim or zero with the FUA flag is followed by
 *   ckpt_disk_flush before it completes.
 *
 * - Extents (NBD block status, base:allocation) come from
 *   ckpt_disk_extents: a range no file of the chain holds data for is
 *   reported as a hole that reads as zeros (NBDKIT_EXTENT_HOLE |
 *   NBDKIT_EXTENT_ZERO), everything else as data (0), at the block
 *   granularity of the chain. So `qemu-img map` shows the chain's layout
 *   and `qemu-img convert` and other sparse-aware clients skip the holes
 *   without reading them. One call maps at most MAX_MAP bytes from the
 *   requested offset (the client asks again for the rest).
 *
 * - readonly=true opens the file read-only: it is never written (a dirty
 *   log is replayed in memory only) and clients cannot write. Without it
 *   the file is opened read-write (libckpt takes an exclusive lock on it)
 *   even if nbdkit runs with -r; use readonly=true to leave the file
 *   untouched.
 *
 * Errors: every libckpt failure is reported with nbdkit_error() and
 * libckpt's own message (ckpt_last_error), and the NBD error is chosen
 * from the status: EROFS, ENOSPC, EINVAL, ENOTSUP, EPERM or EIO.
 */

#define _POSIX_C_SOURCE 200809L /* pthread_rwlock_t under -std=c11 */
#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

#include <errno.h>
#include <pthread.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nbdkit-plugin.h>

#include "libckpt.h"

/* Configuration (set before .get_ready, read-only afterwards). */
static char *file;              /* absolute path, from nbdkit_realpath */
static char *vm_dir;            /* vm=DIR, absolute path */
static bool readonly_param;     /* readonly=true */

/* One export: a shared disk handle and its facts. */
struct export {
    ckpt_disk *disk;
    uint64_t size;
    bool read_only;
    uint32_t sector_size;       /* logical sector size of the disk */
    /* A changed-since export (one per connection, freed by .close): the
     * changed ranges, sorted and coalesced; NULL for a disk's export. */
    ckpt_range *changes;
    size_t change_count;
    bool per_connection;
};

/* The exports (set in .get_ready, freed in .unload): one in file mode,
 * one per VM disk in VM mode. */
static struct export *exports_tab;
static size_t export_count;

/* The held VM in VM mode (NULL in file mode). */
static ckpt_vm *vm;
static bool control_served;

/* Exclusive for unaligned changes, shared for aligned ones (see above). */
static pthread_rwlock_t rmw_lock = PTHREAD_RWLOCK_INITIALIZER;

static bool aligned(const struct export *e, uint64_t offset, uint64_t count) {
    return offset % e->sector_size == 0 && count % e->sector_size == 0;
}

/* Take the lock for a change of [offset, offset + count) of export e. */
static void lock_range(const struct export *e, uint64_t offset, uint64_t count) {
    if (aligned(e, offset, count)) {
        pthread_rwlock_rdlock(&rmw_lock);
    } else {
        pthread_rwlock_wrlock(&rmw_lock);
    }
}

static void unlock_range(void) {
    pthread_rwlock_unlock(&rmw_lock);
}

/* An errno value for a libckpt status (what the NBD client will see). */
static int status_errno(ckpt_status s) {
    switch (s) {
    case CKPT_STATUS_READ_ONLY:
        return EROFS;
    case CKPT_STATUS_NO_SPACE:
        return ENOSPC;
    case CKPT_STATUS_OUT_OF_RANGE:
    case CKPT_STATUS_INVALID_ARGUMENT:
    case CKPT_STATUS_NULL_POINTER:
        return EINVAL;
    case CKPT_STATUS_UNSUPPORTED:
        return ENOTSUP;
    case CKPT_STATUS_PERMISSION_DENIED:
        return EPERM;
    default:
        return EIO;
    }
}

/*
 * Report a failed libckpt call: nbdkit_error with the operation, the
 * status name and libckpt's message (of this thread), and the NBD error.
 * Returns -1, for `return fail(...)`.
 */
static int fail(const char *what, ckpt_status s) {
    char msg[1024];
    ckpt_status m = ckpt_last_error(msg, sizeof msg, NULL);
    if (m != CKPT_STATUS_OK && m != CKPT_STATUS_BUFFER_TOO_SMALL) {
        msg[0] = '\0';
    }
    nbdkit_error("ckpt: %s: %s: %s", what, ckpt_status_name(s), msg);
    nbdkit_set_error(status_errno(s));
    return -1;
}

static void ckpt_unload(void) {
    if (vm != NULL) {
        /* The live handles are borrowed: ckpt_vm_close flushes and closes
         * them. Stop the channel first, so no request runs on a closing
         * VM. */
        if (control_served) {
            ckpt_status s = ckpt_vm_stop_control(vm);
            if (s != CKPT_STATUS_OK) {
                fail("stop the control channel", s);
            }
            control_served = false;
        }
        ckpt_status s = ckpt_vm_close(vm);
        vm = NULL;
        if (s != CKPT_STATUS_OK) {
            fail("close the VM (writes since the last flush may be lost)", s);
        }
    } else {
        for (size_t i = 0; i < export_count; i++) {
            if (exports_tab[i].disk != NULL) {
                ckpt_status s = ckpt_disk_close(exports_tab[i].disk);
                if (s != CKPT_STATUS_OK) {
                    fail("close (writes since the last flush may be lost)", s);
                }
            }
        }
    }
    free(exports_tab);
    exports_tab = NULL;
    export_count = 0;
    free(file);
    file = NULL;
    free(vm_dir);
    vm_dir = NULL;
}

static int ckpt_config(const char *key, const char *value) {
    if (strcmp(key, "file") == 0) {
        free(file);
        file = nbdkit_realpath(value);
        return file == NULL ? -1 : 0;
    }
    if (strcmp(key, "vm") == 0) {
        free(vm_dir);
        vm_dir = nbdkit_realpath(value);
        return vm_dir == NULL ? -1 : 0;
    }
    if (strcmp(key, "readonly") == 0) {
        int r = nbdkit_parse_bool(value);
        if (r == -1) {
            return -1;
        }
        readonly_param = r != 0;
        return 0;
    }
    nbdkit_error("ckpt: unknown parameter '%s'", key);
    return -1;
}

static int ckpt_config_complete(void) {
    if (file != NULL && vm_dir != NULL) {
        nbdkit_error("ckpt: file= and vm= cannot be used together: serve one disk "
                     "(file=DISK.vhdx) or a VM's disks (vm=DIR)");
        return -1;
    }
    if (file == NULL && vm_dir == NULL) {
        nbdkit_error("ckpt: the file or vm parameter is required (file=DISK.vhdx "
                     "or vm=DIR)");
        return -1;
    }
    return 0;
}

#define ckpt_config_help                                                     \
    "file=<DISK>         The VHDX, or the differencing AVHDX at the top of\n" \
    "                    a chain, to serve (one export).\n"                   \
    "vm=<DIR>            A VM folder: serve each of its disks as export\n"   \
    "                    \"0\", \"1\", ... (\"\" is disk 0), live, and offer\n"  \
    "                    its control channel (one of file= or vm=).\n"       \
    "readonly=true       file=: open the file read-only (never written);\n" \
    "                    vm=: clients cannot write (checkpoints still can)."

static void ckpt_dump_plugin(void) {
    printf("libckpt_version=%s\n", ckpt_version());
    printf("libckpt_header_version=%s\n", CKPT_VERSION_STRING);
}

/* Fill e from its open disk handle; `what` names it in messages. */
static int fill_export(struct export *e, const char *what) {
    ckpt_disk_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    ckpt_status s = ckpt_disk_get_info(e->disk, &info);
    if (s != CKPT_STATUS_OK) {
        return fail("get info", s);
    }
    if (info.virtual_size > INT64_MAX) {
        nbdkit_error("ckpt: %s: virtual size %" PRIu64 " is too large for NBD", what,
                     info.virtual_size);
        return -1;
    }
    e->size = info.virtual_size;
    e->read_only = info.read_only || readonly_param;
    e->sector_size = info.logical_sector_size != 0 ? info.logical_sector_size : 512;
    size_t depth = 0;
    if (ckpt_disk_chain_length(e->disk, &depth) == CKPT_STATUS_OK) {
        nbdkit_debug("ckpt: %s: %" PRIu64 " bytes, %zu file(s) in the chain, %s", what,
                     e->size, depth, e->read_only ? "read-only" : "read-write");
    }
    return 0;
}

static int get_ready_file(void) {
    exports_tab = calloc(1, sizeof *exports_tab);
    if (exports_tab == NULL) {
        nbdkit_error("ckpt: out of memory");
        return -1;
    }
    uint32_t flags = readonly_param ? CKPT_OPEN_READ_ONLY : CKPT_OPEN_READ_WRITE;
    ckpt_status s = ckpt_disk_open(file, flags, &exports_tab[0].disk);
    if (s != CKPT_STATUS_OK) {
        return fail(file, s);
    }
    export_count = 1;
    return fill_export(&exports_tab[0], file);
}

static int get_ready_vm(void) {
    ckpt_status s = ckpt_vm_open(vm_dir, &vm);
    if (s != CKPT_STATUS_OK) {
        return fail(vm_dir, s);
    }
    ckpt_vm_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    s = ckpt_vm_get_info(vm, &info);
    if (s != CKPT_STATUS_OK) {
        return fail("VM info", s);
    }
    if (info.disk_count == 0) {
        nbdkit_error("ckpt: %s: the VM has no disks to serve", vm_dir);
        return -1;
    }
    exports_tab = calloc(info.disk_count, sizeof *exports_tab);
    if (exports_tab == NULL) {
        nbdkit_error("ckpt: out of memory");
        return -1;
    }
    for (size_t i = 0; i < info.disk_count; i++) {
        char what[64];
        snprintf(what, sizeof what, "disk %zu", i);
        s = ckpt_vm_disk(vm, i, &exports_tab[i].disk);
        if (s != CKPT_STATUS_OK) {
            return fail(what, s);
        }
        export_count = i + 1;
        if (fill_export(&exports_tab[i], what) == -1) {
            return -1;
        }
    }
    nbdkit_debug("ckpt: %s: %zu disk(s)", vm_dir, export_count);
    return 0;
}

/* The control channel's threads are started after nbdkit forked into the
 * background (threads do not survive a fork: started in .get_ready, the
 * channel's socket would accept connections nobody answers). */
static int ckpt_after_fork(void) {
    if (vm == NULL) {
        return 0;
    }
    ckpt_status s = ckpt_vm_serve_control(vm, NULL);
    if (s != CKPT_STATUS_OK) {
        return fail("serve the control channel", s);
    }
    control_served = true;
    nbdkit_debug("ckpt: %s: control channel offered", vm_dir);
    return 0;
}

static int ckpt_get_ready(void) {
    ckpt_status s = CKPT_VERSION_CHECK();
    if (s != CKPT_STATUS_OK) {
        return fail("version check", s);
    }
    return vm_dir != NULL ? get_ready_vm() : get_ready_file();
}

/* The exports: in VM mode "0", "1", ... (and "" for disk 0, not listed);
 * in file mode the default export only. */
static int ckpt_list_exports(int readonly, int is_tls, struct nbdkit_exports *exports) {
    (void)readonly;
    (void)is_tls;
    if (vm == NULL) {
        return nbdkit_add_export(exports, "", NULL);
    }
    for (size_t i = 0; i < export_count; i++) {
        char name[32];
        char desc[48];
        snprintf(name, sizeof name, "%zu", i);
        snprintf(desc, sizeof desc, "VM disk %zu", i);
        if (nbdkit_add_export(exports, name, desc) == -1) {
            return -1;
        }
    }
    return 0;
}

/* The export a name selects, or NULL (with the error set). */
static struct export *lookup_export(const char *name) {
    if (name == NULL || name[0] == '\0') {
        return &exports_tab[0];
    }
    if (vm != NULL) {
        size_t i = 0;
        const char *p = name;
        while (*p >= '0' && *p <= '9' && i <= export_count) {
            i = i * 10 + (size_t)(*p - '0');
            p++;
        }
        /* Decimal without leading zeros ("0" itself is fine). */
        if (*p == '\0' && (name[0] != '0' || name[1] == '\0') && i < export_count) {
            return &exports_tab[i];
        }
        nbdkit_error("ckpt: no export '%s': the VM's exports are \"0\" .. \"%zu\"", name,
                     export_count - 1);
    } else {
        nbdkit_error("ckpt: no export '%s': only the default export \"\" is served", name);
    }
    nbdkit_set_error(ENOENT);
    return NULL;
}

#define CHANGED_SINCE "ckpt:changed-since:"

/* The most one .extents call maps (see ckpt_extents). */
#define MAX_MAP (UINT64_C(1) << 30)

/* Whether `name` is a changed-since export: sets *disk and *ref. */
static bool changed_since_name(const char *name, size_t *disk, const char **ref) {
    size_t k = 0;
    const char *p = name;
    if (*p >= '0' && *p <= '9') {
        while (*p >= '0' && *p <= '9' && k <= export_count) {
            k = k * 10 + (size_t)(*p - '0');
            p++;
        }
        if (*p != ':') {
            return false;
        }
        p++;
    }
    if (strncmp(p, CHANGED_SINCE, strlen(CHANGED_SINCE)) != 0) {
        return false;
    }
    *disk = k;
    *ref = p + strlen(CHANGED_SINCE);
    return true;
}

/* A changed-since export of disk k since ref, for one connection. */
static struct export *open_changes(size_t k, const char *ref) {
    if (k >= export_count || ref[0] == '\0') {
        nbdkit_error("ckpt: export '%s': give " CHANGED_SINCE "REF (disk 0) or "
                     "K:" CHANGED_SINCE "REF with K below %zu", nbdkit_export_name(),
                     export_count);
        nbdkit_set_error(ENOENT);
        return NULL;
    }
    ckpt_vm_changes *it = NULL;
    ckpt_status s;
    /* One call at a time per VM handle: the control channel may be busy. */
    for (int tries = 0;; tries++) {
        s = ckpt_vm_changes_open(vm, ref, NULL, k, &it);
        if (s != CKPT_STATUS_BUSY || tries >= 500) {
            break;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (s != CKPT_STATUS_OK) {
        fail("changes since REF", s);
        return NULL;
    }
    struct export *e = calloc(1, sizeof *e);
    size_t cap = 0;
    bool more = true;
    while (e != NULL) {
        ckpt_range r;
        s = ckpt_vm_changes_next(it, &r, &more);
        if (s != CKPT_STATUS_OK || !more) {
            break;
        }
        if (e->change_count == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            ckpt_range *n = realloc(e->changes, ncap * sizeof *n);
            if (n == NULL) {
                s = CKPT_STATUS_IO;
                break;
            }
            e->changes = n;
            cap = ncap;
        }
        e->changes[e->change_count++] = r;
    }
    ckpt_vm_changes_free(it);
    if (e == NULL || s != CKPT_STATUS_OK) {
        if (e != NULL) {
            free(e->changes);
            free(e);
        }
        nbdkit_error("ckpt: changes since '%s': out of memory", ref);
        nbdkit_set_error(ENOMEM);
        return NULL;
    }
    e->disk = exports_tab[k].disk;
    e->size = exports_tab[k].size;
    e->sector_size = exports_tab[k].sector_size;
    e->read_only = true;
    e->per_connection = true;
    nbdkit_debug("ckpt: disk %zu: %zu changed range(s) since '%s'", k, e->change_count, ref);
    return e;
}

/* A connection's handle is the export it chose: a disk's export is shared
 * and never freed; a changed-since export is the connection's own. */
static void *ckpt_open(int readonly) {
    (void)readonly;
    const char *name = nbdkit_export_name();
    size_t k;
    const char *ref;
    if (vm != NULL && name != NULL && changed_since_name(name, &k, &ref)) {
        return open_changes(k, ref);
    }
    return lookup_export(name);
}

static void ckpt_close(void *handle) {
    struct export *e = handle;
    if (e != NULL && e->per_connection) {
        free(e->changes);
        free(e);
    }
}

/* Block status of a changed-since export: changed ranges as data, the
 * rest as holes not said to read as zeros. */
static int changes_extents(const struct export *ex, uint64_t offset, uint64_t size,
                           uint32_t flags, struct nbdkit_extents *extents) {
    /* The first range that ends after offset (binary search). */
    size_t lo = 0, hi = ex->change_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const ckpt_range *r = &ex->changes[mid];
        if (r->offset + r->length <= offset) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    uint64_t end = size - offset > MAX_MAP ? offset + MAX_MAP : size;
    uint64_t pos = offset;
    for (size_t i = lo; pos < end; i++) {
        uint64_t start = i < ex->change_count ? ex->changes[i].offset : end;
        if (start > end) {
            start = end;
        }
        if (start > pos) {
            if (nbdkit_add_extent(extents, pos, start - pos, NBDKIT_EXTENT_HOLE) == -1) {
                return -1;
            }
            pos = start;
            if (flags & NBDKIT_FLAG_REQ_ONE) {
                break;
            }
        }
        if (i >= ex->change_count || pos >= end) {
            break;
        }
        uint64_t stop = ex->changes[i].offset + ex->changes[i].length;
        if (stop > end) {
            stop = end;
        }
        if (stop > pos) {
            if (nbdkit_add_extent(extents, pos, stop - pos, 0) == -1) {
                return -1;
            }
            pos = stop;
            if (flags & NBDKIT_FLAG_REQ_ONE) {
                break;
            }
        }
    }
    return 0;
}

/* nbdkit calls .get_size once per connection (after .open) and keeps the
 * answer for the whole connection. It is asked of the disk handle each
 * time, not taken from .get_ready: in VM mode the live handle's size
 * changes when libckpt resizes the disk (LiveDisk::resize, in one pause),
 * so a connection made after a resize sees the new size; a connection
 * made before keeps the old one until it reconnects, and its requests past
 * a smaller end fail (EINVAL, libckpt's "outside the virtual disk"). */
static uint64_t live_size(const struct export *e) {
    ckpt_disk_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    if (ckpt_disk_get_info(e->disk, &info) != CKPT_STATUS_OK || info.virtual_size > INT64_MAX) {
        return e->size;
    }
    return info.virtual_size;
}

static int64_t ckpt_get_size(void *handle) {
    return (int64_t)live_size(handle);
}

static int ckpt_can_write(void *handle) {
    const struct export *e = handle;
    return !e->read_only;
}

static int ckpt_can_flush(void *handle) {
    const struct export *e = handle;
    return !e->read_only;
}

static int ckpt_can_trim(void *handle) {
    const struct export *e = handle;
    return !e->read_only;
}

static int ckpt_can_zero(void *handle) {
    const struct export *e = handle;
    return !e->read_only;
}

/* A zero request may write zeros, which is not faster than a write. */
static int ckpt_can_fast_zero(void *handle) {
    (void)handle;
    return 0;
}

static int ckpt_can_fua(void *handle) {
    const struct export *e = handle;
    return e->read_only ? NBDKIT_FUA_NONE : NBDKIT_FUA_NATIVE;
}

static int ckpt_can_multi_conn(void *handle) {
    (void)handle;
    return 1;
}

static int flush_if_fua(const struct export *e, uint32_t flags) {
    if (flags & NBDKIT_FLAG_FUA) {
        ckpt_status s = ckpt_disk_flush(e->disk);
        if (s != CKPT_STATUS_OK) {
            return fail("flush (FUA)", s);
        }
    }
    return 0;
}

static int ckpt_pread(void *handle, void *buf, uint32_t count, uint64_t offset,
                      uint32_t flags) {
    const struct export *e = handle;
    (void)flags;
    ckpt_status s = ckpt_disk_read(e->disk, buf, count, offset);
    return s == CKPT_STATUS_OK ? 0 : fail("read", s);
}

static int ckpt_pwrite(void *handle, const void *buf, uint32_t count, uint64_t offset,
                       uint32_t flags) {
    const struct export *e = handle;
    lock_range(e, offset, count);
    ckpt_status s = ckpt_disk_write(e->disk, buf, count, offset);
    unlock_range();
    if (s != CKPT_STATUS_OK) {
        return fail("write", s);
    }
    return flush_if_fua(e, flags);
}

static int ckpt_flush(void *handle, uint32_t flags) {
    const struct export *e = handle;
    (void)flags;
    ckpt_status s = ckpt_disk_flush(e->disk);
    return s == CKPT_STATUS_OK ? 0 : fail("flush", s);
}

static int ckpt_trim(void *handle, uint32_t count, uint64_t offset, uint32_t flags) {
    const struct export *e = handle;
    lock_range(e, offset, count);
    ckpt_status s = ckpt_disk_trim(e->disk, offset, count);
    unlock_range();
    if (s != CKPT_STATUS_OK) {
        return fail("trim", s);
    }
    return flush_if_fua(e, flags);
}

static int ckpt_can_extents(void *handle) {
    (void)handle;
    return 1;
}

/* The most one .extents call maps (from the requested offset), and the
 * room for extents. ckpt_disk_extents gives at most one extent per block
 * (1 MiB at the smallest), so MAX_EXTENTS covers any 255 MiB, and 1 GiB
 * unless data and holes alternate in blocks smaller than 4 MiB; then the
 * range is halved until it fits. */
#define MAX_EXTENTS 256

static int ckpt_extents(void *handle, uint32_t count, uint64_t offset, uint32_t flags,
                        struct nbdkit_extents *extents) {
    const struct export *ex = handle;
    (void)count; /* mapping past count is allowed and saves round trips */
    uint64_t size = live_size(ex);
    if (offset >= size) {
        nbdkit_error("ckpt: extents: offset %" PRIu64 " is past the end", offset);
        nbdkit_set_error(EINVAL);
        return -1;
    }
    if (ex->per_connection) {
        return changes_extents(ex, offset, size, flags, extents);
    }
    uint64_t len = size - offset;
    if (len > MAX_MAP) {
        len = MAX_MAP;
    }
    ckpt_extent e[MAX_EXTENTS];
    size_t n = 0;
    ckpt_status s;
    while ((s = ckpt_disk_extents(ex->disk, offset, len, e, MAX_EXTENTS, &n)) ==
               CKPT_STATUS_BUFFER_TOO_SMALL &&
           len > 1) {
        len /= 2;
    }
    if (s != CKPT_STATUS_OK) {
        return fail("extents", s);
    }
    for (size_t i = 0; i < n; i++) {
        uint32_t type = 0;
        if (e[i].flags & CKPT_EXTENT_HOLE) {
            type |= NBDKIT_EXTENT_HOLE;
        }
        if (e[i].flags & CKPT_EXTENT_ZERO) {
            type |= NBDKIT_EXTENT_ZERO;
        }
        if (nbdkit_add_extent(extents, e[i].offset, e[i].length, type) == -1) {
            return -1; /* nbdkit has reported the error */
        }
        if (flags & NBDKIT_FLAG_REQ_ONE) {
            break; /* the client wants only the extent at offset */
        }
    }
    return 0;
}

/* Zeros for writing zeroes when the client does not allow a trim. */
static const uint8_t zeros[64 * 1024];

static int ckpt_zero(void *handle, uint32_t count, uint64_t offset, uint32_t flags) {
    const struct export *e = handle;
    ckpt_status s = CKPT_STATUS_OK;
    lock_range(e, offset, count);
    if (flags & NBDKIT_FLAG_MAY_TRIM) {
        /* A trimmed range reads as zeros, also over a parent with data. */
        s = ckpt_disk_trim(e->disk, offset, count);
    } else {
        while (count > 0 && s == CKPT_STATUS_OK) {
            uint32_t n = count < sizeof zeros ? count : (uint32_t)sizeof zeros;
            s = ckpt_disk_write(e->disk, zeros, n, offset);
            count -= n;
            offset += n;
        }
    }
    unlock_range();
    if (s != CKPT_STATUS_OK) {
        return fail(flags & NBDKIT_FLAG_MAY_TRIM ? "zero (trim)" : "zero (write)", s);
    }
    return flush_if_fua(e, flags);
}

static struct nbdkit_plugin plugin = {
    .name = "ckpt",
    .longname = "nbdkit libckpt plugin (Hyper-V VHDX and AVHDX chains)",
    .version = CKPT_VERSION_STRING,
    .description = "Serve a VHDX, a differencing AVHDX with its chain, or the disks "
                   "of a VM folder (live, with its control channel), through libckpt",
    .unload = ckpt_unload,
    .config = ckpt_config,
    .config_complete = ckpt_config_complete,
    .config_help = ckpt_config_help,
    .magic_config_key = "file",
    .dump_plugin = ckpt_dump_plugin,
    .get_ready = ckpt_get_ready,
    .after_fork = ckpt_after_fork,
    .list_exports = ckpt_list_exports,
    .open = ckpt_open,
    .close = ckpt_close,
    .get_size = ckpt_get_size,
    .can_write = ckpt_can_write,
    .can_flush = ckpt_can_flush,
    .can_trim = ckpt_can_trim,
    .can_zero = ckpt_can_zero,
    .can_fast_zero = ckpt_can_fast_zero,
    .can_fua = ckpt_can_fua,
    .can_multi_conn = ckpt_can_multi_conn,
    .can_extents = ckpt_can_extents,
    .pread = ckpt_pread,
    .pwrite = ckpt_pwrite,
    .flush = ckpt_flush,
    .trim = ckpt_trim,
    .zero = ckpt_zero,
    .extents = ckpt_extents,
    .errno_is_preserved = 0,
};

NBDKIT_REGISTER_PLUGIN(plugin)
