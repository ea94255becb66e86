/*
 * ckpt_disk_convert_in_place: a dynamic disk with data in a few blocks
 * becomes fixed (every block allocated, same data), then dynamic again
 * (the zero blocks given back, the file shrinks); the reports; the same
 * kind is a no-op; refusals (NULL, a bad kind, a too small report, a
 * read-only handle, a differencing disk) and a cancel.
 *
 * Usage: test_in_place DIR (a scratch directory)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

#define BLOCKS 12u

static void fill(uint8_t *buf, unsigned block) {
    for (size_t i = 0; i < MIB; i++) {
        buf[i] = (uint8_t)(1 + (block * 17u + i * 5u) % 251u);
    }
}

static int has_data(unsigned b) { return b == 2 || b == 7 || b == 11; }

static void expect_content(ckpt_disk *disk, uint8_t *buf, uint8_t *got) {
    for (unsigned b = 0; b < BLOCKS; b++) {
        if (has_data(b)) {
            fill(buf, b);
        } else {
            memset(buf, 0, MIB);
        }
        EXPECT_OK(ckpt_disk_read(disk, got, MIB, (uint64_t)b * MIB));
        CHECK(memcmp(buf, got, MIB) == 0);
    }
}

static ckpt_disk_kind kind_of(ckpt_disk *disk) {
    ckpt_disk_info i;
    memset(&i, 0, sizeof i);
    i.struct_size = sizeof i;
    EXPECT_OK(ckpt_disk_get_info(disk, &i));
    return i.kind;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    char path[4096], child[4096];
    snprintf(path, sizeof path, "%s/d.vhdx", dir);
    snprintf(child, sizeof child, "%s/c.avhdx", dir);
    uint8_t *buf = malloc(MIB), *got = malloc(MIB);
    CHECK(buf != NULL && got != NULL);
    if (buf == NULL || got == NULL) {
        return 1;
    }

    make_disk(path, BLOCKS * MIB);
    ckpt_disk *disk = NULL;
    EXPECT_OK(ckpt_disk_open(path, CKPT_OPEN_READ_WRITE, &disk));
    for (unsigned b = 0; b < BLOCKS; b++) {
        if (has_data(b)) {
            fill(buf, b);
            EXPECT_OK(ckpt_disk_write(disk, buf, MIB, (uint64_t)b * MIB));
        }
    }
    EXPECT_OK(ckpt_disk_flush(disk));

    ckpt_in_place_report r;
    memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    EXPECT_STATUS(ckpt_disk_convert_in_place(NULL, CKPT_DISK_KIND_FIXED, NULL, NULL, &r),
                  CKPT_STATUS_NULL_POINTER);
    CHECK(strstr(last_error_text(), "disk") != NULL);
    EXPECT_STATUS(ckpt_disk_convert_in_place(disk, CKPT_DISK_KIND_DIFFERENCING, NULL, NULL, &r),
                  CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_disk_convert_in_place(disk, 42, NULL, NULL, &r),
                  CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(last_error_text(), "CKPT_DISK_KIND_FIXED") != NULL);
    r.struct_size = 4;
    EXPECT_STATUS(ckpt_disk_convert_in_place(disk, CKPT_DISK_KIND_FIXED, NULL, NULL, &r),
                  CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(r.bytes_after == 0);
    r.struct_size = sizeof r;
    CHECK(kind_of(disk) == CKPT_DISK_KIND_DYNAMIC);

    /* A cancel from the third progress call leaves a dynamic disk that
     * reads the same. */
    canceller c = {0, 3};
    EXPECT_STATUS(ckpt_disk_convert_in_place(disk, CKPT_DISK_KIND_FIXED, cancel_progress, &c, &r),
                  CKPT_STATUS_CANCELLED);
    CHECK(c.calls == 3 && r.bytes_after == 0);
    CHECK(kind_of(disk) == CKPT_DISK_KIND_DYNAMIC);
    expect_content(disk, buf, got);

    /* To fixed: the blocks the cancel left, then the flag. */
    canceller never = {0, 1 << 30};
    EXPECT_OK(ckpt_disk_convert_in_place(disk, CKPT_DISK_KIND_FIXED, cancel_progress, &never, &r));
    CHECK(never.calls > 0);
    CHECK(r.struct_size == sizeof r);
    CHECK(r.changed == 1);
    CHECK(r.from == CKPT_DISK_KIND_DYNAMIC && r.to == CKPT_DISK_KIND_FIXED);
    CHECK(r.blocks_allocated == BLOCKS - 3 - 3); /* 3 with data, 3 before the cancel */
    CHECK(r.bytes_after >= r.bytes_before + (uint64_t)(BLOCKS - 6) * MIB);
    CHECK(kind_of(disk) == CKPT_DISK_KIND_FIXED);
    expect_content(disk, buf, got);
    /* The same kind again: nothing done. */
    EXPECT_OK(ckpt_disk_convert_in_place(disk, CKPT_DISK_KIND_FIXED, NULL, NULL, &r));
    CHECK(r.changed == 0 && r.blocks_allocated == 0 && r.bytes_after == r.bytes_before);
    EXPECT_OK(ckpt_disk_close(disk));

    /* Fixed after a reopen; then back to dynamic, without a report. */
    EXPECT_OK(ckpt_disk_open(path, CKPT_OPEN_READ_ONLY, &disk));
    CHECK(kind_of(disk) == CKPT_DISK_KIND_FIXED);
    expect_content(disk, buf, got);
    EXPECT_STATUS(ckpt_disk_convert_in_place(disk, CKPT_DISK_KIND_DYNAMIC, NULL, NULL, NULL),
                  CKPT_STATUS_READ_ONLY);
    EXPECT_OK(ckpt_disk_close(disk));
    EXPECT_OK(ckpt_disk_open(path, CKPT_OPEN_READ_WRITE, &disk));
    EXPECT_OK(ckpt_disk_convert_in_place(disk, CKPT_DISK_KIND_DYNAMIC, NULL, NULL, &r));
    CHECK(r.changed == 1 && r.from == CKPT_DISK_KIND_FIXED && r.to == CKPT_DISK_KIND_DYNAMIC);
    CHECK(r.blocks_freed == BLOCKS - 3);
    CHECK(r.bytes_after < r.bytes_before);
    /* Header, log, BAT, metadata (4 MiB) and the three blocks of data. */
    CHECK(r.bytes_after <= 7u * MIB);
    CHECK(kind_of(disk) == CKPT_DISK_KIND_DYNAMIC);
    expect_content(disk, buf, got);
    EXPECT_OK(ckpt_disk_convert_in_place(disk, CKPT_DISK_KIND_DYNAMIC, NULL, NULL, NULL));
    EXPECT_OK(ckpt_disk_close(disk));

    /* A differencing disk is refused. */
    ckpt_child_options co;
    memset(&co, 0, sizeof co);
    co.struct_size = sizeof co;
    EXPECT_OK(ckpt_disk_create_child(child, path, &co, &disk));
    EXPECT_STATUS(ckpt_disk_convert_in_place(disk, CKPT_DISK_KIND_FIXED, NULL, NULL, &r),
                  CKPT_STATUS_UNSUPPORTED);
    CHECK(strstr(last_error_text(), "differencing") != NULL);
    EXPECT_OK(ckpt_disk_close(disk));

    free(buf);
    free(got);
    return check_finish("test_in_place");
}
