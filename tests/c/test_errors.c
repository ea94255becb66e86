/*
 * Bad arguments, bad paths, the last-error message (text, too-small
 * buffers, per-thread), status names and the version.
 *
 * Usage: test_errors DIR (a scratch directory)
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "test_util.h"

/* A bigger options struct, as a newer header might define it. */
typedef struct {
    ckpt_create_options v1;
    uint32_t future_field;
    uint32_t future_field2;
} newer_options;

static void bad_arguments(const char *dir) {
    char path[4096];
    ckpt_disk *disk = DISK_SENTINEL;

    /* Empty paths; non-UTF-8 paths (since 0.2: accepted for disks, refused
     * where a VM keeps them as text; see test_hypervisor.c). */
    EXPECT_STATUS(ckpt_disk_create("", 1 << 20, NULL, &disk), CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_disk_open("", CKPT_OPEN_READ_ONLY, &disk), CKPT_STATUS_INVALID_ARGUMENT);
    snprintf(path, sizeof path, "%s/\xff\xfe.vm", dir);
    ckpt_vm *vm = VM_SENTINEL;
    EXPECT_STATUS(ckpt_vm_open(path, &vm), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(last_error_text(), "UTF-8") != NULL);
    CHECK(vm == VM_SENTINEL);
    snprintf(path, sizeof path, "%s/\xff\xfe.vhdx", dir);
    EXPECT_OK(ckpt_disk_create(path, 1 << 20, NULL, &disk));
    CHECK(disk != DISK_SENTINEL && disk != NULL);
    EXPECT_OK(ckpt_disk_close(disk));
    disk = DISK_SENTINEL;

    /* Unknown open flags. */
    snprintf(path, sizeof path, "%s/flags.vhdx", dir);
    EXPECT_STATUS(ckpt_disk_open(path, 0x10, &disk), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(last_error_text(), "0x10") != NULL);
    CHECK(disk == DISK_SENTINEL);

    /* Options: struct_size too small, unknown flags, unknown fields set. */
    snprintf(path, sizeof path, "%s/options.vhdx", dir);
    ckpt_create_options o;
    memset(&o, 0, sizeof o);
    o.struct_size = 4;
    EXPECT_STATUS(ckpt_disk_create(path, 1 << 20, &o, &disk), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(last_error_text(), "struct_size") != NULL);
    o.struct_size = sizeof o;
    o.flags = 0x80;
    EXPECT_STATUS(ckpt_disk_create(path, 1 << 20, &o, &disk), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(last_error_text(), "flags") != NULL);
    newer_options n;
    memset(&n, 0, sizeof n);
    n.v1.struct_size = sizeof n;
    n.future_field2 = 1;
    EXPECT_STATUS(ckpt_disk_create(path, 1 << 20, &n.v1, &disk), CKPT_STATUS_UNSUPPORTED);
    CHECK(disk == DISK_SENTINEL);
    CHECK(!file_exists(path)); /* nothing was created */
}

static void bad_paths(const char *dir) {
    char path[4096];
    ckpt_disk *disk = DISK_SENTINEL;

    /* Opening a file that does not exist. */
    snprintf(path, sizeof path, "%s/missing.vhdx", dir);
    EXPECT_STATUS(ckpt_disk_open(path, CKPT_OPEN_READ_ONLY, &disk), CKPT_STATUS_NOT_FOUND);
    CHECK(disk == DISK_SENTINEL);
    CHECK(strstr(last_error_text(), "missing.vhdx") != NULL); /* the message names the file */

    /* Creating in a directory that does not exist. */
    snprintf(path, sizeof path, "%s/no/such/dir/new.vhdx", dir);
    EXPECT_STATUS(ckpt_disk_create(path, 1 << 20, NULL, &disk), CKPT_STATUS_NOT_FOUND);
    CHECK(disk == DISK_SENTINEL);

    /* Opening something that is not a VHDX. */
    snprintf(path, sizeof path, "%s/not-a-vhdx.vhdx", dir);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (f != NULL) {
        static char junk[1 << 16];
        memset(junk, 'x', sizeof junk);
        CHECK(fwrite(junk, 1, sizeof junk, f) == sizeof junk);
        fclose(f);
    }
    EXPECT_STATUS(ckpt_disk_open(path, CKPT_OPEN_READ_ONLY, &disk), CKPT_STATUS_CORRUPT);
    CHECK(disk == DISK_SENTINEL);
    CHECK(strstr(last_error_text(), "not-a-vhdx.vhdx") != NULL);
}

static void last_error_buffers(void) {
    /* Make a known error: the message is exactly "disk is NULL" (12 bytes). */
    EXPECT_STATUS(ckpt_disk_flush(NULL), CKPT_STATUS_NULL_POINTER);
    const char *want = "disk is NULL";
    size_t want_len = strlen(want);
    CHECK(ckpt_last_error_length() == want_len);

    char buf[64];
    size_t len;
    size_t sizes[] = {1, 2, 5, 12, 13, 14, 64};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t cap = sizes[i];
        memset(buf, '#', sizeof buf);
        len = 0;
        ckpt_status s = ckpt_last_error(buf, cap, &len);
        CHECK(len == want_len);
        if (cap > want_len) {
            CHECK(s == CKPT_STATUS_OK);
            CHECK(strcmp(buf, want) == 0);
        } else {
            /* Truncated to cap - 1 bytes plus a NUL; nothing written past cap. */
            CHECK(s == CKPT_STATUS_BUFFER_TOO_SMALL);
            CHECK(strlen(buf) == cap - 1);
            CHECK(strncmp(buf, want, cap - 1) == 0);
        }
        if (cap < sizeof buf) {
            CHECK(buf[cap] == '#');
        }
    }
    /* len == 0: the buffer is not touched. */
    memset(buf, '#', sizeof buf);
    EXPECT_STATUS(ckpt_last_error(buf, 0, &len), CKPT_STATUS_BUFFER_TOO_SMALL);
    CHECK(buf[0] == '#' && len == want_len);
    /* Reading it never changed it. */
    CHECK(strcmp(last_error_text(), want) == 0);

    /* A successful call clears it. */
    EXPECT_OK(ckpt_disk_close(NULL));
    CHECK(ckpt_last_error_length() == 0);
    EXPECT_OK(ckpt_last_error(buf, sizeof buf, &len));
    CHECK(len == 0 && buf[0] == '\0');
}

static void *other_thread(void *arg) {
    size_t *seen = arg;
    seen[0] = ckpt_last_error_length(); /* this thread has no error yet */
    ckpt_disk_trim(NULL, 0, 1);         /* make one: "disk is NULL" */
    seen[1] = ckpt_last_error_length();
    return NULL;
}

static void last_error_per_thread(void) {
    ckpt_disk *disk = DISK_SENTINEL;
    EXPECT_STATUS(ckpt_disk_open(NULL, 0, &disk), CKPT_STATUS_NULL_POINTER);
    char mine[64];
    snprintf(mine, sizeof mine, "%s", last_error_text());
    CHECK(strcmp(mine, "path is NULL") == 0);

    size_t seen[2] = {99, 99};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, other_thread, seen) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(seen[0] == 0);
    CHECK(seen[1] == strlen("disk is NULL"));
    CHECK(strcmp(last_error_text(), mine) == 0); /* untouched by the other thread */
}

static void names_and_version(void) {
    CHECK(strcmp(ckpt_status_name(CKPT_STATUS_OK), "CKPT_STATUS_OK") == 0);
    CHECK(strcmp(ckpt_status_name(CKPT_STATUS_PANIC), "CKPT_STATUS_PANIC") == 0);
    CHECK(strcmp(ckpt_status_name(CKPT_STATUS_BUFFER_TOO_SMALL), "CKPT_STATUS_BUFFER_TOO_SMALL") ==
          0);
    CHECK(strcmp(ckpt_status_name(CKPT_STATUS_PARENT_MISMATCH), "CKPT_STATUS_PARENT_MISMATCH") ==
          0);
    CHECK(strcmp(ckpt_status_name(999), "CKPT_STATUS_UNKNOWN") == 0);
    /* The numbers are ABI. */
    CHECK(CKPT_STATUS_OK == 0 && CKPT_STATUS_INVALID_ARGUMENT == 1 && CKPT_STATUS_NULL_POINTER == 2 &&
          CKPT_STATUS_IO == 3 && CKPT_STATUS_NOT_FOUND == 4 && CKPT_STATUS_CORRUPT == 5 &&
          CKPT_STATUS_UNSUPPORTED == 6 && CKPT_STATUS_OUT_OF_RANGE == 7 &&
          CKPT_STATUS_READ_ONLY == 8 && CKPT_STATUS_CANCELLED == 9 &&
          CKPT_STATUS_BUFFER_TOO_SMALL == 10 && CKPT_STATUS_PANIC == 11 &&
          CKPT_STATUS_PARENT_MISMATCH == 12 && CKPT_STATUS_ALREADY_EXISTS == 13 &&
          CKPT_STATUS_PERMISSION_DENIED == 14 && CKPT_STATUS_BUSY == 15 &&
          CKPT_STATUS_NO_SPACE == 16);
    CHECK(strcmp(ckpt_status_name(CKPT_STATUS_NO_SPACE), "CKPT_STATUS_NO_SPACE") == 0);

    char v[64];
    snprintf(v, sizeof v, "%u.%u.%u", (unsigned)ckpt_version_major(),
             (unsigned)ckpt_version_minor(), (unsigned)ckpt_version_patch());
    CHECK(strcmp(ckpt_version(), v) == 0);

    /* The header's version is the library's, and the checks agree. */
    CHECK(strcmp(CKPT_VERSION_STRING, ckpt_version()) == 0);
    CHECK(CKPT_VERSION_MAJOR == ckpt_version_major() && CKPT_VERSION_MINOR == ckpt_version_minor() &&
          CKPT_VERSION_PATCH == ckpt_version_patch());
    EXPECT_OK(CKPT_VERSION_CHECK());
    CHECK(ckpt_last_error_length() == 0);
    EXPECT_STATUS(ckpt_version_check(CKPT_VERSION_MAJOR + 1, 0), CKPT_STATUS_UNSUPPORTED);
    CHECK(strstr(last_error_text(), ckpt_version()) != NULL);
    if (CKPT_VERSION_MAJOR == 0) {
        /* Before 1.0 every minor version is its own ABI. */
        EXPECT_STATUS(ckpt_version_check(0, CKPT_VERSION_MINOR + 1), CKPT_STATUS_UNSUPPORTED);
    } else {
        /* A program built for an older minor version runs on this one. */
        EXPECT_OK(ckpt_version_check(CKPT_VERSION_MAJOR, 0));
        EXPECT_STATUS(ckpt_version_check(CKPT_VERSION_MAJOR, CKPT_VERSION_MINOR + 1),
                      CKPT_STATUS_UNSUPPORTED);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    bad_arguments(argv[1]);
    last_error_buffers();
    last_error_per_thread();
    names_and_version();
    bad_paths(argv[1]); /* last: needs the engine (open/create) */
    return check_finish("test_errors");
}
