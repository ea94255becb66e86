/*
 * libckpt — Hyper-V virtual disks (VHDX), differencing chains and VM
 * checkpoint trees from C.
 *
 * Link with libckpt.a (plus -lpthread -ldl -lm on Linux) or libckpt.so;
 * after scripts/install.sh, `pkg-config --cflags --libs libckpt` gives the
 * flags.
 *
 * API conventions
 * ---------------
 * Names: functions are ckpt_<object>_<verb> (ckpt_disk_* for disks and
 *   chains, ckpt_vm_* for VMs and their checkpoints); types are ckpt_<name>;
 *   constants are CKPT_<NAME>. A handle is the first argument; out-
 *   parameters (out, out_len, out_count, out_index) are the last ones.
 *
 * Statuses: every function that can fail returns a ckpt_status. 0
 *   (CKPT_STATUS_OK) is success; the other numbers are stable and never
 *   reused. Treat an unknown non-zero value as a failure. ckpt_status_name()
 *   gives a status's name.
 *
 * Last error: after a failure, ckpt_last_error() copies a message describing
 *   it (which file, which structure, which offset) into a buffer you own.
 *   The message is per thread and belongs to the most recent call on that
 *   thread that returned a ckpt_status; a call that returns CKPT_STATUS_OK
 *   clears it.
 *
 * Out-parameters are written only on success. Every pointer argument is
 *   checked: NULL where a pointer is required gives CKPT_STATUS_NULL_POINTER,
 *   never a crash.
 *
 * Buffers are (pointer, length) pairs; with length 0 the pointer is never
 *   touched and may be NULL.
 *
 * String getters take (char *buf, size_t len, size_t *out_len): *out_len
 *   (out_len may be NULL) receives the string's length without its NUL.
 *   When len is at least that + 1, the string and a NUL are written;
 *   otherwise buf is not touched and the result is
 *   CKPT_STATUS_BUFFER_TOO_SMALL (call with len 0 to learn the length).
 *   Array getters (ckpt_disk_changed_ranges, ckpt_disk_extents) work the same way with a
 *   capacity and a count.
 *
 * Strings passed in are UTF-8 and NUL-terminated; they are only borrowed for
 *   the duration of the call. Strings returned by the library (version,
 *   status names) are static: never free them.
 *
 * Paths are bytes, as Linux file names are: every path argument of a disk
 *   function (ckpt_disk_*) takes any bytes but NUL, UTF-8 or not, and path
 *   getters (ckpt_disk_chain_path, ckpt_vm_*_path, ...) return the bytes the
 *   file system holds. A VM keeps its paths in vm.json and its journal as
 *   JSON text, so the paths of a VM (its folder, its disks, its checkpoint
 *   location, an export folder) must be UTF-8: others are refused with
 *   CKPT_STATUS_INVALID_ARGUMENT before anything is made.
 *   JSON outputs (the *_json getters) carry a path that is not UTF-8 in a
 *   lossy form (each invalid byte as U+FFFD): use the path getters for such
 *   paths. Every path a getter returns is absolute.
 *
 * Argument order: a function that takes a buffer and a position on the disk
 *   takes the buffer first, as its (pointer, length) pair, and the position
 *   last: ckpt_disk_read(disk, buf, len, offset), ckpt_disk_write, and from
 *   0.2 on ckpt_disk_readv(disk, iov, iovcnt, offset) and ckpt_disk_writev,
 *   as pread/preadv. A function that takes a range of the disk without a
 *   buffer takes (offset, length): ckpt_disk_trim(disk, offset, len); and
 *   ckpt_disk_extents(disk, offset, len, buf, cap, out_count), whose output
 *   array follows the range. New functions follow these two rules.
 *
 * Checkpoints: an index (0 .. ckpt_vm_checkpoint_count - 1) holds only until
 *   the next change through the handle; a checkpoint's id
 *   (ckpt_vm_checkpoint_id) holds for its whole life and is never reused, and
 *   the ..._by_id calls take it. The listing is the whole tree, hidden branch
 *   points included and marked (ckpt_checkpoint_info.hidden).
 *
 * Ownership: a handle (ckpt_disk *, ckpt_vm *) comes from a create/open
 *   function and is given back exactly once to its close function, which
 *   accepts NULL.
 *
 * Versioned structs (ckpt_create_options, ckpt_child_options, ckpt_vm_spec,
 *   ckpt_hooks in; ckpt_disk_info, ckpt_vm_info, ckpt_checkpoint_info out)
 *   start with a uint32_t struct_size that the caller sets to sizeof(the
 *   struct), so that later versions of the library can add fields at the
 *   end without breaking programs built against this header. Zero every
 *   other field of an input struct first: 0 and NULL mean "the default".
 *
 * Enumerations taken as input (checkpoint type, VM state) are passed as
 *   uint32_t; a value the library does not know is refused with
 *   CKPT_STATUS_INVALID_ARGUMENT.
 *
 * Callbacks (progress, and the ckpt_hooks of checkpoint operations) are
 *   plain C function pointers with a void *user argument, called on the
 *   calling thread during the call that received them. A progress callback
 *   cancels by returning non-zero (the call then returns
 *   CKPT_STATUS_CANCELLED). A callback must return normally: never longjmp
 *   out of it, never let a C++ exception escape it.
 *
 * Panics: a bug inside libckpt never unwinds into C and never aborts; the
 *   function returns CKPT_STATUS_PANIC and the last error says where.
 *
 * Versions: CKPT_VERSION_MAJOR/MINOR/PATCH and CKPT_VERSION_STRING give the
 *   version of this header; ckpt_version() and ckpt_version_major/minor/
 *   patch() the version of the library linked at run time. Call
 *   CKPT_VERSION_CHECK() once at start-up: it returns CKPT_STATUS_OK when
 *   the two are compatible (see ckpt_version_check).
 *
 * Threads: the library has no global state except the per-thread last
 *   error, a record of the files this process holds locked (used only
 *   to word BUSY messages) and the SIGBUS handler below. Each handle type
 *   states what may run concurrently on one handle; a ckpt_disk allows
 *   concurrent reads and writes from several threads; a ckpt_vm takes one
 *   call at a time (an overlapping call on the same handle fails with
 *   CKPT_STATUS_BUSY).
 *
 * Signals: files opened read-only (a read-only disk, every parent of an
 *   open chain) are read through a shared memory mapping. A page of it that
 *   cannot be read (an I/O error, a file cut shorter by another program)
 *   raises SIGBUS, so the first such open installs a SIGBUS handler
 *   (sigaction, SA_SIGINFO | SA_ONSTACK) for the process: a fault inside a
 *   mapping being read turns into the answer pread(2) gives (an error, or
 *   zeros past the new end); any other SIGBUS is passed to the handler that
 *   was installed before, or ends the process as it would have. A program
 *   that installs its own SIGBUS handler after opening a disk replaces this
 *   one: set CKPT_MMAP=0 in the environment before the first open to read
 *   with pread(2) only (no mapping, no handler).
 *
 * Locks: every image file the library opens is locked with flock(2),
 *   without waiting: shared while it is open read-only (a read-only disk,
 *   and every parent of an open chain), exclusive while it is open for
 *   writing (the top of a read-write chain; a merge's destination and the
 *   files it re-points). Readers coexist; a writer excludes everyone. So a
 *   file another handle or process has open for writing cannot be opened,
 *   checkpointed, given a child, merged, flattened or re-pointed, and a
 *   file an open chain uses as a parent cannot be opened for writing:
 *   these fail with CKPT_STATUS_BUSY, and the last error names the file and
 *   says whether another handle in this process or another process holds
 *   it. Two handles in one process conflict like two processes. Checkpoint
 *   operations check the disks they will change before their first step,
 *   so a refusal changes nothing. A refused lock is retried for about
 *   0.2 s (a child being forked holds the parent's descriptors until it
 *   execs; the library's descriptors are close-on-exec). The locks are
 *   advisory: programs that do not use flock (QEMU uses fcntl locks) are
 *   not kept out, and a process that forks without exec keeps the locks of
 *   the descriptors it inherited.
 */


#ifndef LIBCKPT_H
#define LIBCKPT_H

/* Generated by cbindgen from src/ffi/ (see build.rs). Do not edit by hand. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * The version of libckpt this header belongs to (semantic versioning).
 * ckpt_version_major/minor/patch() and ckpt_version() give the version of
 * the library actually linked; CKPT_VERSION_CHECK() compares the two.
 */
#define CKPT_VERSION_MAJOR 0
#define CKPT_VERSION_MINOR 2
#define CKPT_VERSION_PATCH 0
#define CKPT_VERSION_STRING "0.2.0"

/*
 * CKPT_VERSION_CHECK(): CKPT_STATUS_OK when the linked library can be used
 * by a program compiled with this header, otherwise
 * CKPT_STATUS_UNSUPPORTED (see ckpt_version_check). Call it once at start-up.
 */
#define CKPT_VERSION_CHECK() ckpt_version_check(CKPT_VERSION_MAJOR, CKPT_VERSION_MINOR)


/**
 * `mode` of `ckpt_disk_compact`: give back the space of blocks that no
 * longer hold data (trimmed), move the others down, shrink the file.
 */
#define CKPT_COMPACT_QUICK 0

/**
 * `mode` of `ckpt_disk_compact`: as `CKPT_COMPACT_QUICK`, and also give
 * back every block whose data reads as all zeros (in a differencing disk
 * such a block keeps hiding the parent's data).
 */
#define CKPT_COMPACT_FULL 1

/**
 * `flags` of `ckpt_disk_open`: open for reading only (the file is never
 * written; a dirty log is replayed in memory).
 */
#define CKPT_OPEN_READ_ONLY 0

/**
 * `flags` of `ckpt_disk_open`: open for reading and writing (a dirty log
 * is replayed into the file).
 */
#define CKPT_OPEN_READ_WRITE 1

/**
 * `ckpt_create_options.flags`: allocate every block now (a fixed disk).
 * Without it the disk is dynamic (blocks are allocated on first write).
 */
#define CKPT_CREATE_FIXED 1

/**
 * `ckpt_create_options.flags` of `ckpt_disk_create`: make a legacy VHD
 * (fixed with `CKPT_CREATE_FIXED`, else dynamic) instead of a VHDX. Its
 * sectors are 512 bytes and it has no log: `logical_sector_size`,
 * `physical_sector_size` and `log_size` must be 0; `block_size` 0 means
 * 2 MiB (a power of two from 4 KiB to 256 MiB otherwise). The virtual
 * size is at most 2040 GiB.
 */
#define CKPT_CREATE_VHD 2

/**
 * `ckpt_extent.flags`: no file of the chain holds data for the range (no
 * space is allocated for it). Always set together with
 * `CKPT_EXTENT_ZERO`. The same value as NBD's `NBD_STATE_HOLE` (and
 * nbdkit's `NBDKIT_EXTENT_HOLE`).
 */
#define CKPT_EXTENT_HOLE 1

/**
 * `ckpt_extent.flags`: the range reads as zeros. The same value as NBD's
 * `NBD_STATE_ZERO` (and nbdkit's `NBDKIT_EXTENT_ZERO`). Only set for
 * holes: an allocated range that happens to hold zeros has no flag.
 */
#define CKPT_EXTENT_ZERO 2

/**
 * The most buffers one vectored call takes (as Linux's `IOV_MAX`).
 */
#define CKPT_IOV_MAX 1024

/**
 * `ckpt_vm_info.role`: no role.
 */
#define CKPT_VM_ROLE_NONE 0

/**
 * `ckpt_vm_info.role`: an Active Directory domain controller.
 */
#define CKPT_VM_ROLE_DOMAIN_CONTROLLER 1

/**
 * `ckpt_vm_info.role`: a node of a failover cluster.
 */
#define CKPT_VM_ROLE_CLUSTER_MEMBER 2

/**
 * `ckpt_vm_info.role`: a VM replicated to or from another host.
 */
#define CKPT_VM_ROLE_REPLICATED 3

/**
 * `ckpt_rbd_options.flags`: remove the snapshots of checkpoints deleted
 * locally since an earlier export (`--prune`).
 */
#define CKPT_RBD_PRUNE 1

/**
 * The per-VM checkpoint setting (`ckpt_vm_spec.checkpoint_type`,
 * `ckpt_vm_set_checkpoint_type`, `ckpt_vm_info.checkpoint_type`,
 * `ckpt_checkpoint_info.requested`). Where a function takes it as a
 * `uint32_t`, other values are refused with
 * `CKPT_STATUS_INVALID_ARGUMENT`.
 */
enum ckpt_checkpoint_type
#ifdef __cplusplus
  : uint32_t
#endif // __cplusplus
 {
    /**
     * No checkpoints can be taken.
     */
    CKPT_CHECKPOINT_TYPE_DISABLED = 1,
    /**
     * Disks, configuration and memory state (from the `save_memory` hook).
     */
    CKPT_CHECKPOINT_TYPE_STANDARD = 2,
    /**
     * Quiesce the guest (the `quiesce` hook), keep no memory state; when
     * quiescing fails, take a standard checkpoint instead and record why.
     * The default.
     */
    CKPT_CHECKPOINT_TYPE_PRODUCTION = 3,
    /**
     * Quiesce the guest or fail.
     */
    CKPT_CHECKPOINT_TYPE_PRODUCTION_ONLY = 4,
};
#ifndef __cplusplus
typedef uint32_t ckpt_checkpoint_type;
#endif // __cplusplus

/**
 * The format of a disk's top file, in `ckpt_disk_info.format`.
 */
enum ckpt_disk_format
#ifdef __cplusplus
  : uint32_t
#endif // __cplusplus
 {
    /**
     * VHDX ([MS-VHDX]), also `.avhdx`.
     */
    CKPT_DISK_FORMAT_VHDX = 1,
    /**
     * The legacy VHD (also `.avhd`).
     */
    CKPT_DISK_FORMAT_VHD = 2,
};
#ifndef __cplusplus
typedef uint32_t ckpt_disk_format;
#endif // __cplusplus

/**
 * The kind of a VHDX, in `ckpt_disk_info.kind`.
 */
enum ckpt_disk_kind
#ifdef __cplusplus
  : uint32_t
#endif // __cplusplus
 {
    /**
     * Every block allocated at creation.
     */
    CKPT_DISK_KIND_FIXED = 1,
    /**
     * Blocks allocated on first write.
     */
    CKPT_DISK_KIND_DYNAMIC = 2,
    /**
     * A child of another VHDX (a checkpoint's disk).
     */
    CKPT_DISK_KIND_DIFFERENCING = 3,
};
#ifndef __cplusplus
typedef uint32_t ckpt_disk_kind;
#endif // __cplusplus

/**
 * The result of every fallible libckpt function.
 *
 * `CKPT_STATUS_OK` (0) means success; any other value is a failure, and
 * `ckpt_last_error` then gives a message with the details. The numbers are
 * part of the ABI: they never change and are never reused; new statuses
 * get new numbers. A caller should treat an unknown non-zero value as a
 * generic failure.
 */
enum ckpt_status
#ifdef __cplusplus
  : uint32_t
#endif // __cplusplus
 {
    /**
     * Success.
     */
    CKPT_STATUS_OK = 0,
    /**
     * An argument has a value that is not allowed (a bad size, unknown
     * flags, an empty or non-UTF-8 string, ...).
     */
    CKPT_STATUS_INVALID_ARGUMENT = 1,
    /**
     * A pointer argument that must not be NULL was NULL.
     */
    CKPT_STATUS_NULL_POINTER = 2,
    /**
     * An operating-system I/O error.
     */
    CKPT_STATUS_IO = 3,
    /**
     * A file or directory does not exist.
     */
    CKPT_STATUS_NOT_FOUND = 4,
    /**
     * The image is damaged (bad signature, checksum, field or layout).
     */
    CKPT_STATUS_CORRUPT = 5,
    /**
     * The image or the request uses a feature libckpt does not support.
     */
    CKPT_STATUS_UNSUPPORTED = 6,
    /**
     * A read, write or trim reaches past the end of the virtual disk.
     */
    CKPT_STATUS_OUT_OF_RANGE = 7,
    /**
     * A write, flush or trim on a disk opened read-only.
     */
    CKPT_STATUS_READ_ONLY = 8,
    /**
     * A callback asked to stop.
     */
    CKPT_STATUS_CANCELLED = 9,
    /**
     * The caller's buffer is too small for the whole result.
     */
    CKPT_STATUS_BUFFER_TOO_SMALL = 10,
    /**
     * A bug inside libckpt was caught at the API boundary. The message
     * says where; the handle involved should be closed.
     */
    CKPT_STATUS_PANIC = 11,
    /**
     * The parent of a differencing disk does not match the child's
     * linkage: it was modified, replaced or mounted since the child was made.
     */
    CKPT_STATUS_PARENT_MISMATCH = 12,
    /**
     * The file to create exists already.
     */
    CKPT_STATUS_ALREADY_EXISTS = 13,
    /**
     * The operating system denied access to a file.
     */
    CKPT_STATUS_PERMISSION_DENIED = 14,
    /**
     * Another process is changing the same VM or disk; try again later.
     */
    CKPT_STATUS_BUSY = 15,
    /**
     * Not enough free space on the volume for the operation (nothing was changed).
     */
    CKPT_STATUS_NO_SPACE = 16,
};
#ifndef __cplusplus
typedef uint32_t ckpt_status;
#endif // __cplusplus

/**
 * The kind a checkpoint really is (`ckpt_checkpoint_info.taken`).
 */
enum ckpt_taken_type
#ifdef __cplusplus
  : uint32_t
#endif // __cplusplus
 {
    /**
     * Taken without quiescing; holds memory state when the `save_memory`
     * hook gave one.
     */
    CKPT_TAKEN_TYPE_STANDARD = 1,
    /**
     * The guest was quiesced; no memory state.
     */
    CKPT_TAKEN_TYPE_PRODUCTION = 2,
};
#ifndef __cplusplus
typedef uint32_t ckpt_taken_type;
#endif // __cplusplus

/**
 * The VM's state as the hypervisor reports it (`ckpt_vm_set_state`,
 * `ckpt_vm_info.state`).
 */
enum ckpt_vm_state
#ifdef __cplusplus
  : uint32_t
#endif // __cplusplus
 {
    /**
     * Not running.
     */
    CKPT_VM_STATE_OFF = 1,
    /**
     * Running.
     */
    CKPT_VM_STATE_RUNNING = 2,
    /**
     * Saved: memory state waits to be resumed (after applying a standard
     * checkpoint).
     */
    CKPT_VM_STATE_SAVED = 3,
};
#ifndef __cplusplus
typedef uint32_t ckpt_vm_state;
#endif // __cplusplus

/**
 * An open virtual disk (opaque).
 *
 * Ownership: `ckpt_disk_create` and `ckpt_disk_open` give the caller a
 * handle; the caller gives it back with `ckpt_disk_close`, exactly once.
 *
 * Thread safety: a handle may be used from several threads at the same
 * time. Every function that takes a `ckpt_disk` except `ckpt_disk_close`
 * (read, write, flush, trim, get_info and the chain getters) may run
 * concurrently on one handle, and they run in parallel where they touch
 * different blocks. A flush makes the writes of every thread durable.
 * Overlapping concurrent writes leave, for each byte, the value of one of
 * them, as with a file; with one exception: on a differencing disk
 * (`has_parent`), a write or trim that does not cover whole logical
 * sectors rewrites the rest of its first and last sector with what it
 * read there, so two such calls at the same time that share a sector
 * (even without sharing bytes) may undo one another in that sector.
 * Callers that issue unaligned writes from several threads to a
 * differencing disk serialise them (the nbdkit example plugin does).
 * `ckpt_disk_close` must not run at the same time as, or before, any other
 * call on the same handle.
 *
 * The last error is per thread: after a failed call, call
 * `ckpt_last_error` on the same thread.
 *
 * A handle from `ckpt_vm_disk` is borrowed from its VM: it follows the
 * VM's current state through every checkpoint operation, may be used from
 * any thread while the VM handle runs its own calls (a checkpoint
 * operation pauses its I/O briefly), is valid until `ckpt_vm_close`, and
 * `ckpt_disk_close` refuses it.
 */
typedef struct ckpt_disk ckpt_disk;

/**
 * An open VM folder (opaque): its configuration, checkpoint settings,
 * state and checkpoint tree.
 *
 * Ownership: `ckpt_vm_create` and `ckpt_vm_open` give the caller a handle;
 * the caller gives it back with `ckpt_vm_close`, exactly once. While the
 * handle is open it holds the VM's lock: another process (or another
 * handle) opening the same VM gets `CKPT_STATUS_BUSY`.
 *
 * Thread safety: one call at a time per handle. A call made while another
 * call on the same handle is running (from another thread, or from a
 * callback of the running call) fails with `CKPT_STATUS_BUSY` instead of
 * waiting. `ckpt_vm_close` must not run at the same time as, or before,
 * any other call on the same handle.
 *
 * String getters (names, paths, the JSON views): a call that fails with
 * `CKPT_STATUS_BUFFER_TOO_SMALL` keeps the text it measured for the next
 * call of the same getter with the same arguments, so the size-then-fill
 * idiom never fails, even when ages tick between the two calls (see
 * `ckpt_vm_checkpoints_json`).
 */
typedef struct ckpt_vm ckpt_vm;

/**
 * The changes of one disk between two points of a VM's tree (opaque),
 * read with `ckpt_vm_changes_next`.
 *
 * Ownership: `ckpt_vm_changes_open` gives the caller the iterator; the
 * caller frees it with `ckpt_vm_changes_free`, exactly once. It holds its
 * own copy of the extents: the VM handle may change or close meanwhile.
 *
 * Thread safety: one call at a time per iterator.
 */
typedef struct ckpt_vm_changes ckpt_vm_changes;

/**
 * The stream a `save_memory` hook writes the memory state into (opaque;
 * only valid during that callback).
 */
typedef struct ckpt_writer ckpt_writer;

/**
 * Options of `ckpt_disk_create_child` (a versioned struct, used like
 * `ckpt_create_options`: set `struct_size` to `sizeof(ckpt_child_options)`,
 * everything else to 0, then change what you need; 0 takes the default).
 *
 * The virtual size and the sector sizes always come from the parent.
 */
typedef struct ckpt_child_options {
    /**
     * `sizeof(ckpt_child_options)` as compiled by the caller.
     */
    uint32_t struct_size;
    /**
     * No flags are defined yet: must be 0.
     */
    uint32_t flags;
    /**
     * Block size in bytes: a power of two from 1 MiB to 256 MiB.
     * 0: 2 MiB (as Hyper-V makes checkpoint disks).
     */
    uint32_t block_size;
    /**
     * Log size in bytes, a multiple of 1 MiB. 0: 1 MiB.
     */
    uint32_t log_size;
} ckpt_child_options;

/**
 * A byte range of the virtual disk, filled by `ckpt_disk_changed_ranges`.
 */
typedef struct ckpt_range {
    /**
     * Start in bytes.
     */
    uint64_t offset;
    /**
     * Length in bytes (never 0).
     */
    uint64_t length;
} ckpt_range;

/**
 * A progress callback: `done` of `total` bytes (or units) are finished.
 * Return 0 to go on, any other value to cancel (the operation then stops
 * as soon as it safely can and returns `CKPT_STATUS_CANCELLED`).
 *
 * The callback runs on the calling thread, inside the library call. It
 * must return normally: it must not `longjmp` out, throw a C++ exception
 * or call back into libckpt with the object the running call uses.
 */
typedef int (*ckpt_progress_fn)(uint64_t done, uint64_t total, void *user);

/**
 * Options of `ckpt_disk_create` (a versioned struct).
 *
 * Set `struct_size` to `sizeof(ckpt_create_options)` and every other
 * field to 0 (for example `ckpt_create_options o = { sizeof o };` or
 * `memset` + assignment), then change the fields you need. A field left at
 * 0 takes the default. Fields added in later versions go at the end; the
 * library uses `struct_size` to know which fields the caller has, and
 * rejects (with `CKPT_STATUS_UNSUPPORTED`) a larger struct whose fields
 * unknown to it are not 0.
 */
typedef struct ckpt_create_options {
    /**
     * `sizeof(ckpt_create_options)` as compiled by the caller.
     */
    uint32_t struct_size;
    /**
     * `CKPT_CREATE_*` bits; other bits must be 0.
     */
    uint32_t flags;
    /**
     * Block size in bytes: a power of two from 1 MiB to 256 MiB.
     * 0: 32 MiB.
     */
    uint32_t block_size;
    /**
     * Logical sector size, 512 or 4096. 0: 512.
     */
    uint32_t logical_sector_size;
    /**
     * Physical sector size, 512 or 4096. 0: 4096.
     */
    uint32_t physical_sector_size;
    /**
     * Log size in bytes, a multiple of 1 MiB. 0: 1 MiB.
     */
    uint32_t log_size;
} ckpt_create_options;

/**
 * What `ckpt_disk_compact` did (a versioned output struct).
 *
 * Set `struct_size` to `sizeof(ckpt_compact_report)` before the call.
 * The library writes the fields it knows and sets `struct_size` to the
 * number of bytes it wrote; it writes nothing unless the call succeeds.
 */
typedef struct ckpt_compact_report {
    /**
     * In: `sizeof(ckpt_compact_report)` as compiled by the caller. Out:
     * the number of bytes the library wrote.
     */
    uint32_t struct_size;
    /**
     * The mode it ran in (`CKPT_COMPACT_QUICK` or `CKPT_COMPACT_FULL`).
     */
    int mode;
    /**
     * Blocks whose space was given back (zero blocks in full mode, and
     * entries that held space without data).
     */
    uint64_t blocks_freed;
    /**
     * Blocks (payload and sector bitmap) moved to a lower place.
     */
    uint64_t blocks_moved;
    /**
     * Bytes those moves copied.
     */
    uint64_t bytes_moved;
    /**
     * The file's length before.
     */
    uint64_t bytes_before;
    /**
     * The file's length after.
     */
    uint64_t bytes_after;
} ckpt_compact_report;

/**
 * Facts about an open disk, filled by `ckpt_disk_get_info` (a versioned
 * struct).
 *
 * Set `struct_size` to `sizeof(ckpt_disk_info)` before the call. The
 * library writes the fields it knows that fit in `struct_size` bytes and
 * sets `struct_size` to the number of bytes it wrote; fields past that
 * (from a newer header than the library) are left as they were.
 */
typedef struct ckpt_disk_info {
    /**
     * In: `sizeof(ckpt_disk_info)` as compiled by the caller. Out: the
     * number of bytes the library wrote.
     */
    uint32_t struct_size;
    /**
     * Fixed, dynamic or differencing.
     */
    ckpt_disk_kind kind;
    /**
     * Size of the virtual disk in bytes.
     */
    uint64_t virtual_size;
    /**
     * Size of the file in bytes.
     */
    uint64_t file_size;
    /**
     * Bytes of payload blocks allocated in the file.
     */
    uint64_t allocated_bytes;
    /**
     * Block size in bytes.
     */
    uint32_t block_size;
    /**
     * Logical sector size in bytes (512 or 4096).
     */
    uint32_t logical_sector_size;
    /**
     * Physical sector size in bytes (512 or 4096).
     */
    uint32_t physical_sector_size;
    /**
     * Whether the log held entries to replay when the disk was opened.
     */
    bool log_dirty;
    /**
     * Whether the disk has a parent (it is a differencing disk; also when
     * its file was opened alone, with `ckpt_disk_open_file`).
     */
    bool has_parent;
    /**
     * Whether the handle was opened read-only.
     */
    bool read_only;
    /**
     * Always 0.
     */
    uint8_t reserved;
    /**
     * The virtual disk ID, in the byte order of its string form: printing
     * the bytes in order as hex, with a dash after bytes 4, 6, 8 and 10,
     * gives the usual GUID text.
     */
    uint8_t disk_id[16];
    /**
     * The top file's format. A later field: a caller compiled against a
     * header without it (`struct_size` 64) does not get it, and a library
     * older than the caller's header leaves it as the caller set it (set
     * it to 0 to tell "not known").
     */
    ckpt_disk_format format;
    /**
     * Always 0.
     */
    uint32_t reserved2;
} ckpt_disk_info;

/**
 * A range of the virtual disk and whether the chain holds data there,
 * filled by `ckpt_disk_extents`.
 */
typedef struct ckpt_extent {
    /**
     * Start in bytes.
     */
    uint64_t offset;
    /**
     * Length in bytes (never 0).
     */
    uint64_t length;
    /**
     * 0 when some file of the chain holds data for the range (it may
     * still read as zeros); `CKPT_EXTENT_HOLE | CKPT_EXTENT_ZERO` when no
     * file does and the range reads as zeros (never allocated, or
     * trimmed). Other bits are 0 in this version; treat unknown bits as
     * "nothing known".
     */
    uint32_t flags;
    /**
     * Always 0.
     */
    uint32_t reserved;
} ckpt_extent;

/**
 * One buffer of a vectored read or write (`struct iovec`): `len` bytes at
 * `base`. `base` may be NULL when `len` is 0. `ckpt_disk_writev` only
 * reads through `base`.
 */
typedef struct ckpt_iovec {
    /**
     * The buffer.
     */
    uint8_t *base;
    /**
     * Its length in bytes.
     */
    size_t len;
} ckpt_iovec;

/**
 * What `ckpt_disk_convert_in_place` did (a versioned output struct).
 *
 * Set `struct_size` to `sizeof(ckpt_in_place_report)` before the call.
 * The library writes the fields it knows and sets `struct_size` to the
 * number of bytes it wrote; it writes nothing unless the call succeeds.
 */
typedef struct ckpt_in_place_report {
    /**
     * In: `sizeof(ckpt_in_place_report)` as compiled by the caller. Out:
     * the number of bytes the library wrote.
     */
    uint32_t struct_size;
    /**
     * 0 when the disk was of that kind already (nothing was done), else 1.
     */
    int changed;
    /**
     * The kind before.
     */
    ckpt_disk_kind from;
    /**
     * The kind after.
     */
    ckpt_disk_kind to;
    /**
     * Blocks given zeroed space of their own (to fixed).
     */
    uint64_t blocks_allocated;
    /**
     * Blocks whose space was given back (to dynamic: blocks that read as
     * zeros).
     */
    uint64_t blocks_freed;
    /**
     * Blocks moved to a lower place (to dynamic).
     */
    uint64_t blocks_moved;
    /**
     * The file's length before.
     */
    uint64_t bytes_before;
    /**
     * The file's length after.
     */
    uint64_t bytes_after;
} ckpt_in_place_report;

/**
 * What `ckpt_disk_resize` did (a versioned output struct).
 *
 * Set `struct_size` to `sizeof(ckpt_resize_report)` before the call.
 * The library writes the fields it knows and sets `struct_size` to the
 * number of bytes it wrote; it writes nothing unless the call succeeds.
 */
typedef struct ckpt_resize_report {
    /**
     * In: `sizeof(ckpt_resize_report)` as compiled by the caller. Out:
     * the number of bytes the library wrote.
     */
    uint32_t struct_size;
    /**
     * 1 when the BAT moved to a new, larger region at the end of the file.
     */
    int bat_relocated;
    /**
     * The virtual size before.
     */
    uint64_t old_size;
    /**
     * The virtual size after.
     */
    uint64_t new_size;
    /**
     * Bytes of data past the new end that a shrink dropped.
     */
    uint64_t bytes_dropped;
    /**
     * The file's length before.
     */
    uint64_t file_size_before;
    /**
     * The file's length after.
     */
    uint64_t file_size_after;
} ckpt_resize_report;

/**
 * Parameters of `ckpt_vm_create` (a versioned struct, used like
 * `ckpt_create_options`: set `struct_size` to `sizeof(ckpt_vm_spec)`,
 * everything else to 0 or NULL, then fill in what you need; 0 and NULL
 * take the default).
 */
typedef struct ckpt_vm_spec {
    /**
     * `sizeof(ckpt_vm_spec)` as compiled by the caller.
     */
    uint32_t struct_size;
    /**
     * A `CKPT_CHECKPOINT_TYPE_*` value. 0: production.
     */
    uint32_t checkpoint_type;
    /**
     * The VM's name (required, not empty).
     */
    const char *name;
    /**
     * `disk_count` paths of the VM's VHDX disks (each a base disk or a
     * chain). NULL only when `disk_count` is 0.
     */
    const char *const *disks;
    /**
     * Number of entries in `disks`.
     */
    size_t disk_count;
    /**
     * `passthrough_count` pass-through devices (host disks the VM uses
     * directly; never checkpointed, recorded as skipped). NULL only when
     * `passthrough_count` is 0.
     */
    const char *const *passthrough;
    /**
     * Number of entries in `passthrough`.
     */
    size_t passthrough_count;
    /**
     * Memory in MiB. 0: 1024.
     */
    uint64_t memory_mib;
    /**
     * Virtual CPUs. 0: 1.
     */
    uint32_t cpus;
    /**
     * Must be 0.
     */
    uint32_t reserved;
    /**
     * Where configuration copies and memory state of checkpoints go.
     * NULL: the folder `checkpoints` in the VM folder.
     */
    const char *checkpoint_location;
    /**
     * The hypervisor's own settings, as a JSON text kept as it is (and
     * restored by apply). NULL: none.
     */
    const char *hypervisor_json;
    /**
     * Warn (in `ckpt_checkpoint_info.age_warning` and the JSON) about
     * checkpoints older than this many seconds. 0: never.
     */
    uint64_t age_warning_seconds;
} ckpt_vm_spec;

/**
 * Facts about an open VM, filled by `ckpt_vm_get_info` (a versioned output
 * struct, used like `ckpt_disk_info`).
 */
typedef struct ckpt_vm_info {
    /**
     * In: `sizeof(ckpt_vm_info)` as compiled by the caller. Out: the
     * number of bytes the library wrote.
     */
    uint32_t struct_size;
    /**
     * Off, running or saved.
     */
    ckpt_vm_state state;
    /**
     * The checkpoint setting.
     */
    ckpt_checkpoint_type checkpoint_type;
    /**
     * Virtual CPUs.
     */
    uint32_t cpus;
    /**
     * Memory in MiB.
     */
    uint64_t memory_mib;
    /**
     * Number of disks, VHDX or VHD (see `ckpt_vm_current_disk_path`).
     */
    uint32_t disk_count;
    /**
     * Number of pass-through devices.
     */
    uint32_t passthrough_count;
    /**
     * Number of checkpoints, hidden branch points included (see
     * `ckpt_vm_checkpoint_count`).
     */
    uint32_t checkpoint_count;
    /**
     * Whether the current state hangs under a checkpoint (one that is not
     * hidden: the one `ckpt_vm_checkpoint_revert` goes back to).
     */
    bool has_current_checkpoint;
    /**
     * Whether the current state has memory state to resume from (see
     * `ckpt_vm_current_saved_state_path`).
     */
    bool has_saved_state;
    /**
     * Whether a delete is pending: some checkpoint is being deleted
     * (`ckpt_checkpoint_info.deleting`; a delete was cancelled or failed
     * once its disks began to change, or a crash cut it and the open
     * could not finish it). The next change to the VM finishes it first;
     * deleting that checkpoint again finishes it now. Added in 0.2 (the
     * byte was reserved, always 0, before).
     */
    bool delete_pending;
    /**
     * The VM's role (`ckpt_vm_set_role`): `CKPT_VM_ROLE_NONE` (0),
     * `CKPT_VM_ROLE_DOMAIN_CONTROLLER`, `CKPT_VM_ROLE_CLUSTER_MEMBER` or
     * `CKPT_VM_ROLE_REPLICATED`. Added after 0.2.0 (the byte was reserved,
     * always 0, before: an older library reports no role).
     */
    uint8_t role;
    /**
     * The age warning in seconds (0: none).
     */
    uint64_t age_warning_seconds;
} ckpt_vm_info;

/**
 * One checkpoint, filled by `ckpt_vm_checkpoint_get` (a versioned output
 * struct, used like `ckpt_disk_info`). Its strings (name, id, fallback
 * reason, disk paths) come from the `ckpt_vm_checkpoint_*` getters with
 * the same index.
 */
typedef struct ckpt_checkpoint_info {
    /**
     * In: `sizeof(ckpt_checkpoint_info)` as compiled by the caller. Out:
     * the number of bytes the library wrote.
     */
    uint32_t struct_size;
    /**
     * The kind the checkpoint really is.
     */
    ckpt_taken_type taken;
    /**
     * The kind the VM's setting asked for when it was taken.
     */
    ckpt_checkpoint_type requested;
    /**
     * Number of frozen disks (see `ckpt_vm_checkpoint_disk_path`).
     */
    uint32_t disk_count;
    /**
     * The index of the parent checkpoint in the same list, or -1 for a
     * root. Parents come before their children.
     */
    int64_t parent_index;
    /**
     * Creation time, seconds since the Unix epoch.
     */
    uint64_t created;
    /**
     * Seconds since it was taken.
     */
    uint64_t age_seconds;
    /**
     * Bytes the differencing disks of the checkpoint use on the host.
     */
    uint64_t size_bytes;
    /**
     * Upper bound of the bytes deleting it would copy.
     */
    uint64_t delete_copy_bytes;
    /**
     * Files in the chain under its first disk (1 for a base disk).
     */
    uint32_t chain_depth;
    /**
     * Number of pass-through devices that were not checkpointed.
     */
    uint32_t skipped_passthrough_count;
    /**
     * A deleted branch point kept only because two or more states still
     * read its disks; it has no name lookups and cannot be applied.
     */
    bool hidden;
    /**
     * Whether it holds memory state.
     */
    bool has_saved_state;
    /**
     * Whether it has a fallback reason (`taken` differs from what was
     * asked for; see `ckpt_vm_checkpoint_fallback_reason`).
     */
    bool has_fallback_reason;
    /**
     * Whether it is older than the VM's age warning.
     */
    bool age_warning;
    /**
     * Whether it is the checkpoint the current state hangs under (the one
     * revert goes back to; never a hidden one: after the checkpoint the
     * current state hung under is deleted, that is its parent).
     */
    bool is_current_parent;
    /**
     * Whether it is being deleted: a delete was cancelled or failed after
     * its disks began to change, so they no longer hold its data. It can
     * no longer be applied or exported (`CKPT_STATUS_BUSY`), and the next
     * change to the VM (or `ckpt_vm_open`) finishes the delete first.
     */
    bool deleting;
    /**
     * Always 0.
     */
    uint8_t reserved[2];
} ckpt_checkpoint_info;

/**
 * The `quiesce` hook: ask the guest to flush its applications and freeze
 * its file systems for a production checkpoint. Return 0 when it is
 * quiesced; any other value means it could not be (a production
 * checkpoint then falls back to standard, a production-only one fails).
 * Not called when the VM is off: its checkpoint is production, with
 * nothing to quiesce.
 */
typedef int (*ckpt_quiesce_fn)(void *user);

/**
 * The `thaw` hook: undo a successful `quiesce`; called once the disks are
 * checkpointed (also when taking the checkpoint failed).
 */
typedef void (*ckpt_thaw_fn)(void *user);

/**
 * The `save_memory` hook: write the VM's memory and CPU state for a
 * standard checkpoint, through `ckpt_writer_write(writer, ...)` as many
 * times as needed. Return 0 when the state was written, 1 when there is
 * none (the VM is off; the checkpoint then holds no memory state), any
 * other value on failure (the checkpoint is not taken). `writer` is
 * valid only during the call.
 */
typedef int (*ckpt_save_memory_fn)(struct ckpt_writer *writer, void *user);

/**
 * The `resume` hook: let the guest run again after `save_memory` paused it
 * to write its state. Called once the disks are checkpointed (also when
 * taking the checkpoint failed) whenever `save_memory` was called,
 * whatever it returned.
 */
typedef void (*ckpt_resume_fn)(void *user);

/**
 * What the hypervisor does for the library during checkpoint operations
 * (a versioned struct: set `struct_size` to `sizeof(ckpt_hooks)`, the rest
 * to 0/NULL, then set the callbacks you have). Every callback may be NULL;
 * a function taking `const ckpt_hooks *` also accepts NULL for "no hooks".
 *
 * Without `quiesce`, quiescing fails (production checkpoints fall back to
 * standard); without `save_memory`, standard checkpoints hold no memory
 * state; without `progress`, nothing is reported and nothing cancels.
 *
 * `resume` came after the first version of the struct: a caller built
 * with an older header passes the smaller `struct_size` of that version
 * (48 bytes on 64-bit targets) and has no `resume`.
 *
 * Every callback gets `user` as its last argument, runs on the calling
 * thread inside the library call, and must return normally: never
 * `longjmp` out of it or let a C++ exception escape it. It must not call
 * functions on the `ckpt_vm` the running call uses (they fail with
 * `CKPT_STATUS_BUSY`); other libckpt calls are fine.
 */
typedef struct ckpt_hooks {
    /**
     * `sizeof(ckpt_hooks)` as compiled by the caller.
     */
    uint32_t struct_size;
    /**
     * Must be 0.
     */
    uint32_t reserved;
    /**
     * Quiesce the guest (production checkpoints); NULL: cannot.
     */
    ckpt_quiesce_fn quiesce;
    /**
     * Thaw the guest after a successful quiesce; NULL: nothing to do.
     */
    ckpt_thaw_fn thaw;
    /**
     * Write memory state (standard checkpoints); NULL: none.
     */
    ckpt_save_memory_fn save_memory;
    /**
     * Progress of long steps (the merges of a delete, the copies of an
     * export); non-zero cancels with `CKPT_STATUS_CANCELLED`.
     */
    ckpt_progress_fn progress;
    /**
     * Passed to every callback.
     */
    void *user;
    /**
     * Let the guest run again after `save_memory`; NULL: nothing to do.
     * (Added after the first version of the struct.)
     */
    ckpt_resume_fn resume;
} ckpt_hooks;

/**
 * What `ckpt_vm_write_rbd_diff` wrote (a plain output struct).
 */
typedef struct ckpt_rbd_diff_stats {
    /**
     * Bytes of the stream (header and records).
     */
    uint64_t stream_bytes;
    /**
     * Data bytes in `w` records.
     */
    uint64_t data_bytes;
    /**
     * Bytes covered by `z` records (ranges that read zeros).
     */
    uint64_t zero_bytes;
} ckpt_rbd_diff_stats;

/**
 * A line of progress text (NUL-terminated, no newline), valid during the
 * call only.
 */
typedef void (*ckpt_message_fn)(const char *line, void *user);

/**
 * Options of `ckpt_vm_export_rbd` and `ckpt_vm_import_rbd` (a versioned
 * input struct: set `struct_size` to `sizeof(ckpt_rbd_options)` and every
 * field you do not use to 0 / NULL; NULL options are all defaults).
 */
typedef struct ckpt_rbd_options {
    /**
     * `sizeof(ckpt_rbd_options)` as compiled by the caller.
     */
    uint32_t struct_size;
    /**
     * `CKPT_RBD_PRUNE` (export only), or 0.
     */
    uint32_t flags;
    /**
     * The `rbd` program to run (NULL: `$CKPT_RBD`, else `rbd` on the
     * PATH).
     */
    const char *program;
    /**
     * The ceph.conf passed as `--conf` (NULL: rbd's own default, which
     * honours `CEPH_CONF`).
     */
    const char *conf;
    /**
     * The client id passed as `--id` (NULL: rbd's own default).
     */
    const char *client_id;
    /**
     * Called with each progress line (NULL: none).
     */
    ckpt_message_fn message;
    /**
     * Passed to `message`.
     */
    void *user;
} ckpt_rbd_options;

/**
 * What `ckpt_vm_export_rbd` did (a versioned output struct: set
 * `struct_size` to `sizeof(ckpt_rbd_export_stats)` first).
 */
typedef struct ckpt_rbd_export_stats {
    /**
     * In: `sizeof(ckpt_rbd_export_stats)`. Out: the bytes written.
     */
    uint32_t struct_size;
    /**
     * Images made or brought up to date (main lines and clones).
     */
    uint32_t images;
    /**
     * Images made by this call.
     */
    uint32_t images_created;
    /**
     * Snapshots made by this call (checkpoints sent).
     */
    uint32_t snapshots_sent;
    /**
     * Snapshots removed (`CKPT_RBD_PRUNE`).
     */
    uint32_t snapshots_pruned;
    /**
     * Clones removed (`CKPT_RBD_PRUNE`: branches deleted locally).
     */
    uint32_t clones_pruned;
    /**
     * Data bytes sent (`w` records).
     */
    uint64_t data_bytes;
    /**
     * Bytes of all streams sent.
     */
    uint64_t stream_bytes;
} ckpt_rbd_export_stats;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * Create a differencing disk at `path` (which must not exist) whose parent
 * is the VHDX at `parent_path` (a base disk or itself a differencing
 * disk), and open the new chain read-write. Writes go to the new file; the
 * parents are never written.
 *
 * The child records the parent both by relative and by absolute path.
 * `options` may be NULL for the defaults (2 MiB blocks, 1 MiB log). On
 * success `*out` receives a handle to close with `ckpt_disk_close`.
 *
 * Do not write to the parent afterwards (through another handle): that
 * breaks the child's linkage, and opening the child then fails with
 * `CKPT_STATUS_PARENT_MISMATCH`.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`,
 * `CKPT_STATUS_UNSUPPORTED` (options from a newer header),
 * `CKPT_STATUS_ALREADY_EXISTS`, `CKPT_STATUS_NOT_FOUND` (no parent, or no
 * folder for the child), `CKPT_STATUS_CORRUPT`, `CKPT_STATUS_IO`.
 *
 * # Safety
 *
 * `path` and `parent_path` are NULL or NUL-terminated strings; `options`
 * is NULL or points to a readable `ckpt_child_options` of at least
 * `options->struct_size` bytes; `out` is NULL or valid for writing one
 * pointer.
 */
ckpt_status ckpt_disk_create_child(const char *path,
                                   const char *parent_path,
                                   const struct ckpt_child_options *options,
                                   struct ckpt_disk **out);

/**
 * Copy the path of `disk`'s parent (the file under it in the chain) into
 * `buf` as a NUL-terminated string: the path where the parent was found
 * when the chain was opened.
 *
 * String getters (this one and the other `(buf, len, out_len)`
 * functions) all work alike: `*out_len` (when `out_len` is not NULL)
 * receives the length without the NUL. If `len` is at least that + 1, the
 * string and its NUL are written and the result is `CKPT_STATUS_OK`;
 * otherwise `buf` is not touched, `*out_len` is still set, and the result
 * is `CKPT_STATUS_BUFFER_TOO_SMALL`. `buf` may be NULL when `len` is 0.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
 * `CKPT_STATUS_INVALID_ARGUMENT` (a base disk: it has no parent; check
 * `ckpt_disk_info.has_parent`).
 *
 * # Safety
 *
 * `disk` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_disk_get_parent_path(const struct ckpt_disk *disk,
                                      char *buf,
                                      size_t len,
                                      size_t *out_len);

/**
 * Copy the creator string of `disk`'s top file (the program that made it,
 * for example `"libckpt 0.1.0"` or `"Microsoft Windows 10.0.17763.0"`)
 * into `buf`, as described at `ckpt_disk_get_parent_path`.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`.
 *
 * # Safety
 *
 * `disk` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_disk_get_creator(const struct ckpt_disk *disk,
                                  char *buf,
                                  size_t len,
                                  size_t *out_len);

/**
 * Set `*out` to the number of files in `disk`'s chain: 1 for a base disk,
 * 2 for a differencing disk on a base disk, and so on.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`.
 *
 * # Safety
 *
 * `disk` is NULL or a live handle; `out` is NULL or valid for writing one
 * `size_t`.
 */
ckpt_status ckpt_disk_chain_length(const struct ckpt_disk *disk, size_t *out);

/**
 * Copy the path of file `index` of `disk`'s chain into `buf` (0 is the
 * file the handle was opened on, 1 its parent, ..., `chain length - 1`
 * the base disk), as described at `ckpt_disk_get_parent_path`. Every
 * index, 0 included, gives an absolute path with symbolic links and `..`
 * resolved (before 0.2, index 0 gave the path as it was passed to
 * `ckpt_disk_open`). Paths are returned as the bytes the file system
 * holds: on Linux they need not be UTF-8.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
 * `CKPT_STATUS_INVALID_ARGUMENT` (`index` is not less than the chain
 * length).
 *
 * # Safety
 *
 * `disk` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_disk_chain_path(const struct ckpt_disk *disk,
                                 size_t index,
                                 char *buf,
                                 size_t len,
                                 size_t *out_len);

/**
 * Set `*out` to the index in `disk`'s chain (0 = top) of the file at
 * `path` (compared after resolving symbolic links and `..`).
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_NOT_FOUND` (no such
 * file), `CKPT_STATUS_INVALID_ARGUMENT` (the file is not in the chain).
 *
 * # Safety
 *
 * `disk` is NULL or a live handle; `path` is NULL or a NUL-terminated
 * string; `out` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_disk_level_of(const struct ckpt_disk *disk, const char *path, size_t *out);

/**
 * The byte ranges whose content may differ between the file `levels`
 * below the top of `disk`'s chain and the top (what changed since that
 * checkpoint: the raw material of an incremental backup), exact to the
 * logical sector, sorted, non-overlapping and coalesced.
 *
 * `levels` is 1 for the changes of the top file alone, 2 for the top two
 * files, ..., and the chain length to compare with an empty disk (every
 * range any file holds).
 *
 * The ranges go into `buf`, which has room for `cap` of them. `*out_count`
 * receives the number of ranges. If `cap` is too small, nothing is
 * written to `buf`, `*out_count` is still set and the result is
 * `CKPT_STATUS_BUFFER_TOO_SMALL`: call once with `cap = 0` (`buf` may then
 * be NULL) to learn the count, then again with a buffer that big. Each
 * call reads the chain's allocation tables again.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER` (`disk` or `out_count` NULL, or `buf`
 * NULL with `cap > 0`), `CKPT_STATUS_INVALID_ARGUMENT` (`levels` is 0 or
 * more than the chain length), `CKPT_STATUS_BUFFER_TOO_SMALL`,
 * `CKPT_STATUS_IO`, `CKPT_STATUS_CORRUPT`.
 *
 * # Safety
 *
 * `disk` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `cap` `ckpt_range`s; `out_count` is NULL or valid for writing one
 * `size_t`.
 */
ckpt_status ckpt_disk_changed_ranges(const struct ckpt_disk *disk,
                                     size_t levels,
                                     struct ckpt_range *buf,
                                     size_t cap,
                                     size_t *out_count);

/**
 * Merge the differencing disk `child_path` into its parent, or into the
 * ancestor `into_path` (a file further down its chain), like deleting a
 * checkpoint: only the data the merged files hold is copied, ranges they
 * zeroed are zeroed, the differencing disks in the child's folder whose
 * parent is the child are re-pointed at the destination, and the merged
 * files are removed.
 *
 * Before it starts, the merge checks that the destination's file system
 * has room for the blocks it may allocate, and refuses
 * (`CKPT_STATUS_NO_SPACE`, nothing changed) otherwise.
 *
 * `progress` (may be NULL) is called after every chunk with the bytes
 * copied and the bytes to copy; returning non-zero cancels. A cancelled,
 * failed or interrupted merge leaves a chain that reads the same data
 * as before; running the same merge again finishes it.
 *
 * No handle may have any file of the chain open during the merge.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT` (not
 * a differencing disk, `into_path` not in its chain),
 * `CKPT_STATUS_NO_SPACE`, `CKPT_STATUS_CANCELLED`, `CKPT_STATUS_NOT_FOUND`,
 * `CKPT_STATUS_PARENT_MISMATCH`, `CKPT_STATUS_CORRUPT`, `CKPT_STATUS_IO`.
 *
 * # Safety
 *
 * `child_path` is NULL or a NUL-terminated string; `into_path` is NULL or
 * a NUL-terminated string; `progress` is NULL or a function that may be
 * called with `user` during this call.
 */
ckpt_status ckpt_disk_merge(const char *child_path,
                            const char *into_path,
                            ckpt_progress_fn progress,
                            void *user);

/**
 * Copy everything `src_path` reads (through its whole chain) into a new
 * standalone VHDX at `dst_path` (which must not exist; it has no parent).
 * Ranges no file of the chain holds, and all-zero chunks, are not written.
 *
 * `options` (may be NULL) chooses the kind and block size of the new file
 * as for `ckpt_disk_create`; the virtual size and the sector sizes are
 * always the source's. `progress` (may be NULL) is called as for
 * `ckpt_disk_merge`; on cancel or failure `dst_path` is removed.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`,
 * `CKPT_STATUS_UNSUPPORTED`, `CKPT_STATUS_ALREADY_EXISTS`,
 * `CKPT_STATUS_CANCELLED`, `CKPT_STATUS_NOT_FOUND`,
 * `CKPT_STATUS_PARENT_MISMATCH`, `CKPT_STATUS_CORRUPT`, `CKPT_STATUS_IO`.
 *
 * # Safety
 *
 * `src_path` and `dst_path` are NULL or NUL-terminated strings; `options`
 * is NULL or points to a readable `ckpt_create_options` of at least
 * `options->struct_size` bytes; `progress` is NULL or a function that may
 * be called with `user` during this call.
 */
ckpt_status ckpt_disk_flatten(const char *src_path,
                              const char *dst_path,
                              const struct ckpt_create_options *options,
                              ckpt_progress_fn progress,
                              void *user);

/**
 * Point the differencing disk `child_path` at `new_parent_path` (like
 * `Set-VHD -ParentPath`), for example after the parent was moved.
 *
 * With `force == 0`, the new parent must be the same disk as the old one
 * (its DataWriteGuid matches the child's linkage), or the call fails with
 * `CKPT_STATUS_PARENT_MISMATCH` and nothing changes. With `force != 0`
 * the linkage is rewritten to the new parent, which must have the same
 * virtual and sector sizes: only do this when you know the new parent
 * holds the data the child was made on.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT` (not
 * a differencing disk, other sizes), `CKPT_STATUS_PARENT_MISMATCH`,
 * `CKPT_STATUS_NOT_FOUND`, `CKPT_STATUS_CORRUPT`, `CKPT_STATUS_IO`.
 *
 * # Safety
 *
 * `child_path` and `new_parent_path` are NULL or NUL-terminated strings.
 */
ckpt_status ckpt_disk_reparent(const char *child_path, const char *new_parent_path, int force);

/**
 * Compact the top file of `disk` (opened read-write): blocks move down
 * into the space of freed ones and the file is cut after its last used
 * byte. What the disk reads does not change, nor its DataWriteGuid
 * (children stay linked); parents are only read.
 *
 * `mode` is `CKPT_COMPACT_QUICK` or `CKPT_COMPACT_FULL`. `progress` (may
 * be NULL) is called with bytes done and bytes to do (an estimate that
 * can shrink once the moves are planned); returning non-zero cancels
 * (`CKPT_STATUS_CANCELLED`, the disk stays consistent). `report` (may be
 * NULL) receives what was done, on success only.
 *
 * Calls on the same handle from other threads meanwhile stay correct and
 * wait for one step at a time (a block scanned or moved). On a VM's disk
 * handle (from `ckpt_vm_disk`) the compaction is live: the guest's I/O
 * goes on, and a checkpoint operation arriving meanwhile does not wait
 * for it (the compaction steps aside; it ends with `CKPT_STATUS_BUSY`
 * when a checkpoint made another file the disk's top: compact again).
 * A crash or an error leaves a file that opens with all its data;
 * compacting again finishes.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER` (`disk`), `CKPT_STATUS_INVALID_ARGUMENT`
 * (an unknown `mode`, a `report->struct_size` too small),
 * `CKPT_STATUS_UNSUPPORTED` (a fixed disk: its blocks stay allocated),
 * `CKPT_STATUS_READ_ONLY`, `CKPT_STATUS_CANCELLED`, `CKPT_STATUS_BUSY`
 * (a VM's disk: another compaction of it runs, or a checkpoint switched
 * it), `CKPT_STATUS_CORRUPT`, `CKPT_STATUS_IO`.
 *
 * # Safety
 *
 * `disk` is NULL or a live handle; `progress` is NULL or a function that
 * may be called with `user` during this call; `report` is NULL or points
 * to a `ckpt_compact_report` of at least `report->struct_size` bytes,
 * readable and writable.
 */
ckpt_status ckpt_disk_compact(struct ckpt_disk *disk,
                              int mode,
                              ckpt_progress_fn progress,
                              void *user,
                              struct ckpt_compact_report *report);

/**
 * Create a new VHDX file (or, with `CKPT_CREATE_VHD` in
 * `options->flags`, a VHD) at `path` (which must not exist yet) holding a
 * virtual disk of `virtual_size` bytes, and open it read-write.
 *
 * `options` may be NULL for the defaults (a dynamic disk with 32 MiB
 * blocks, 512-byte logical and 4096-byte physical sectors, a 1 MiB log).
 * On success `*out` receives a new handle to close with
 * `ckpt_disk_close`; on failure `*out` is not written.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER` (`path` or `out` NULL),
 * `CKPT_STATUS_INVALID_ARGUMENT` (bad path string, size or option),
 * `CKPT_STATUS_UNSUPPORTED` (options from a newer header using fields this
 * library does not know), `CKPT_STATUS_IO`, `CKPT_STATUS_NOT_FOUND` (the
 * directory does not exist).
 *
 * # Safety
 *
 * `path` is NULL or a NUL-terminated string; `options` is NULL or points
 * to a readable `ckpt_create_options` of at least `options->struct_size`
 * bytes; `out` is NULL or valid for writing one pointer.
 */
ckpt_status ckpt_disk_create(const char *path,
                             uint64_t virtual_size,
                             const struct ckpt_create_options *options,
                             struct ckpt_disk **out);

/**
 * Open the VHDX file at `path`.
 *
 * `flags` is `CKPT_OPEN_READ_ONLY` or `CKPT_OPEN_READ_WRITE`; other bits
 * are rejected. On success `*out` receives a new handle to close with
 * `ckpt_disk_close`; on failure `*out` is not written.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`,
 * `CKPT_STATUS_NOT_FOUND`, `CKPT_STATUS_IO`, `CKPT_STATUS_CORRUPT` (the
 * file is not a sound VHDX), `CKPT_STATUS_UNSUPPORTED`.
 *
 * # Safety
 *
 * `path` is NULL or a NUL-terminated string; `out` is NULL or valid for
 * writing one pointer.
 */
ckpt_status ckpt_disk_open(const char *path, uint32_t flags, struct ckpt_disk **out);

/**
 * Fill `*info` with facts about `disk`. Set `info->struct_size` to
 * `sizeof(ckpt_disk_info)` first (see `ckpt_disk_info`). `*info` is
 * written only on success.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
 * (`struct_size` smaller than the first version of the struct).
 *
 * # Safety
 *
 * `disk` is NULL or a live handle; `info` is NULL or points to a
 * `ckpt_disk_info` of at least `info->struct_size` bytes, readable and
 * writable, not used by another thread during the call.
 */
ckpt_status ckpt_disk_get_info(const struct ckpt_disk *disk, struct ckpt_disk_info *info);

/**
 * Read `len` bytes of the virtual disk at byte `offset` (any alignment)
 * into `buf`. Unallocated ranges read as zeros.
 *
 * A request reaching past the end of the disk fails with
 * `CKPT_STATUS_OUT_OF_RANGE` and leaves `buf` untouched; after another
 * failure (`CKPT_STATUS_IO`, `CKPT_STATUS_CORRUPT`) the contents of `buf`
 * are unspecified. With `len == 0`, `buf` is not touched and may be NULL.
 * Reads never change the disk and may run concurrently with any other
 * call on the handle except `ckpt_disk_close`.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER` (`disk` NULL, or `buf` NULL with
 * `len > 0`), `CKPT_STATUS_OUT_OF_RANGE`, `CKPT_STATUS_IO`,
 * `CKPT_STATUS_CORRUPT` (a damaged allocation table or sector bitmap, or
 * a parent file that changed under the chain).
 *
 * # Safety
 *
 * `disk` is NULL or a live handle; `buf` is valid for writes of `len`
 * bytes when `len > 0`.
 */
ckpt_status ckpt_disk_read(const struct ckpt_disk *disk, uint8_t *buf, size_t len, uint64_t offset);

/**
 * Write `len` bytes from `buf` to the virtual disk at byte `offset` (any
 * alignment). On a differencing disk the data goes into the top file
 * only; its parents are never written. Reads on any thread see the data
 * once the call returns; it is durable (survives a power failure) after a
 * later `ckpt_disk_flush` (or `ckpt_disk_close`) returns
 * `CKPT_STATUS_OK`. With `len == 0`, `buf` is not touched and may be
 * NULL. See `ckpt_disk` for concurrent unaligned writes to a differencing
 * disk.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER` (`disk` NULL, or `buf` NULL with
 * `len > 0`), `CKPT_STATUS_OUT_OF_RANGE` (nothing is written),
 * `CKPT_STATUS_READ_ONLY`, `CKPT_STATUS_NO_SPACE` (the file system is
 * full), `CKPT_STATUS_IO`, `CKPT_STATUS_CORRUPT`. After a failure other
 * than `CKPT_STATUS_OUT_OF_RANGE` and `CKPT_STATUS_READ_ONLY`, the range
 * may hold a part of the new data.
 *
 * # Safety
 *
 * `disk` is NULL or a live handle; `buf` is valid for reads of `len` bytes
 * when `len > 0`.
 */
ckpt_status ckpt_disk_write(struct ckpt_disk *disk,
                            const uint8_t *buf,
                            size_t len,
                            uint64_t offset);

/**
 * Make every write and trim completed on `disk` before the call (from any
 * thread) durable, metadata and data: after `CKPT_STATUS_OK` they survive
 * a crash or power failure. On a read-only handle there is nothing to do
 * and the result is `CKPT_STATUS_OK`.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_NO_SPACE`,
 * `CKPT_STATUS_IO` (then it is unknown which writes are durable; a later
 * flush may be tried again).
 *
 * # Safety
 *
 * `disk` is NULL or a live handle.
 */
ckpt_status ckpt_disk_flush(struct ckpt_disk *disk);

/**
 * Discard the range `[offset, offset + len)` of the virtual disk (any
 * alignment): afterwards it reads as zeros (on a differencing disk too,
 * whatever its parents hold there), and whole blocks inside it stop using
 * space in the file. Durable after `ckpt_disk_flush`, like a write. Note
 * the argument order: offset, then length (as `ckpt_disk_read` /
 * `ckpt_disk_write` have buffer, length, offset).
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_OUT_OF_RANGE`,
 * `CKPT_STATUS_READ_ONLY`, `CKPT_STATUS_NO_SPACE`, `CKPT_STATUS_IO`.
 *
 * # Safety
 *
 * `disk` is NULL or a live handle.
 */
ckpt_status ckpt_disk_trim(struct ckpt_disk *disk, uint64_t offset, uint64_t len);

/**
 * Map `[offset, offset + len)` of the virtual disk: which parts some file
 * of the chain holds data for, and which are holes that read as zeros
 * (what a sparse copy or backup can skip; the NBD `base:allocation`
 * context).
 *
 * The extents go into `buf`, which has room for `cap` of them, sorted,
 * contiguous and covering the range exactly: the first starts at
 * `offset`, each next one where the one before ends, and two neighbours
 * never have the same `flags`. The boundaries fall on blocks of the chain
 * (the smallest block size of its files), except that the first and last
 * extent are cut to the range, so there are at most as many extents as
 * blocks the range touches.
 *
 * `*out_count` receives the number of extents (0 when `len` is 0). If
 * `cap` is too small, nothing is written to `buf`, `*out_count` is still
 * set and the result is `CKPT_STATUS_BUFFER_TOO_SMALL`: call with
 * `cap = 0` (`buf` may then be NULL) to learn the count, or map a smaller
 * range. Each call reads the allocation tables again, and a write or trim
 * between two calls may change the count; a large disk is best mapped in
 * pieces with a fixed buffer. Like a read, the call may run concurrently
 * with any other call on the handle except `ckpt_disk_close`.
 *
 * A block (for the first and last extent: its part inside the range) is
 * data as soon as some file of the chain holds any sector of it, so a
 * data extent may contain zeros, or sectors no file holds; a hole always
 * reads as zeros.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER` (`disk` or `out_count` NULL, or `buf`
 * NULL with `cap > 0`), `CKPT_STATUS_OUT_OF_RANGE` (the range reaches past
 * the end of the disk), `CKPT_STATUS_BUFFER_TOO_SMALL`, `CKPT_STATUS_IO`,
 * `CKPT_STATUS_CORRUPT`.
 *
 * # Safety
 *
 * `disk` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `cap` `ckpt_extent`s; `out_count` is NULL or valid for writing one
 * `size_t`.
 */
ckpt_status ckpt_disk_extents(const struct ckpt_disk *disk,
                              uint64_t offset,
                              uint64_t len,
                              struct ckpt_extent *buf,
                              size_t cap,
                              size_t *out_count);

/**
 * Flush, leave an empty log, close the file and free the handle.
 *
 * The handle is freed whatever the status: do not use it again. A
 * non-OK status means the final flush failed, so writes since the last
 * successful `ckpt_disk_flush` may be lost. `disk` may be NULL (then
 * nothing happens and the result is `CKPT_STATUS_OK`). A handle borrowed
 * from a VM (`ckpt_vm_disk`) is refused with
 * `CKPT_STATUS_INVALID_ARGUMENT` and stays valid: `ckpt_vm_close` closes
 * it.
 *
 * # Safety
 *
 * `disk` is NULL or a live handle from `ckpt_disk_create` /
 * `ckpt_disk_open` (or `ckpt_vm_disk`) that is not closed yet and that no
 * other thread is using.
 */
ckpt_status ckpt_disk_close(struct ckpt_disk *disk);

/**
 * Read into `iovcnt` buffers, one after another, the bytes of the virtual
 * disk from `offset` on (as `preadv(2)`): `iov[0].len` bytes at `offset`
 * into `iov[0].base`, the next `iov[1].len` into `iov[1].base`, and so on.
 * As `ckpt_disk_read` of the whole range: a range past the end fails with
 * `CKPT_STATUS_OUT_OF_RANGE` and no buffer is touched; after another
 * failure the buffers' contents are unspecified. With `iovcnt == 0` (or
 * only empty buffers) nothing is read and `iov` may be NULL.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER` (`disk` NULL, `iov` NULL with
 * `iovcnt > 0`, a NULL `base` with a `len`), `CKPT_STATUS_INVALID_ARGUMENT`
 * (more than `CKPT_IOV_MAX` buffers), `CKPT_STATUS_OUT_OF_RANGE`,
 * `CKPT_STATUS_IO`, `CKPT_STATUS_CORRUPT`.
 *
 * # Safety
 *
 * `disk` is NULL or a live handle; `iov` is NULL or points to `iovcnt`
 * readable `ckpt_iovec`s, each `base` valid for writes of `len` bytes;
 * the buffers do not overlap.
 */
ckpt_status ckpt_disk_readv(const struct ckpt_disk *disk,
                            const struct ckpt_iovec *iov,
                            size_t iovcnt,
                            uint64_t offset);

/**
 * Write `iovcnt` buffers, one after another, to the virtual disk from
 * `offset` on (as `pwritev(2)`): exactly as `ckpt_disk_write` of their
 * concatenation — one write, with its guarantees: a range past the end
 * (`CKPT_STATUS_OUT_OF_RANGE`) or a read-only handle
 * (`CKPT_STATUS_READ_ONLY`) writes nothing; after another failure the
 * range may hold a part of the new data; durable after a flush. With
 * `iovcnt == 0` (or only empty buffers) nothing is written and `iov` may
 * be NULL.
 *
 * Errors: as for `ckpt_disk_readv`, and `CKPT_STATUS_READ_ONLY`,
 * `CKPT_STATUS_NO_SPACE`.
 *
 * # Safety
 *
 * `disk` is NULL or a live handle; `iov` is NULL or points to `iovcnt`
 * readable `ckpt_iovec`s, each `base` valid for reads of `len` bytes.
 */
ckpt_status ckpt_disk_writev(struct ckpt_disk *disk,
                             const struct ckpt_iovec *iov,
                             size_t iovcnt,
                             uint64_t offset);

/**
 * Open the one VHDX file at `path` without its parents, read-only, to
 * inspect it (its own data and allocation, `ckpt_disk_get_info`,
 * `ckpt_disk_extents`). `flags` must be `CKPT_OPEN_READ_ONLY` (0).
 *
 * For a base disk this is `ckpt_disk_open` read-only. For a differencing
 * disk the parents are neither looked for nor opened (a missing or
 * damaged parent does not matter): the chain has one file
 * (`ckpt_disk_chain_length` gives 1, `ckpt_disk_get_parent_path` fails),
 * `ckpt_disk_info.has_parent` is still true, and the ranges the file does
 * not hold read as zeros: `ckpt_disk_extents` reports them as holes, so
 * a range reads as the file's own data only where an extent has no
 * flags (a data extent may still contain sectors only the parent holds,
 * which read as zeros here). Writes, trims, and children or merges of
 * the handle are refused (`CKPT_STATUS_READ_ONLY`).
 *
 * Errors: as for `ckpt_disk_open`; `CKPT_STATUS_INVALID_ARGUMENT` for
 * `flags` other than `CKPT_OPEN_READ_ONLY`.
 *
 * # Safety
 *
 * `path` is NULL or a NUL-terminated string; `out` is NULL or valid for
 * writing one pointer.
 */
ckpt_status ckpt_disk_open_file(const char *path, uint32_t flags, struct ckpt_disk **out);

/**
 * Convert `disk` (a base disk opened read-write) to the kind `to` names
 * (`CKPT_DISK_KIND_FIXED` or `CKPT_DISK_KIND_DYNAMIC`) in place. To fixed:
 * every block the file lacks is given zeroed space of its own, after a
 * check that the volume holds the room (else `CKPT_STATUS_NO_SPACE`,
 * nothing changed), then the file is marked fixed. To dynamic: the file
 * is marked dynamic, then the blocks that read as zeros are given back
 * and the file shrinks (as `ckpt_disk_compact` in full mode). A disk of
 * that kind already is left alone (`report->changed` is 0). What the
 * disk reads does not change, nor its DataWriteGuid (children stay
 * linked).
 *
 * `progress` (may be NULL) is called with bytes done and bytes to do;
 * returning non-zero cancels (`CKPT_STATUS_CANCELLED`, the disk stays
 * consistent and usable). `report` (may be NULL) receives what was done,
 * on success only. A crash leaves a file that opens with the same data,
 * of the old kind or the new one; converting to fixed again finishes an
 * interrupted conversion to fixed.
 *
 * Not thread-safe on this handle: no other call on `disk` may run during
 * this one (its kind changes).
 *
 * Errors: `CKPT_STATUS_NULL_POINTER` (`disk`), `CKPT_STATUS_INVALID_ARGUMENT`
 * (a `to` that is not fixed or dynamic, a `report->struct_size` too
 * small, a VM's disk handle from `ckpt_vm_disk`), `CKPT_STATUS_UNSUPPORTED`
 * (a differencing disk), `CKPT_STATUS_NO_SPACE`, `CKPT_STATUS_READ_ONLY`,
 * `CKPT_STATUS_CANCELLED`, `CKPT_STATUS_CORRUPT`, `CKPT_STATUS_IO`.
 *
 * # Safety
 *
 * `disk` is NULL or a live handle no other thread uses during the call;
 * `progress` is NULL or a function that may be called with `user` during
 * this call; `report` is NULL or points to a `ckpt_in_place_report` of at
 * least `report->struct_size` bytes, readable and writable.
 */
ckpt_status ckpt_disk_convert_in_place(struct ckpt_disk *disk,
                                       int to,
                                       ckpt_progress_fn progress,
                                       void *user,
                                       struct ckpt_in_place_report *report);

/**
 * Copy this thread's last error message into `buf` as a NUL-terminated
 * UTF-8 string.
 *
 * The last error belongs to the most recent call on the calling thread
 * that returned a status; a call that returns `CKPT_STATUS_OK` clears it
 * (then the message is empty). `ckpt_last_error` and
 * `ckpt_last_error_length` themselves never change it, so a too-small
 * buffer can be retried.
 *
 * `*out_len` (when `out_len` is not NULL) receives the length of the whole
 * message in bytes, without the terminating NUL; a buffer of
 * `*out_len + 1` bytes holds it.
 *
 * Returns:
 * - `CKPT_STATUS_OK`: the whole message and its NUL were written;
 *   `*out_len` is set.
 * - `CKPT_STATUS_BUFFER_TOO_SMALL`: `len` is smaller than the message
 *   length + 1. If `len > 0`, `buf` holds the longest prefix of the
 *   message that fits in `len - 1` bytes without splitting a UTF-8
 *   character, followed by a NUL; if `len == 0`, `buf` is not touched (it
 *   may be NULL). `*out_len` is set to the full length either way.
 * - `CKPT_STATUS_NULL_POINTER`: `buf` is NULL and `len > 0`; nothing is
 *   written.
 *
 * # Safety
 *
 * `buf` is NULL or valid for writes of `len` bytes; `out_len` is NULL or
 * valid for a write of one `size_t`.
 */
ckpt_status ckpt_last_error(char *buf, size_t len, size_t *out_len);

/**
 * The length in bytes of this thread's last error message, without the
 * terminating NUL (0 when there is none). A buffer of this length + 1
 * receives it whole from `ckpt_last_error`.
 *
 * # Safety
 *
 * Always safe to call.
 */
size_t ckpt_last_error_length(void);

/**
 * Change the virtual size of `disk` (a base disk, fixed or dynamic,
 * opened read-write) to `size` bytes (a multiple of the logical sector
 * size, at most 64 TiB). Growing: the new space reads as zeros. Shrinking
 * is refused when data lies past the new end unless `allow_shrink` is
 * non-zero (then it is dropped). A crash leaves the old or the new size
 * with all data. The DataWriteGuid changes: differencing disks made on
 * this file lose their linkage. `report` (may be NULL) receives what was
 * done, on success only.
 *
 * Not thread-safe on this handle: no other call on `disk` may run during
 * this one (its geometry changes). After an error the handle reads the
 * file as it was left (old or new size: see `ckpt_disk_info`).
 *
 * Errors: `CKPT_STATUS_NULL_POINTER` (`disk`), `CKPT_STATUS_INVALID_ARGUMENT`
 * (a bad size, data past a smaller size without `allow_shrink`, a
 * `report->struct_size` too small, a VM's disk handle from
 * `ckpt_vm_disk`), `CKPT_STATUS_UNSUPPORTED` (a differencing disk: not
 * yet), `CKPT_STATUS_READ_ONLY`, `CKPT_STATUS_CORRUPT`, `CKPT_STATUS_IO`.
 *
 * # Safety
 *
 * `disk` is NULL or a live handle no other thread uses during the call;
 * `report` is NULL or points to a `ckpt_resize_report` of at least
 * `report->struct_size` bytes, readable and writable.
 */
ckpt_status ckpt_disk_resize(struct ckpt_disk *disk,
                             uint64_t size,
                             int allow_shrink,
                             struct ckpt_resize_report *report);

/**
 * The status's C name as a NUL-terminated string, for example
 * `"CKPT_STATUS_NOT_FOUND"`; `"CKPT_STATUS_UNKNOWN"` for a number this
 * version does not know.
 *
 * Never fails. The string is static: do not free it.
 *
 * # Safety
 *
 * Always safe to call (any value is accepted).
 */
const char *ckpt_status_name(uint32_t status);

/**
 * The version of the library that is linked, as a NUL-terminated string
 * such as `"0.1.0"` (semantic versioning). The string is static: do not
 * free it.
 *
 * # Safety
 *
 * Always safe to call.
 */
const char *ckpt_version(void);

/**
 * The major version number of the linked library.
 *
 * # Safety
 *
 * Always safe to call.
 */
uint32_t ckpt_version_major(void);

/**
 * The minor version number of the linked library.
 *
 * # Safety
 *
 * Always safe to call.
 */
uint32_t ckpt_version_minor(void);

/**
 * The patch version number of the linked library.
 *
 * # Safety
 *
 * Always safe to call.
 */
uint32_t ckpt_version_patch(void);

/**
 * Whether a program built against the header of version
 * `major.minor` can use the linked library, whose version is
 * `ckpt_version_major()`.`ckpt_version_minor()`.
 *
 * Pass the header's `CKPT_VERSION_MAJOR` and `CKPT_VERSION_MINOR` (the
 * macro `CKPT_VERSION_CHECK()` does exactly that). The rule is semantic
 * versioning as Cargo applies it:
 *
 * - from 1.0 on, the library must have the same major version and a minor
 *   version at least as new as the header's (a newer minor version only
 *   adds functions, statuses and struct fields at the end);
 * - before 1.0 (major 0), every minor version may change the ABI, so the
 *   minor versions must be equal (the patch versions may differ).
 *
 * Returns `CKPT_STATUS_OK` when compatible, otherwise
 * `CKPT_STATUS_UNSUPPORTED` with a last error that names both versions.
 * Never touches anything else; safe to call from any thread at any time.
 *
 * # Safety
 *
 * Always safe to call (any values are accepted).
 */
ckpt_status ckpt_version_check(uint32_t major, uint32_t minor);

/**
 * Write `len` bytes from `buf` to the memory-state stream of a
 * `save_memory` callback. Call it only from inside that callback, with
 * the `writer` it received. With `len == 0`, `buf` is not touched.
 *
 * After a failed write the checkpoint fails, whatever the callback
 * returns; the callback should return a non-zero value.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_IO` (for example the
 * disk is full).
 *
 * # Safety
 *
 * `writer` is NULL or the pointer a running `save_memory` callback
 * received; `buf` is valid for reads of `len` bytes when `len > 0`.
 */
ckpt_status ckpt_writer_write(struct ckpt_writer *writer, const uint8_t *buf, size_t len);

/**
 * Create a VM in the folder `dir` (made if missing; it must not hold a VM
 * yet) from `spec`, and open it. The VM starts off, with no checkpoints;
 * its disks must exist and be sound VHDX files (they are not copied: the
 * VM refers to them by absolute path).
 *
 * On success `*out` receives a handle (holding the VM's lock) to close
 * with `ckpt_vm_close`.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER` (`dir`, `spec`, `out`, `spec->name`
 * or an array entry NULL), `CKPT_STATUS_INVALID_ARGUMENT` (empty name,
 * a disk given twice, bad JSON, unknown checkpoint type),
 * `CKPT_STATUS_ALREADY_EXISTS` (the folder holds a VM),
 * `CKPT_STATUS_UNSUPPORTED` (a spec from a newer header),
 * `CKPT_STATUS_NOT_FOUND`, `CKPT_STATUS_CORRUPT` (a disk),
 * `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO`.
 *
 * # Safety
 *
 * `dir` is NULL or a NUL-terminated string; `spec` is NULL or a readable
 * `ckpt_vm_spec` of at least `spec->struct_size` bytes whose pointers are
 * NULL or valid as their field docs say; `out` is NULL or valid for
 * writing one pointer.
 */
ckpt_status ckpt_vm_create(const char *dir, const struct ckpt_vm_spec *spec, struct ckpt_vm **out);

/**
 * Open the VM in the folder `dir` for changes: take its lock, and finish
 * or undo an operation a crash interrupted there.
 *
 * On success `*out` receives a handle to close with `ckpt_vm_close`.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`,
 * `CKPT_STATUS_BUSY` (another process or handle has the VM open),
 * `CKPT_STATUS_NOT_FOUND` (no such folder or no VM in it, or a disk file
 * the tree names is missing), `CKPT_STATUS_CORRUPT` (`vm.json` cannot be
 * read or its tree is inconsistent — a duplicate id or name, a parent
 * that does not exist, a cycle, a disk count that differs from the VM's —
 * or `journal.json` cannot be read; the last error message names the
 * file, what is wrong and what to do), `CKPT_STATUS_IO`.
 *
 * # Safety
 *
 * `dir` is NULL or a NUL-terminated string; `out` is NULL or valid for
 * writing one pointer.
 */
ckpt_status ckpt_vm_open(const char *dir, struct ckpt_vm **out);

/**
 * Release the VM's lock and free the handle. Every change was saved when
 * the call that made it returned, so this cannot fail; it returns
 * `CKPT_STATUS_OK`. `vm` may be NULL.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle from `ckpt_vm_create` / `ckpt_vm_open`
 * that is not closed yet and that no other thread is using.
 */
ckpt_status ckpt_vm_close(struct ckpt_vm *vm);

/**
 * Fill `*info` with facts about the VM. Set `info->struct_size` to
 * `sizeof(ckpt_vm_info)` first; `*info` is written only on success.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
 * (`struct_size` too small), `CKPT_STATUS_BUSY`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `info` is NULL or points to a readable
 * and writable `ckpt_vm_info` of at least `info->struct_size` bytes.
 */
ckpt_status ckpt_vm_get_info(const struct ckpt_vm *vm, struct ckpt_vm_info *info);

/**
 * Copy the VM's name into `buf` (a string getter, as described at
 * `ckpt_disk_get_parent_path`).
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
 * `CKPT_STATUS_BUSY`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_vm_get_name(const struct ckpt_vm *vm, char *buf, size_t len, size_t *out_len);

/**
 * Copy the absolute path of the VM folder into `buf` (a string getter, as
 * described at `ckpt_disk_get_parent_path`).
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
 * `CKPT_STATUS_BUSY`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_vm_get_dir(const struct ckpt_vm *vm, char *buf, size_t len, size_t *out_len);

/**
 * Copy the path of the file the VM writes disk `index` to now (its
 * newest differencing disk, or the base disk before any checkpoint) into
 * `buf` (a string getter, as described at `ckpt_disk_get_parent_path`).
 * This is the file to give the hypervisor, or to open with
 * `ckpt_disk_open`. It changes with every checkpoint operation.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
 * `CKPT_STATUS_INVALID_ARGUMENT` (`index` not less than
 * `ckpt_vm_info.disk_count`), `CKPT_STATUS_BUSY`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_vm_current_disk_path(const struct ckpt_vm *vm,
                                      size_t index,
                                      char *buf,
                                      size_t len,
                                      size_t *out_len);

/**
 * Record the VM's state as the hypervisor reports it: a `ckpt_vm_state`
 * value. Leaving the saved state drops the memory state the current state
 * would have resumed from.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
 * (unknown state), `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle.
 */
ckpt_status ckpt_vm_set_state(struct ckpt_vm *vm, uint32_t state);

/**
 * Change the VM's memory (MiB) and CPU count; 0 keeps the current value.
 * Checkpoints keep the values they were taken with, and apply restores
 * them.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle.
 */
ckpt_status ckpt_vm_set_resources(struct ckpt_vm *vm, uint64_t memory_mib, uint32_t cpus);

/**
 * Change the kind of checkpoints the VM takes: a `ckpt_checkpoint_type`
 * value.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
 * (unknown type), `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle.
 */
ckpt_status ckpt_vm_set_checkpoint_type(struct ckpt_vm *vm, uint32_t checkpoint_type);

/**
 * Change where new checkpoints keep their configuration copy and memory
 * state (`location` NULL: the folder `checkpoints` in the VM folder). A
 * relative path is taken from the current directory. Existing checkpoints
 * stay where they are.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
 * (empty or non-UTF-8 path), `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `location` is NULL or a NUL-terminated
 * string.
 */
ckpt_status ckpt_vm_set_checkpoint_location(struct ckpt_vm *vm, const char *location);

/**
 * Warn about checkpoints older than `seconds` (0: never warn).
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle.
 */
ckpt_status ckpt_vm_set_age_warning(struct ckpt_vm *vm, uint64_t seconds);

/**
 * Mark the VM with a role whose checkpoints are risky to apply: `role`
 * is "domain-controller", "cluster-member" or "replicated"; NULL or
 * "none" clears it. A checkpoint of such a VM is still taken, with a
 * warning recorded with it (`"warnings"` in `ckpt_vm_checkpoints_json`),
 * and `ckpt monitor` reports it as WARNING. `ckpt_vm_show_json` has the
 * role as `"role"`.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER` (`vm`), `CKPT_STATUS_INVALID_ARGUMENT`
 * (unknown role), `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `role` is NULL or a NUL-terminated
 * string.
 */
ckpt_status ckpt_vm_set_role(struct ckpt_vm *vm, const char *role);

/**
 * Replace the hypervisor's own settings with the JSON text `json` (kept as
 * it is, copied into checkpoints, restored by apply).
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT` (not
 * JSON), `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `json` is NULL or a NUL-terminated
 * string.
 */
ckpt_status ckpt_vm_set_hypervisor_settings(struct ckpt_vm *vm, const char *json);

/**
 * Copy the VM as JSON into `buf` (a string getter, as described at
 * `ckpt_disk_get_parent_path`): the object `ckpt vm show --json` prints,
 * with `name`, `state` ("off", "running", "saved"), `memory_mib`, `cpus`,
 * `checkpoint_type` ("disabled", "standard", "production",
 * "production-only"), `checkpoint_location` (null: the default),
 * `age_warning_seconds`, `current_checkpoint` (the name of the
 * checkpoint the current state hangs under, the one revert goes back to;
 * never a hidden or a being-deleted one; or null),
 * `current_checkpoint_id`, `saved_state`, `disks` (`[{"path": the file
 * written now, "base": the disk the VM was created with}]`),
 * `passthrough`, `hypervisor` and `settings`. Paths are absolute.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
 * `CKPT_STATUS_BUSY`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_vm_show_json(const struct ckpt_vm *vm, char *buf, size_t len, size_t *out_len);

/**
 * Copy the checkpoint tree as JSON into `buf` (a string getter, as
 * described at `ckpt_disk_get_parent_path`; for every string getter of a
 * `ckpt_vm`, a call that fails with `CKPT_STATUS_BUFFER_TOO_SMALL` keeps
 * the text it measured, and the next call of the same getter with the
 * same arguments on the handle returns exactly that text, unless the VM
 * was changed through the handle in between: a buffer of the reported
 * size plus one always suffices, although ages tick between the calls):
 * `{"checkpoints": [{"name", "id", "parent" (the parent's id or null),
 * "type", "requested_type", "fallback_reason", "created", "age_seconds",
 * "age_warning", "size_bytes", "chain_depth", "delete_copy_bytes",
 * "saved_state", "disks", "skipped_passthrough", "hidden", "deleting"},
 * ...], "current": {"parent", "disks", "saved_state"}}`, parents before
 * children, paths absolute. `current.parent` is the id of the checkpoint
 * the current state hangs under (never a hidden one; see
 * `ckpt_vm_checkpoint_revert`). The sizes are measured on every call (each
 * checkpoint's disks are opened).
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
 * `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_vm_checkpoints_json(const struct ckpt_vm *vm,
                                     char *buf,
                                     size_t len,
                                     size_t *out_len);

/**
 * Copy the warnings of the last change through this handle into `buf` (a
 * string getter, as described at `ckpt_disk_get_parent_path`), as JSON:
 * `{"warnings": ["deleting checkpoint \"B\" was done, but tidying up
 * after it failed (...); that is finished when the VM is next opened",
 * ...]}`. A change (create, apply, revert, delete or rename of a
 * checkpoint, or a setter; not an export, which changes nothing) that
 * succeeded may still leave warnings: once a create, a delete or an apply
 * is committed, a step after it that fails (removing the journal or the
 * old files, collapsing a hidden branch point) does not make the call fail; it is reported here, and
 * that tidy-up is finished when the VM is next opened (or before its next
 * operation). The list is empty after an open and after a change without
 * a caveat; each change replaces it (reading it does not empty it). More
 * keys may be added.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
 * `CKPT_STATUS_BUSY`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_vm_warnings_json(const struct ckpt_vm *vm,
                                  char *buf,
                                  size_t len,
                                  size_t *out_len);

/**
 * Set `*out` to the number of checkpoints of the VM, hidden branch points
 * included. Indexes `0 .. *out - 1` are valid for `ckpt_vm_checkpoint_get`
 * and the other `ckpt_vm_checkpoint_*` getters until the next change
 * through the handle (a checkpoint create, apply, revert, delete or
 * rename, or a setter, even one that fails: it may have finished a
 * pending delete first); reading never moves them, and no other handle or
 * process can change the VM meanwhile (the handle holds its lock).
 * Parents come before their children. To keep hold of a checkpoint
 * across changes, keep its id (`ckpt_vm_checkpoint_id`, stable for the
 * checkpoint's life) and find it again with `ckpt_vm_checkpoint_find_id`,
 * or use the `..._by_id` calls.
 *
 * The listing is the whole tree: a hidden branch point (a deleted
 * checkpoint kept while two or more states still read its disks) is in
 * it, marked `ckpt_checkpoint_info.hidden`, because the `parent_index` of
 * the checkpoints under it leads through it. A list for a user skips the
 * hidden ones (their children then hang under the nearest visible
 * ancestor); no name lookup or operation takes a hidden one.
 *
 * This also starts a fresh measurement: the ages and sizes
 * `ckpt_vm_checkpoint_get` reports are measured at its first call after
 * this one (or after a change), for all checkpoints at once.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUSY`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `out` is NULL or valid for writing one
 * `size_t`.
 */
ckpt_status ckpt_vm_checkpoint_count(const struct ckpt_vm *vm, size_t *out);

/**
 * Fill `*info` with checkpoint `index` (see `ckpt_vm_checkpoint_count`).
 * Set `info->struct_size` to `sizeof(ckpt_checkpoint_info)` first;
 * `*info` is written only on success.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
 * (`index` out of range, `struct_size` too small), `CKPT_STATUS_BUSY`,
 * `CKPT_STATUS_IO`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `info` is NULL or points to a readable
 * and writable `ckpt_checkpoint_info` of at least `info->struct_size`
 * bytes.
 */
ckpt_status ckpt_vm_checkpoint_get(const struct ckpt_vm *vm,
                                   size_t index,
                                   struct ckpt_checkpoint_info *info);

/**
 * Copy the name of checkpoint `index` into `buf` (a string getter, as
 * described at `ckpt_disk_get_parent_path`).
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
 * `CKPT_STATUS_INVALID_ARGUMENT` (`index` out of range), `CKPT_STATUS_BUSY`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_vm_checkpoint_name(const struct ckpt_vm *vm,
                                    size_t index,
                                    char *buf,
                                    size_t len,
                                    size_t *out_len);

/**
 * Copy the stable id of checkpoint `index` (the `id` and `parent` of the
 * JSON) into `buf` (a string getter, as described at
 * `ckpt_disk_get_parent_path`). Unlike the index, the id holds for the
 * checkpoint's whole life: a rename keeps it, it is the same after a
 * crash and a reopen, and it is never given to another checkpoint (a
 * name can be: that of a deleted or hidden one). Keep it to address the
 * checkpoint later: `ckpt_vm_checkpoint_find_id` and the `..._by_id`
 * calls take it.
 *
 * Errors: as for `ckpt_vm_checkpoint_name`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_vm_checkpoint_id(const struct ckpt_vm *vm,
                                  size_t index,
                                  char *buf,
                                  size_t len,
                                  size_t *out_len);

/**
 * Copy why checkpoint `index` is not the kind that was asked for (for
 * example `"quiesce failed: the quiesce callback returned 5"`) into `buf`
 * (a string getter, as described at `ckpt_disk_get_parent_path`); the
 * empty string when it is.
 *
 * Errors: as for `ckpt_vm_checkpoint_name`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_vm_checkpoint_fallback_reason(const struct ckpt_vm *vm,
                                               size_t index,
                                               char *buf,
                                               size_t len,
                                               size_t *out_len);

/**
 * Copy the path of frozen disk `disk_index` of checkpoint `index` into
 * `buf` (a string getter, as described at `ckpt_disk_get_parent_path`).
 * Open it read-only to read the disk as it was at the checkpoint; never
 * write to it.
 *
 * Errors: as for `ckpt_vm_checkpoint_name`, and
 * `CKPT_STATUS_INVALID_ARGUMENT` for `disk_index` out of range.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_vm_checkpoint_disk_path(const struct ckpt_vm *vm,
                                         size_t index,
                                         size_t disk_index,
                                         char *buf,
                                         size_t len,
                                         size_t *out_len);

/**
 * Set `*out_index` to the index of the checkpoint called `name` (hidden
 * checkpoints have no name lookups).
 *
 * A checkpoint being deleted (`ckpt_checkpoint_info.deleting`) is still
 * found until the delete is finished.
 *
 * Names compare ignoring case (as in Windows): "before" finds "Before".
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
 * (an empty name, or one of blanks only, which no checkpoint can have; a
 * non-UTF-8 name), `CKPT_STATUS_NOT_FOUND` (no checkpoint has that name),
 * `CKPT_STATUS_BUSY`. Every function taking a checkpoint name refuses an
 * empty one the same way, and finds names the same way.
 *
 * A new name (`ckpt_vm_checkpoint_create`, the `save_current_name` of
 * `ckpt_vm_checkpoint_apply`, the `new_name` of
 * `ckpt_vm_checkpoint_rename`) must also be at most 100 characters
 * (Unicode characters, not bytes), hold no control character (newline,
 * tab, ...) and have no blank at either end (refused, not trimmed):
 * otherwise `CKPT_STATUS_INVALID_ARGUMENT`, with the rule in the last
 * error message. It is taken (`CKPT_STATUS_ALREADY_EXISTS`) when another
 * checkpoint has it, ignoring case.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `name` is NULL or a NUL-terminated
 * string; `out_index` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_vm_checkpoint_find(const struct ckpt_vm *vm, const char *name, size_t *out_index);

/**
 * Take a checkpoint called `name` (unique among the VM's checkpoints) of
 * the current state, as the VM's checkpoint type says:
 *
 * - standard: `hooks->save_memory` writes the memory state (none without
 *   it);
 * - production: `hooks->quiesce` is called; on success no memory state is
 *   kept and `hooks->thaw` is called once the disks are checkpointed; on
 *   failure (or without a quiesce callback) a standard checkpoint is
 *   taken instead, and its fallback reason says why;
 * - production-only: as production, but a failed quiesce fails the call
 *   (`CKPT_STATUS_INVALID_ARGUMENT`);
 * - disabled: refused (`CKPT_STATUS_INVALID_ARGUMENT`).
 *
 * Every VHDX disk gets a new differencing disk next to its current file;
 * the VM writes there from now on (see `ckpt_vm_current_disk_path`).
 * Pass-through devices are recorded as skipped. `hooks` may be NULL. On
 * failure nothing is left behind.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
 * (empty name, or one breaking the rule for new names given at
 * `ckpt_vm_checkpoint_find`; disabled; production-only quiesce failure),
 * `CKPT_STATUS_ALREADY_EXISTS` (the name is taken, ignoring case),
 * `CKPT_STATUS_UNSUPPORTED` (hooks from a newer header),
 * `CKPT_STATUS_NO_SPACE`,
 * `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO` (including a failed `save_memory`),
 * `CKPT_STATUS_NOT_FOUND`, `CKPT_STATUS_CORRUPT`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `name` is NULL or a NUL-terminated
 * string; `hooks` is NULL or a readable `ckpt_hooks` of at least
 * `hooks->struct_size` bytes whose callbacks may be called with its `user`
 * during this call.
 */
ckpt_status ckpt_vm_checkpoint_create(struct ckpt_vm *vm,
                                      const char *name,
                                      const struct ckpt_hooks *hooks);

/**
 * Make checkpoint `name` the active state: new differencing disks are
 * made on its disks, its configuration (memory, CPUs, hypervisor
 * settings) is restored, and the VM is saved (a checkpoint with memory
 * state: resume it) or off.
 *
 * With `save_current_name` not NULL, the current state is first kept as
 * a new checkpoint of that name (taken as `ckpt_vm_checkpoint_create`
 * does, with `hooks`); with NULL it is discarded for good.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT` (an
 * empty `name` or `save_current_name`, a `save_current_name` breaking the
 * rule for new names given at `ckpt_vm_checkpoint_find`, the current
 * state hangs under no checkpoint, or the VM is running: stop or save it
 * first), `CKPT_STATUS_NOT_FOUND` (no such checkpoint, or a
 * missing file), `CKPT_STATUS_ALREADY_EXISTS` (a taken
 * `save_current_name`), `CKPT_STATUS_UNSUPPORTED`, `CKPT_STATUS_BUSY`,
 * `CKPT_STATUS_NO_SPACE`, `CKPT_STATUS_IO`, `CKPT_STATUS_CORRUPT`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `name` is NULL or a NUL-terminated
 * string; `save_current_name` is NULL or a NUL-terminated string; `hooks`
 * as for `ckpt_vm_checkpoint_create`.
 */
ckpt_status ckpt_vm_checkpoint_apply(struct ckpt_vm *vm,
                                     const char *name,
                                     const char *save_current_name,
                                     const struct ckpt_hooks *hooks);

/**
 * Go back to the checkpoint the current state hangs under, discarding
 * everything since (apply without capture). That is never a hidden
 * checkpoint: once the checkpoint the current state hung under is
 * deleted, it is that checkpoint's parent (as `current_checkpoint` in
 * `ckpt_vm_show_json` says).
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT` (no
 * checkpoint to revert to, or the VM is running: stop or save it first),
 * `CKPT_STATUS_BUSY` (a current disk is open elsewhere), `CKPT_STATUS_IO`,
 * `CKPT_STATUS_NOT_FOUND`, `CKPT_STATUS_CORRUPT`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle.
 */
ckpt_status ckpt_vm_checkpoint_revert(struct ckpt_vm *vm);

/**
 * Delete checkpoint `name` (with `subtree != 0`, also every checkpoint
 * under it). No data the current state or another checkpoint reads is
 * lost: the checkpoint's disk data is merged into the state that depends
 * on it; only its configuration copy and memory state go. A branch point
 * (two or more states depend on it) stays as a hidden checkpoint until
 * only one is left.
 *
 * `hooks->progress` (if any) follows the merges and may cancel them
 * (`CKPT_STATUS_CANCELLED`). It is called once with `done == 0` before
 * anything changes. A delete cancelled (or failed) before the
 * checkpoint's disks changed leaves it exactly as it was. One cancelled
 * (or failed) later cannot be undone — its disks already hold part of the
 * merged data — so the checkpoint is left being deleted
 * (`ckpt_checkpoint_info.deleting`, `"deleting": true` in the JSON): it
 * can no longer be applied or exported, and the next change to the VM
 * through any handle (this delete again, any other operation, or
 * `ckpt_vm_open`) finishes the delete before doing anything else. `hooks`
 * may be NULL.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
 * (empty name),
 * `CKPT_STATUS_NOT_FOUND` (no such checkpoint, or a missing file),
 * `CKPT_STATUS_NO_SPACE` (no room for a merge; nothing changed),
 * `CKPT_STATUS_CANCELLED`, `CKPT_STATUS_UNSUPPORTED`, `CKPT_STATUS_BUSY`,
 * `CKPT_STATUS_IO`, `CKPT_STATUS_CORRUPT`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `name` is NULL or a NUL-terminated
 * string; `hooks` as for `ckpt_vm_checkpoint_create`.
 */
ckpt_status ckpt_vm_checkpoint_delete(struct ckpt_vm *vm,
                                      const char *name,
                                      int subtree,
                                      const struct ckpt_hooks *hooks);

/**
 * Rename checkpoint `name` to `new_name` (unique among the VM's
 * checkpoints).
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
 * (empty name or new name, or a new name breaking the rule given at
 * `ckpt_vm_checkpoint_find`), `CKPT_STATUS_NOT_FOUND` (no such
 * checkpoint), `CKPT_STATUS_ALREADY_EXISTS` (the new name is taken by
 * another checkpoint, ignoring case; changing only the case is fine),
 * `CKPT_STATUS_BUSY`,
 * `CKPT_STATUS_IO`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `name` and `new_name` are NULL or
 * NUL-terminated strings.
 */
ckpt_status ckpt_vm_checkpoint_rename(struct ckpt_vm *vm, const char *name, const char *new_name);

/**
 * Export checkpoint `name` (NULL: the current state) into the folder
 * `dest_dir` (made if missing; it must be empty): a standalone copy of the
 * VM as it was then, with one flattened VHDX per disk (no parent),
 * `config.json` (the configuration), and `memory.vmrs` when it has memory
 * state.
 *
 * Disk files are named after the VM's disks: `NAME.vhdx` when no other
 * disk of the VM has the same file name `NAME` (ignoring ASCII case and
 * the extension), else `NAME-K.vhdx` with K the disk's index in the VM's
 * disk order (0 first), with `-K` added again while that name is taken
 * too. So `a/disk1.vhdx`, `b/disk1.vhdx` and `c/os.vhdx` export as
 * `disk1-0.vhdx`, `disk1-1.vhdx` and `os.vhdx`. Names never collide, and
 * depend only on the VM's disks. `ckpt_vm_export_files_json` lists the
 * files made.
 *
 * `hooks->progress` (if any) follows the copies and may cancel them
 * (`CKPT_STATUS_CANCELLED`). An export that fails or is cancelled leaves
 * none of its files. `hooks` may be NULL.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
 * (`dest_dir` not empty, an empty name), `CKPT_STATUS_NOT_FOUND` (no
 * such checkpoint, or a missing file), `CKPT_STATUS_BUSY` (also: the
 * checkpoint is being deleted), `CKPT_STATUS_NO_SPACE`,
 * `CKPT_STATUS_CANCELLED`, `CKPT_STATUS_UNSUPPORTED`, `CKPT_STATUS_IO`,
 * `CKPT_STATUS_CORRUPT`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `name` is NULL or a NUL-terminated
 * string; `dest_dir` is NULL or a NUL-terminated string; `hooks` as for
 * `ckpt_vm_checkpoint_create`.
 */
ckpt_status ckpt_vm_checkpoint_export(struct ckpt_vm *vm,
                                      const char *name,
                                      const char *dest_dir,
                                      const struct ckpt_hooks *hooks);

/**
 * Copy the list of the files the last successful
 * `ckpt_vm_checkpoint_export` through this handle made into `buf` (a
 * string getter, as described at `ckpt_disk_get_parent_path`), as JSON:
 * `{"files": [{"path": "/abs/dest/os.vhdx", "kind": "disk",
 * "disk_index": 0}, ..., {"path": "/abs/dest/config.json", "kind":
 * "config"}, {"path": "/abs/dest/memory.vmrs", "kind": "memory"}]}` —
 * disks first, in the VM's disk order, then the configuration, then the
 * memory state when there is one. More keys (and kinds) may be added.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
 * `CKPT_STATUS_NOT_FOUND` (no export through this handle succeeded since
 * it was opened, or the last one failed), `CKPT_STATUS_BUSY`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_vm_export_files_json(const struct ckpt_vm *vm,
                                      char *buf,
                                      size_t len,
                                      size_t *out_len);

/**
 * Copy the path of the memory-state file the current state resumes from
 * into `buf` (a string getter, as described at
 * `ckpt_disk_get_parent_path`): the empty string when it has none
 * (`ckpt_vm_info.has_saved_state` is false). After applying a standard
 * checkpoint this is that checkpoint's own file, borrowed: resume from it,
 * never write into it (a new save goes to a new file). The path is
 * absolute, as the bytes the file system holds.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
 * `CKPT_STATUS_BUSY`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_vm_current_saved_state_path(const struct ckpt_vm *vm,
                                             char *buf,
                                             size_t len,
                                             size_t *out_len);

/**
 * Copy the path of the memory-state file of checkpoint `index` (see
 * `ckpt_vm_checkpoint_count`) into `buf` (a string getter, as described
 * at `ckpt_disk_get_parent_path`): the empty string when it has none
 * (`ckpt_checkpoint_info.has_saved_state` is false). Never write into it.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
 * `CKPT_STATUS_INVALID_ARGUMENT` (`index` out of range), `CKPT_STATUS_BUSY`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_vm_checkpoint_saved_state_path(const struct ckpt_vm *vm,
                                                size_t index,
                                                char *buf,
                                                size_t len,
                                                size_t *out_len);

/**
 * Copy the hypervisor's own settings of the current state (the
 * `hypervisor_json` of `ckpt_vm_spec`, `ckpt_vm_set_hypervisor_settings`,
 * or what the last apply restored) into `buf` as compact JSON text (a
 * string getter, as described at `ckpt_disk_get_parent_path`): `null`
 * when there are none. The library keeps the JSON as it is: its layout
 * is the hypervisor's.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
 * `CKPT_STATUS_BUSY`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_vm_hypervisor_json(const struct ckpt_vm *vm,
                                    char *buf,
                                    size_t len,
                                    size_t *out_len);

/**
 * Copy the hypervisor settings checkpoint `index` keeps (the ones
 * applying it restores: `ckpt_vm_hypervisor_json` gives them after the
 * apply) into `buf` as compact JSON text, as `ckpt_vm_hypervisor_json`
 * does. They are read from the checkpoint's configuration copy.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
 * `CKPT_STATUS_INVALID_ARGUMENT` (`index` out of range), `CKPT_STATUS_BUSY`,
 * `CKPT_STATUS_NOT_FOUND` / `CKPT_STATUS_IO` / `CKPT_STATUS_CORRUPT` (the
 * configuration copy is missing or cannot be read).
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_vm_checkpoint_hypervisor_json(const struct ckpt_vm *vm,
                                               size_t index,
                                               char *buf,
                                               size_t len,
                                               size_t *out_len);

/**
 * Copy the absolute path of the VM's checkpoint location (where
 * configuration copies and memory states go: the one set, or the folder
 * `checkpoints` in the VM folder) into `buf` (a string getter, as
 * described at `ckpt_disk_get_parent_path`).
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
 * `CKPT_STATUS_BUSY`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_vm_get_checkpoint_location(const struct ckpt_vm *vm,
                                            char *buf,
                                            size_t len,
                                            size_t *out_len);

/**
 * Copy pass-through device `index` of the VM (`0 ..
 * ckpt_vm_info.passthrough_count - 1`, in the order of
 * `ckpt_vm_spec.passthrough`) into `buf` (a string getter, as described
 * at `ckpt_disk_get_parent_path`).
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
 * `CKPT_STATUS_INVALID_ARGUMENT` (`index` out of range), `CKPT_STATUS_BUSY`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_vm_passthrough(const struct ckpt_vm *vm,
                                size_t index,
                                char *buf,
                                size_t len,
                                size_t *out_len);

/**
 * Copy device `device_index` of the pass-through devices checkpoint
 * `index` did not checkpoint (`0 ..
 * ckpt_checkpoint_info.skipped_passthrough_count - 1`) into `buf` (a
 * string getter, as described at `ckpt_disk_get_parent_path`).
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
 * `CKPT_STATUS_INVALID_ARGUMENT` (an index out of range),
 * `CKPT_STATUS_BUSY`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_vm_checkpoint_skipped_device(const struct ckpt_vm *vm,
                                              size_t index,
                                              size_t device_index,
                                              char *buf,
                                              size_t len,
                                              size_t *out_len);

/**
 * Set `*out_index` to the index (see `ckpt_vm_checkpoint_count`) of the
 * checkpoint whose id is `id`. Unlike `ckpt_vm_checkpoint_find`, every
 * checkpoint is found, hidden branch points (`ckpt_checkpoint_info.hidden`)
 * and checkpoints being deleted included.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT` (an
 * empty id, or not UTF-8), `CKPT_STATUS_NOT_FOUND` (no checkpoint has that
 * id: it was deleted, or never existed), `CKPT_STATUS_BUSY`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `id` is NULL or a NUL-terminated
 * string; `out_index` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_vm_checkpoint_find_id(const struct ckpt_vm *vm, const char *id, size_t *out_index);

/**
 * `ckpt_vm_checkpoint_get` of the checkpoint whose id is `id`.
 *
 * Errors: as for `ckpt_vm_checkpoint_find_id` and
 * `ckpt_vm_checkpoint_get`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `id` is NULL or a NUL-terminated
 * string; `info` as for `ckpt_vm_checkpoint_get`.
 */
ckpt_status ckpt_vm_checkpoint_get_by_id(const struct ckpt_vm *vm,
                                         const char *id,
                                         struct ckpt_checkpoint_info *info);

/**
 * `ckpt_vm_checkpoint_apply` of the checkpoint whose id is `id`.
 *
 * Errors: as for `ckpt_vm_checkpoint_apply`; also
 * `CKPT_STATUS_NOT_FOUND` (no checkpoint has that id) and
 * `CKPT_STATUS_INVALID_ARGUMENT` (an empty id, or a hidden branch point,
 * which no operation takes).
 *
 * # Safety
 *
 * As for `ckpt_vm_checkpoint_apply`, `id` in place of `name`.
 */
ckpt_status ckpt_vm_checkpoint_apply_by_id(struct ckpt_vm *vm,
                                           const char *id,
                                           const char *save_current_name,
                                           const struct ckpt_hooks *hooks);

/**
 * `ckpt_vm_checkpoint_delete` of the checkpoint whose id is `id`.
 *
 * Errors: as for `ckpt_vm_checkpoint_delete` and
 * `ckpt_vm_checkpoint_apply_by_id`.
 *
 * # Safety
 *
 * As for `ckpt_vm_checkpoint_delete`, `id` in place of `name`.
 */
ckpt_status ckpt_vm_checkpoint_delete_by_id(struct ckpt_vm *vm,
                                            const char *id,
                                            int subtree,
                                            const struct ckpt_hooks *hooks);

/**
 * `ckpt_vm_checkpoint_rename` of the checkpoint whose id is `id` (the id
 * stays).
 *
 * Errors: as for `ckpt_vm_checkpoint_rename` and
 * `ckpt_vm_checkpoint_apply_by_id`.
 *
 * # Safety
 *
 * As for `ckpt_vm_checkpoint_rename`, `id` in place of `name`.
 */
ckpt_status ckpt_vm_checkpoint_rename_by_id(struct ckpt_vm *vm,
                                            const char *id,
                                            const char *new_name);

/**
 * `ckpt_vm_checkpoint_export` of the checkpoint whose id is `id` (the
 * current state has no id: export it with `ckpt_vm_checkpoint_export`
 * and a NULL name). `ckpt_vm_export_files_json` lists the files made.
 *
 * Errors: as for `ckpt_vm_checkpoint_export` and
 * `ckpt_vm_checkpoint_apply_by_id`.
 *
 * # Safety
 *
 * As for `ckpt_vm_checkpoint_export`, `id` (not NULL) in place of
 * `name`.
 */
ckpt_status ckpt_vm_checkpoint_export_by_id(struct ckpt_vm *vm,
                                            const char *id,
                                            const char *dest_dir,
                                            const struct ckpt_hooks *hooks);

/**
 * Export checkpoint `name` (NULL: the current state) into the folder
 * `dest_dir` as an incremental backup on the export folder `base_dir`:
 * per disk a differencing VHDX whose parent is `base_dir`'s disk (its
 * locator holds the relative and the absolute path, its linkage the
 * parent's DataWriteGuid), holding exactly the sectors that may differ
 * between checkpoint `since` (REF) and the point exported, with that
 * point's content there; `config.json` (with the export's manifest) and
 * the memory state as `ckpt_vm_checkpoint_export`. The chain full export
 * → incremental → … opens with libckpt, libvhdi and Hyper-V.
 *
 * REF is an earlier checkpoint on the path to `name`, one on another
 * branch (then the changes of both sides since their common ancestor),
 * or a reference point (`ckpt_vm_checkpoint_reference`).
 * `base_dir` must be the export that captured REF (a full export of REF,
 * or an incremental up to REF), unchanged since: its manifest says so,
 * and its disks still have the DataWriteGuids, virtual sizes and sector
 * sizes it recorded. The current state of a running VM (its live disks
 * handed out by `ckpt_vm_disk`) is exported through a temporary
 * checkpoint, as `ckpt_vm_checkpoint_export` does.
 *
 * `hooks->progress` follows the copy and may cancel it. An export that
 * fails or is cancelled leaves none of its files; a refusal changes
 * nothing. `ckpt_vm_export_files_json` lists the files made.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER` (`vm`, `since`, `base_dir` or
 * `dest_dir` NULL), `CKPT_STATUS_INVALID_ARGUMENT` (REF not older than
 * the point exported, `base_dir` captured another point, belongs to
 * another VM, was changed or has no manifest, `dest_dir` not empty),
 * `CKPT_STATUS_NOT_FOUND` (no such checkpoint, `base_dir` missing or no
 * export), `CKPT_STATUS_BUSY`, `CKPT_STATUS_NO_SPACE`,
 * `CKPT_STATUS_CANCELLED`, `CKPT_STATUS_UNSUPPORTED` (a disk resized
 * between REF and the point exported), `CKPT_STATUS_IO`,
 * `CKPT_STATUS_CORRUPT`, `CKPT_STATUS_PARENT_MISMATCH`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `name` is NULL or a NUL-terminated
 * string; `since`, `base_dir` and `dest_dir` are NULL or NUL-terminated
 * strings; `hooks` as for `ckpt_vm_checkpoint_create`.
 */
ckpt_status ckpt_vm_checkpoint_export_incremental(struct ckpt_vm *vm,
                                                  const char *name,
                                                  const char *since,
                                                  const char *base_dir,
                                                  const char *dest_dir,
                                                  const struct ckpt_hooks *hooks);

/**
 * Open an iterator over the byte ranges of disk `disk_index` (in the
 * VM's disk order) that may differ between checkpoint `since` (REF) and
 * checkpoint `to` (NULL: the current state): exact to the logical
 * sector, sorted, non-overlapping and coalesced; what an incremental
 * export since REF copies. REF is an earlier checkpoint on the path to
 * `to`, one on another branch (then through their common ancestor), or a
 * reference point (`ckpt_vm_checkpoint_reference`; what its change map
 * holds is exact to 64 KiB).
 * The ranges are computed by this call; for the current state of a
 * running VM, they are those of its live disks now.
 *
 * `*out` receives the iterator; free it with `ckpt_vm_changes_free`.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER` (`vm`, `since` or `out` NULL),
 * `CKPT_STATUS_INVALID_ARGUMENT` (REF is `to` or was taken after it on its
 * path, `disk_index` past the last disk, an empty name),
 * `CKPT_STATUS_NOT_FOUND` (no such checkpoint or reference point),
 * `CKPT_STATUS_BUSY`, `CKPT_STATUS_UNSUPPORTED` (the disk was resized in
 * between),
 * `CKPT_STATUS_IO`, `CKPT_STATUS_CORRUPT`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `since` is NULL or a NUL-terminated
 * string; `to` is NULL or a NUL-terminated string; `out` is NULL or valid
 * for writing one pointer.
 */
ckpt_status ckpt_vm_changes_open(struct ckpt_vm *vm,
                                 const char *since,
                                 const char *to,
                                 size_t disk_index,
                                 struct ckpt_vm_changes **out);

/**
 * The next range of `changes`: on success `*out_more` is true and `*out`
 * holds the range, or, once every range was given, `*out_more` is false
 * and `*out` is not touched (and every later call says the same).
 *
 * Errors: `CKPT_STATUS_NULL_POINTER` (`changes`, `out` or `out_more`
 * NULL).
 *
 * # Safety
 *
 * `changes` is NULL or an iterator from `ckpt_vm_changes_open` not yet
 * freed; `out` is NULL or valid for writing one `ckpt_range`; `out_more`
 * is NULL or valid for writing one `bool`.
 */
ckpt_status ckpt_vm_changes_next(struct ckpt_vm_changes *changes,
                                 struct ckpt_range *out,
                                 bool *out_more);

/**
 * Free an iterator from `ckpt_vm_changes_open`. NULL is accepted (and
 * does nothing).
 *
 * # Safety
 *
 * `changes` is NULL or an iterator from `ckpt_vm_changes_open` not yet
 * freed; it must not be used afterwards.
 */
void ckpt_vm_changes_free(struct ckpt_vm_changes *changes);

/**
 * The restore check of a backup set (as `ckpt verify-backup`): open the
 * chain of every disk of the newest export, check its linkage, sizes,
 * structure and each file's DataWriteGuid against its export's manifest,
 * and read it end to end. `dirs` holds `dir_count` export folders: the
 * whole set, oldest (the full export) first, or only the newest (its
 * chain is followed through the parent locators).
 *
 * `*out_ok` is set to whether every disk restores (whenever the check
 * ran). The report goes into `buf` as a string (the buffer rules of
 * `ckpt_disk_get_parent_path`; a call that finds the buffer too small
 * runs the whole check again when called with a larger one): JSON
 * `{"ok": bool, "disks": [{"file", "chain" (newest first),
 * "virtual_size", "error" (null, or what is wrong)}]}`, in the VM's disk
 * order. A damaged backup is not an error of the call: `*out_ok` is
 * false and the report says why.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER` (`dirs`, an element, or `out_ok`
 * NULL), `CKPT_STATUS_INVALID_ARGUMENT` (`dir_count` 0, an empty path, no
 * manifest in the newest export), `CKPT_STATUS_NOT_FOUND` (the newest
 * folder missing), `CKPT_STATUS_BUFFER_TOO_SMALL`, `CKPT_STATUS_IO`.
 *
 * # Safety
 *
 * `dirs` is NULL or valid for reads of `dir_count` pointers, each NULL or
 * a NUL-terminated string; `out_ok` is NULL or valid for writing one
 * `bool`; `buf` is NULL or valid for writes of `len` bytes; `out_len` is
 * NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_verify_backup(const char *const *dirs,
                               size_t dir_count,
                               bool *out_ok,
                               char *buf,
                               size_t len,
                               size_t *out_len);

/**
 * Turn checkpoint `name` into a reference point: the checkpoint is
 * deleted (its disks merged, as `ckpt_vm_checkpoint_delete` does; its
 * configuration copy and memory state go), and what is left answers
 * exactly what changed since it: `ckpt_vm_changes_open` and
 * `ckpt_vm_checkpoint_export_incremental` with `since = name` (on the
 * export that captured the checkpoint). A reference point keeps no data
 * and never blocks a merge or a delete. A conversion interrupted after
 * the reference point was recorded is finished by calling this again.
 * `hooks` may be NULL (`progress` follows the merge).
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
 * (empty name), `CKPT_STATUS_NOT_FOUND` (no such checkpoint),
 * `CKPT_STATUS_ALREADY_EXISTS` (a reference point of that name exists),
 * `CKPT_STATUS_BUSY`, `CKPT_STATUS_NO_SPACE`, `CKPT_STATUS_CANCELLED`,
 * `CKPT_STATUS_IO`, `CKPT_STATUS_CORRUPT`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `name` is NULL or a NUL-terminated
 * string; `hooks` as for `ckpt_vm_checkpoint_create`.
 */
ckpt_status ckpt_vm_checkpoint_reference(struct ckpt_vm *vm,
                                         const char *name,
                                         const struct ckpt_hooks *hooks);

/**
 * Delete reference point `name` (its change maps go; nothing else
 * changes).
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
 * (empty name), `CKPT_STATUS_NOT_FOUND` (no such reference point),
 * `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `name` is NULL or a NUL-terminated
 * string.
 */
ckpt_status ckpt_vm_reference_delete(struct ckpt_vm *vm, const char *name);

/**
 * Copy the reference points as JSON into `buf` (a string getter, as
 * described at `ckpt_vm_checkpoints_json`): `{"references": [{"name",
 * "id", "type", "created", "converted", "age_seconds", "map_bytes",
 * "anchors"}, ...]}`, oldest first. `created` is when the checkpoint was
 * taken, `converted` when it became a reference point (seconds since the
 * Unix epoch), `map_bytes` what its change maps hold.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
 * `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO`, `CKPT_STATUS_CORRUPT` (a damaged
 * change map).
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
 * `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
 */
ckpt_status ckpt_vm_references_json(const struct ckpt_vm *vm,
                                    char *buf,
                                    size_t len,
                                    size_t *out_len);

/**
 * Write disk `disk_index`'s state at checkpoint `to` (NULL: the current
 * state) as an "rbd diff v1" stream to the file descriptor `fd` (a file
 * or a pipe into `rbd import-diff - POOL/IMAGE`; it is not closed). With
 * `from` (a checkpoint older than `to`, one on another branch, or a
 * reference point: its exact changes, as `ckpt_vm_changes_open` gives)
 * only the ranges that differ from `from` go, after an `f` record naming
 * `from`'s snapshot; without it, every allocated range. A `to` checkpoint adds a
 * `t` record (then `rbd import-diff` creates that snapshot once applied).
 * Ranges that read zeros go as `z` records. Snapshot names are the
 * checkpoint names, mapped as `ckpt vm export-rbd` maps them (README,
 * "RBD"). `*out_stats` (when not NULL) receives what was written.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER` (`vm` NULL),
 * `CKPT_STATUS_INVALID_ARGUMENT` (`disk_index` past the last disk, `from`
 * is `to`, an empty name), `CKPT_STATUS_NOT_FOUND` (no such checkpoint),
 * `CKPT_STATUS_BUSY` (the current state of an attached VM),
 * `CKPT_STATUS_UNSUPPORTED` (the disk was resized in between),
 * `CKPT_STATUS_IO` (a write to `fd` failed, e.g. a closed pipe),
 * `CKPT_STATUS_CORRUPT`. On an error part of the stream may have been
 * written (without its end record, so `rbd import-diff` refuses it).
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `from` and `to` are NULL or
 * NUL-terminated strings; `fd` is an open file descriptor the caller
 * keeps open during the call; `out_stats` is NULL or valid for writing
 * one `ckpt_rbd_diff_stats`.
 */
ckpt_status ckpt_vm_write_rbd_diff(struct ckpt_vm *vm,
                                   size_t disk_index,
                                   const char *from,
                                   const char *to,
                                   int fd,
                                   struct ckpt_rbd_diff_stats *out_stats);

/**
 * Export the VM's checkpoint tree into Ceph RBD images in `pool` through
 * the `rbd` tool, as `ckpt vm export-rbd` does (README, "RBD"): per disk
 * K an image `PREFIX-diskK` (`prefix` NULL: the VM's name) with one
 * snapshot per checkpoint from the root to the current state and the
 * current state as its head; other branches as clones. Run again, only
 * what the cluster lacks is sent. An interrupted export leaves complete
 * snapshots only, and running it again finishes. `*out_stats` (when not
 * NULL; set its `struct_size` first) receives what was sent.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER` (`vm`, `pool`),
 * `CKPT_STATUS_INVALID_ARGUMENT` (an empty pool or one with `/` or `@`,
 * unknown flags, a bad prefix, an image of that name that another VM
 * made), `CKPT_STATUS_BUSY` (the VM is attached: detach it first),
 * `CKPT_STATUS_NOT_FOUND` (the `rbd` program), `CKPT_STATUS_IO` (`rbd`
 * failed: its message is in `ckpt_last_error`), `CKPT_STATUS_CORRUPT`
 * (what `rbd` read back differs from what was sent).
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `pool` and `prefix` are NULL or
 * NUL-terminated strings; `options` is NULL or points to a readable
 * struct of at least `options->struct_size` bytes whose strings are NULL
 * or NUL-terminated and whose `message` (if set) may be called with
 * `user` during the call; `out_stats` is NULL or points to a writable
 * struct of at least `out_stats->struct_size` bytes.
 */
ckpt_status ckpt_vm_export_rbd(struct ckpt_vm *vm,
                               const char *pool,
                               const char *prefix,
                               const struct ckpt_rbd_options *options,
                               struct ckpt_rbd_export_stats *out_stats);

/**
 * Make a new VM in folder `dir` from `count` RBD images (`images[i]` is
 * "POOL/IMAGE", one disk each, in order), as `ckpt vm import-rbd` does: a
 * base VHDX per image filled from its first snapshot, one checkpoint per
 * later snapshot (named after it), and the images' heads as the current
 * state; the images must have the same snapshots. `name` is the new VM's
 * name. On success `*out` is a handle to the new VM (free it with
 * `ckpt_vm_close`). A failed import leaves what it made in `dir`: remove
 * the folder and import again.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER` (`images` with `count > 0`, an
 * element, `dir`, `name`, `out`), `CKPT_STATUS_INVALID_ARGUMENT` (`count`
 * 0, an image without a pool, a snapshot given, images with different
 * snapshots, `dir` holding a VM), `CKPT_STATUS_NOT_FOUND` (the `rbd`
 * program, an image), `CKPT_STATUS_IO` (`rbd` failed),
 * `CKPT_STATUS_CORRUPT` (a stream `rbd` sent is malformed).
 *
 * # Safety
 *
 * `images` is NULL or points to `count` readable pointers, each NULL or
 * a NUL-terminated string; `dir` and `name` are NULL or NUL-terminated
 * strings; `options` as for `ckpt_vm_export_rbd` (its flags must be 0);
 * `out` is NULL or valid for writing one pointer.
 */
ckpt_status ckpt_vm_import_rbd(const char *const *images,
                               size_t count,
                               const char *dir,
                               const char *name,
                               const struct ckpt_rbd_options *options,
                               struct ckpt_vm **out);

/**
 * Write disk `disk_index` as a whole RBD image in the `rbd export
 * --export-format 2` layout to the file descriptor `fd` (for `rbd import
 * --export-format 2 - POOL/IMAGE`; it is not closed): one snapshot per
 * checkpoint on the path from the root to the current state, oldest
 * first, named as `ckpt vm export-rbd` names them, each as its changes
 * since the one before, and the current state as the image's head.
 * Checkpoints on other branches are not in it. `*out_stats` (when not
 * NULL) receives what was written.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER` (`vm`), `CKPT_STATUS_INVALID_ARGUMENT`
 * (`disk_index` past the last disk, a bad `fd`), `CKPT_STATUS_BUSY` (an
 * attached VM), `CKPT_STATUS_UNSUPPORTED` (the disk was resized along the
 * path), `CKPT_STATUS_IO` (a write to `fd` failed), `CKPT_STATUS_CORRUPT`.
 * On an error part of the stream may have been written (without its end,
 * so `rbd import` refuses it).
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `fd` is an open file descriptor the
 * caller keeps open during the call; `out_stats` is NULL or valid for
 * writing one `ckpt_rbd_diff_stats`.
 */
ckpt_status ckpt_vm_write_rbd_image(struct ckpt_vm *vm,
                                    size_t disk_index,
                                    int fd,
                                    struct ckpt_rbd_diff_stats *out_stats);

/**
 * Offer the VM's control channel: listen on the Unix socket
 * `DIR/ckpt-control.sock` (mode 0600) and carry out, on this handle, the
 * checkpoint operations that processes of the same user send (the `ckpt`
 * tool forwards `ckpt checkpoint …` and `ckpt vm show|set` to it). A
 * request from another user is refused. The server runs on library
 * threads until `ckpt_vm_stop_control` or `ckpt_vm_close`. A socket left
 * by a holder that was killed is replaced.
 *
 * `hooks` (may be NULL: none) quiesce, thaw and save the memory of the
 * guest for the checkpoints these requests take; they are called from a
 * library thread, one at a time, for as long as the server runs (copied:
 * the struct need not outlive the call; its `user_data` must).
 *
 * A request takes the handle as any call does, so that a call of this
 * process on the handle while a request runs fails with
 * `CKPT_STATUS_BUSY` (as for two threads); requests wait for this
 * process's calls to end.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT` (the
 * hooks are malformed, or this handle already serves), `CKPT_STATUS_BUSY`
 * (another process serves the socket), `CKPT_STATUS_IO`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `hooks` is NULL or points to a readable
 * `ckpt_hooks` whose callbacks may be called from any thread until the
 * server stops.
 */
ckpt_status ckpt_vm_serve_control(struct ckpt_vm *vm, const struct ckpt_hooks *hooks);

/**
 * Stop the VM's control channel (waiting for the request it runs) and
 * remove its socket. A handle that does not serve is left as it is;
 * `vm` may be NULL.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle.
 */
ckpt_status ckpt_vm_stop_control(struct ckpt_vm *vm);

/**
 * The live handle of disk `index` of the VM's current state (the order of
 * the VM's disks; pass-through devices are not disks), for the guest's
 * I/O.
 *
 * The first call attaches the VM: every current disk is opened for
 * reading and writing (all or none; a disk open elsewhere is
 * `CKPT_STATUS_BUSY`, and then none stays open). Later calls give the same
 * handle for the same index. `*out` is written only on success.
 *
 * The handle is borrowed from `vm`: valid until `ckpt_vm_close`, which
 * flushes and closes it; `ckpt_disk_close` refuses it
 * (`CKPT_STATUS_INVALID_ARGUMENT`). It takes every `ckpt_disk_*` call and
 * may be used from any thread, also while a call on `vm` runs: checkpoint
 * create switches it to the new differencing disk in a short pause (its
 * requests wait, none fails), apply and revert (guest stopped or saved)
 * switch it to the new current state. Its identity never changes.
 *
 * Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
 * (`index` past the last disk: nothing is attached; or a disk another VM
 * uses), `CKPT_STATUS_BUSY` (a disk is open elsewhere, or the handle is in
 * use by another call), `CKPT_STATUS_IO`, `CKPT_STATUS_CORRUPT`.
 *
 * # Safety
 *
 * `vm` is NULL or a live handle; `out` is NULL or valid for writing one
 * pointer. Every borrowed disk handle must be out of use (on every thread)
 * before `ckpt_vm_close`.
 */
ckpt_status ckpt_vm_disk(const struct ckpt_vm *vm, size_t index, struct ckpt_disk **out);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* LIBCKPT_H */
