/*
 * libckpt from C: create a dynamic VHDX, write to it, read it back, print
 * its facts, close it.
 *
 * Build (from the repository root, after `cargo build --lib`):
 *
 *     cc -std=c11 -Wall -Wextra -pedantic -Iinclude examples/c/example.c \
 *        target/debug/libckpt.a -lpthread -ldl -lm -o example
 *     ./example /tmp/example.vhdx
 *
 * or, against an installed libckpt (scripts/install.sh):
 *
 *     cc examples/c/example.c $(pkg-config --cflags --libs libckpt) -o example
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libckpt.h"

/* Print the failed call, its status and the thread's last error message. */
static int fail(const char *what, ckpt_status status) {
    size_t len = ckpt_last_error_length();
    char *msg = malloc(len + 1);
    if (msg != NULL && ckpt_last_error(msg, len + 1, NULL) == CKPT_STATUS_OK) {
        fprintf(stderr, "%s failed: %s: %s\n", what, ckpt_status_name(status), msg);
    } else {
        fprintf(stderr, "%s failed: %s\n", what, ckpt_status_name(status));
    }
    free(msg);
    return EXIT_FAILURE;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "example.vhdx";

    /* The library we run with must serve the header we were built with. */
    ckpt_status s = CKPT_VERSION_CHECK();
    if (s != CKPT_STATUS_OK) {
        return fail("CKPT_VERSION_CHECK", s);
    }
    printf("libckpt %s (built with the %s header)\n", ckpt_version(), CKPT_VERSION_STRING);

    /* A 64 MiB dynamic disk with 1 MiB blocks; the other options keep
     * their defaults (0). Passing NULL instead takes every default. */
    ckpt_create_options options;
    memset(&options, 0, sizeof options);
    options.struct_size = sizeof options;
    options.block_size = 1024 * 1024;

    ckpt_disk *disk = NULL;
    s = ckpt_disk_create(path, 64u * 1024 * 1024, &options, &disk);
    if (s != CKPT_STATUS_OK) {
        return fail("ckpt_disk_create", s);
    }

    const char text[] = "hello from C";
    s = ckpt_disk_write(disk, (const uint8_t *)text, sizeof text, 1000000);
    if (s == CKPT_STATUS_OK) {
        s = ckpt_disk_flush(disk);
    }
    if (s != CKPT_STATUS_OK) {
        fail("write", s);
        ckpt_disk_close(disk);
        return EXIT_FAILURE;
    }

    char back[sizeof text];
    s = ckpt_disk_read(disk, (uint8_t *)back, sizeof back, 1000000);
    if (s != CKPT_STATUS_OK) {
        fail("ckpt_disk_read", s);
        ckpt_disk_close(disk);
        return EXIT_FAILURE;
    }
    printf("read back: \"%s\"\n", back);

    ckpt_disk_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    s = ckpt_disk_get_info(disk, &info);
    if (s != CKPT_STATUS_OK) {
        fail("ckpt_disk_get_info", s);
        ckpt_disk_close(disk);
        return EXIT_FAILURE;
    }
    printf("kind: %s\n", info.kind == CKPT_DISK_KIND_FIXED     ? "fixed"
                         : info.kind == CKPT_DISK_KIND_DYNAMIC ? "dynamic"
                                                               : "differencing");
    printf("virtual size: %" PRIu64 " bytes\n", info.virtual_size);
    printf("block size: %" PRIu32 " bytes\n", info.block_size);
    printf("sectors: %" PRIu32 " logical, %" PRIu32 " physical\n", info.logical_sector_size,
           info.physical_sector_size);
    printf("file size: %" PRIu64 " bytes, %" PRIu64 " allocated\n", info.file_size,
           info.allocated_bytes);
    printf("disk id: ");
    for (int i = 0; i < 16; i++) {
        printf("%02x%s", info.disk_id[i], (i == 3 || i == 5 || i == 7 || i == 9) ? "-" : "");
    }
    printf("\n");

    /* close flushes and frees the handle, whatever it returns */
    s = ckpt_disk_close(disk);
    if (s != CKPT_STATUS_OK) {
        return fail("ckpt_disk_close", s);
    }
    if (strcmp(back, text) != 0) {
        fprintf(stderr, "data mismatch\n");
        return EXIT_FAILURE;
    }
    return EXIT_SUCCESS;
}
