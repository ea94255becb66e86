/*
 * The one helper header of the C tests of libckpt (run by tests/c_api.rs):
 * a tiny test harness and the helpers more than one test needs.
 *
 * CHECK(cond) records a failure (with the file, line and the thread's last
 * error) and goes on; EXPECT_STATUS(call, status) checks a call's status.
 * A test's main() returns check_finish(), which prints "N passed, N failed"
 * and gives the exit code.
 */
#ifndef CKPT_TEST_UTIL_H
#define CKPT_TEST_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static inline int check_finish(const char *test) {
    printf("%s: %d passed, %d failed\n", test, check_passed, check_failed);
    return check_failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif /* CKPT_TEST_UTIL_H */
