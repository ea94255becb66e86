/*
 * The one helper header of the C tests of libckpt (run by tests/c_api.rs):
 * a tiny test harness and the helpers more than one test needs.
 *
 * CHECK(cond) records a failure (with the file, line and the thread's last
 * error) and goes on; EXPECT_STATUS(call, status) checks a call's status.
 * A test's main() returns check_finish(), which prints "N passed, N failed"
 * and gives the exit code.
 *
 * Also: scratch sub-directories (make_dir_in), disks (make_disk), the
 * VM info, small files (slurp), a progress callback that cancels
 * (canceller), and the writer of self-describing 4 KiB units that the
 * tests of running VMs use (struct unit_writer, unit_write_loop).
 */
#ifndef CKPT_TEST_UTIL_H
#define CKPT_TEST_UTIL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "libckpt.h"

#define MIB (1024u * 1024u)

/* Values no call returns, for checking that an output was not written. */
#define DISK_SENTINEL ((ckpt_disk *)(uintptr_t)0x5a5a)
#define VM_SENTINEL ((ckpt_vm *)(uintptr_t)0x5b5b)

static int check_passed = 0;
static int check_failed = 0;

static inline void check_report(const char *file, int line, const char *what) {
    char msg[512];
    size_t len = 0;
    ckpt_status s = ckpt_last_error(msg, sizeof msg, &len);
    if (s != CKPT_STATUS_OK && s != CKPT_STATUS_BUFFER_TOO_SMALL) {
        msg[0] = '\0';
    }
    fprintf(stderr, "%s:%d: FAILED: %s\n    last error: %s\n", file, line, what, msg);
    check_failed++;
}

#define CHECK(cond)                                          \
    do {                                                     \
        if (cond) {                                          \
            check_passed++;                                  \
        } else {                                             \
            check_report(__FILE__, __LINE__, #cond);         \
        }                                                    \
    } while (0)

#define EXPECT_STATUS(call, expected)                                                      \
    do {                                                                                   \
        ckpt_status got_ = (call);                                                         \
        if (got_ == (expected)) {                                                          \
            check_passed++;                                                                \
        } else {                                                                           \
            char what_[512];                                                               \
            snprintf(what_, sizeof what_, "%s returned %s, expected %s", #call,            \
                     ckpt_status_name(got_), ckpt_status_name(expected));                  \
            check_report(__FILE__, __LINE__, what_);                                       \
        }                                                                                  \
    } while (0)

#define EXPECT_OK(call) EXPECT_STATUS(call, CKPT_STATUS_OK)

/* The thread's last error message, copied into a static buffer. */
static inline const char *last_error_text(void) {
    static char buf[1024];
    size_t len = 0;
    if (ckpt_last_error(buf, sizeof buf, &len) != CKPT_STATUS_OK) {
        buf[0] = '\0';
    }
    return buf;
}

/* dir + "/" + name into a static buffer (one at a time). */
static inline const char *path_in(const char *dir, const char *name) {
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", dir, name);
    return buf;
}

/* Child options with one block size and defaults for the rest. */
static inline ckpt_child_options child_options(uint32_t block_size) {
    ckpt_child_options co;
    memset(&co, 0, sizeof co);
    co.struct_size = sizeof co;
    co.block_size = block_size;
    return co;
}

/* Whether `path` exists and can be opened for reading. */
static inline int file_exists(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f != NULL) {
        fclose(f);
        return 1;
    }
    return 0;
}

/* The number of files in the chain of the disk at `path` (0 when it does
 * not open). */
static inline size_t chain_length(const char *path) {
    ckpt_disk *disk = NULL;
    size_t n = 0;
    if (ckpt_disk_open(path, CKPT_OPEN_READ_ONLY, &disk) != CKPT_STATUS_OK) {
        return 0;
    }
    if (ckpt_disk_chain_length(disk, &n) != CKPT_STATUS_OK) {
        n = 0;
    }
    ckpt_disk_close(disk);
    return n;
}

/* DIR/NAME made as a fresh directory, its path into `out`; 0 on failure
 * (recorded as a failed check). */
static inline int make_dir_in(const char *dir, const char *name, char *out, size_t len) {
    int n = snprintf(out, len, "%s/%s", dir, name);
    int ok = n > 0 && (size_t)n < len && mkdir(out, 0755) == 0;
    CHECK(ok);
    return ok;
}

/* A dynamic disk of `size` bytes (1 MiB blocks) at `path`. */
static inline void make_disk(const char *path, uint64_t size) {
    ckpt_create_options o;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.block_size = MIB;
    ckpt_disk *disk = NULL;
    EXPECT_OK(ckpt_disk_create(path, size, &o, &disk));
    EXPECT_OK(ckpt_disk_close(disk));
}

static inline ckpt_vm_info vm_info(ckpt_vm *vm) {
    ckpt_vm_info i;
    memset(&i, 0, sizeof i);
    i.struct_size = sizeof i;
    EXPECT_OK(ckpt_vm_get_info(vm, &i));
    return i;
}

/* The contents of a small file into `buf` ("" when unreadable). */
static inline const char *slurp(const char *path, char *buf, size_t len) {
    FILE *f = fopen(path, "rb");
    buf[0] = '\0';
    if (f != NULL) {
        size_t n = fread(buf, 1, len - 1, f);
        buf[n] = '\0';
        fclose(f);
    }
    return buf;
}

/* A progress callback (`user`: a canceller) that counts its calls and
 * cancels from call `cancel_at` on (1 = the first; 0 = every call). */
typedef struct {
    int calls;
    int cancel_at; /* the call (1 = the first) that cancels */
} canceller;

static inline int cancel_progress(uint64_t done, uint64_t total, void *user) {
    canceller *c = user;
    (void)done;
    (void)total;
    c->calls++;
    return c->calls >= c->cancel_at;
}

/* ---- self-describing units, written by a thread per disk ----
 *
 * Unit `u` of disk `d` is UNIT_BYTES at u * stride; write `round` of it
 * holds the round in its first 8 bytes and a pattern of (disk, unit,
 * round) after. A writer writes every unit once per round, then flushes;
 * it publishes per unit the round it is about to write (`started`) and
 * the last one whose write returned (`done`), and the last round whose
 * flush returned (`flushed`). */

#define UNIT_BYTES 4096u
#define UNIT_COUNT 32u

static inline void fill_unit(uint8_t *buf, unsigned disk, unsigned unit, uint64_t round) {
    for (unsigned i = 0; i < UNIT_BYTES; i++) {
        buf[i] = (uint8_t)((disk * 31u + unit * 7u + (unsigned)round + i) | 1u);
    }
    memcpy(buf, &round, sizeof round);
}

/* The round a unit holds (0: never written); -1 for anything else. */
static inline int64_t unit_round(const uint8_t *buf, unsigned disk, unsigned unit) {
    int zero = 1;
    for (unsigned i = 0; i < UNIT_BYTES; i++) {
        if (buf[i] != 0) {
            zero = 0;
            break;
        }
    }
    if (zero) {
        return 0;
    }
    uint64_t round;
    memcpy(&round, buf, sizeof round);
    uint8_t want[UNIT_BYTES];
    fill_unit(want, disk, unit, round);
    return memcmp(want, buf, UNIT_BYTES) == 0 ? (int64_t)round : -1;
}

struct unit_writer {
    ckpt_disk *disk;
    unsigned index;   /* the disk's index, written into its units */
    uint64_t stride;  /* bytes between units */
    atomic_bool stop;
    _Atomic uint64_t started[UNIT_COUNT];
    _Atomic uint64_t done[UNIT_COUNT];
    _Atomic uint64_t flushed;
    int failed;       /* a write or flush failed (the thread then ends) */
};

/* Set up `w` for disk `index` through `disk` before its thread starts. */
static inline void unit_writer_init(struct unit_writer *w, ckpt_disk *disk, unsigned index,
                                    uint64_t stride) {
    w->disk = disk;
    w->index = index;
    w->stride = stride;
    w->failed = 0;
    atomic_init(&w->stop, false);
    atomic_init(&w->flushed, 0);
    for (unsigned u = 0; u < UNIT_COUNT; u++) {
        atomic_init(&w->started[u], 0);
        atomic_init(&w->done[u], 0);
    }
}

/* Why writer `w` stopped, on stderr (its own buffer: threads). */
static inline void unit_writer_report(const struct unit_writer *w, const char *what) {
    char msg[512];
    size_t len = 0;
    if (ckpt_last_error(msg, sizeof msg, &len) != CKPT_STATUS_OK) {
        msg[0] = '\0';
    }
    fprintf(stderr, "writer %u: %s failed: %s\n", w->index, what, msg);
}

/* The thread body (a pthread start routine): rounds until `stop`. */
static inline void *unit_write_loop(void *arg) {
    struct unit_writer *w = arg;
    uint8_t buf[UNIT_BYTES];
    uint64_t round = 0;
    while (!atomic_load(&w->stop)) {
        round++;
        for (unsigned u = 0; u < UNIT_COUNT && !atomic_load(&w->stop); u++) {
            atomic_store(&w->started[u], round);
            fill_unit(buf, w->index, u, round);
            if (ckpt_disk_write(w->disk, buf, UNIT_BYTES, (uint64_t)u * w->stride) !=
                CKPT_STATUS_OK) {
                unit_writer_report(w, "write");
                w->failed = 1;
                return NULL;
            }
            atomic_store(&w->done[u], round);
        }
        if (ckpt_disk_flush(w->disk) != CKPT_STATUS_OK) {
            unit_writer_report(w, "flush");
            w->failed = 1;
            return NULL;
        }
        atomic_store(&w->flushed, round);
    }
    return NULL;
}

/* Wait until writer `w` finished `rounds` rounds (or failed). */
static inline void unit_writer_wait(struct unit_writer *w, uint64_t rounds) {
    while (atomic_load(&w->done[UNIT_COUNT - 1]) < rounds && !w->failed) {
    }
}

/* Every unit of `disk` (written by writer `index`, `stride` apart) holds a
 * round in [lo[u], hi[u]]. */
static inline void check_units(ckpt_disk *disk, unsigned index, uint64_t stride,
                               const uint64_t *lo, const uint64_t *hi) {
    uint8_t buf[UNIT_BYTES];
    for (unsigned u = 0; u < UNIT_COUNT; u++) {
        EXPECT_OK(ckpt_disk_read(disk, buf, UNIT_BYTES, (uint64_t)u * stride));
        int64_t r = unit_round(buf, index, u);
        CHECK(r >= 0 && (uint64_t)r >= lo[u] && (uint64_t)r <= hi[u]);
    }
}

/* As check_units, for the disk file at `path` opened read-only. */
static inline void check_units_at(const char *path, unsigned index, uint64_t stride,
                                  const uint64_t *lo, const uint64_t *hi) {
    ckpt_disk *d = NULL;
    EXPECT_OK(ckpt_disk_open(path, CKPT_OPEN_READ_ONLY, &d));
    if (d == NULL) {
        return;
    }
    check_units(d, index, stride, lo, hi);
    EXPECT_OK(ckpt_disk_close(d));
}

static inline int check_finish(const char *test) {
    printf("%s: %d passed, %d failed\n", test, check_passed, check_failed);
    return check_failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif /* CKPT_TEST_UTIL_H */
