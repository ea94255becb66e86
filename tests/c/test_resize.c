/*
 * ckpt_disk_resize: a dynamic disk grows (data kept, new space zeros) and
 * shrinks (refused with data past the end, then allowed); the report;
 * refusals (NULL, a bad size, a too small report, a read-only handle).
 *
 * Usage: test_resize DIR (a scratch directory)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

static uint64_t vsize(ckpt_disk *disk) {
    ckpt_disk_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    EXPECT_OK(ckpt_disk_get_info(disk, &info));
    return info.virtual_size;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/r.vhdx", argv[1]);
    uint8_t buf[4096], got[4096];
    memset(buf, 0xa5, sizeof buf);

    make_disk(path, 16u * MIB);
    ckpt_disk *disk = NULL;
    EXPECT_OK(ckpt_disk_open(path, CKPT_OPEN_READ_WRITE, &disk));
    EXPECT_OK(ckpt_disk_write(disk, buf, sizeof buf, 12u * MIB));

    ckpt_resize_report r;
    memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    EXPECT_STATUS(ckpt_disk_resize(NULL, 32u * MIB, 0, &r), CKPT_STATUS_NULL_POINTER);
    CHECK(strstr(last_error_text(), "disk") != NULL);
    EXPECT_STATUS(ckpt_disk_resize(disk, 32u * MIB + 100u, 0, &r),
                  CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(last_error_text(), "multiple") != NULL);
    r.struct_size = 4;
    EXPECT_STATUS(ckpt_disk_resize(disk, 32u * MIB, 0, &r), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(r.new_size == 0);
    r.struct_size = sizeof r;

    EXPECT_OK(ckpt_disk_resize(disk, 32u * MIB, 0, &r));
    CHECK(r.struct_size == sizeof r);
    CHECK(r.old_size == 16u * MIB && r.new_size == 32u * MIB);
    CHECK(r.bat_relocated == 0 && r.bytes_dropped == 0);
    CHECK(vsize(disk) == 32u * MIB);
    EXPECT_OK(ckpt_disk_read(disk, got, sizeof got, 12u * MIB));
    CHECK(memcmp(buf, got, sizeof got) == 0);
    EXPECT_OK(ckpt_disk_read(disk, got, sizeof got, 30u * MIB));
    for (size_t i = 0; i < sizeof got; i++) {
        CHECK(got[i] == 0);
    }

    /* Data at 12 MiB: a shrink to 8 MiB needs allow_shrink. */
    EXPECT_STATUS(ckpt_disk_resize(disk, 8u * MIB, 0, NULL), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(last_error_text(), "bytes of data lie beyond") != NULL);
    CHECK(vsize(disk) == 32u * MIB);
    EXPECT_OK(ckpt_disk_resize(disk, 8u * MIB, 1, &r));
    CHECK(r.bytes_dropped == sizeof buf);
    /* A report is optional. */
    EXPECT_OK(ckpt_disk_resize(disk, 20u * MIB, 0, NULL));
    EXPECT_OK(ckpt_disk_read(disk, got, sizeof got, 12u * MIB));
    for (size_t i = 0; i < sizeof got; i++) {
        CHECK(got[i] == 0);
    }
    EXPECT_OK(ckpt_disk_close(disk));

    EXPECT_OK(ckpt_disk_open(path, CKPT_OPEN_READ_ONLY, &disk));
    CHECK(vsize(disk) == 20u * MIB);
    EXPECT_STATUS(ckpt_disk_resize(disk, 40u * MIB, 0, NULL), CKPT_STATUS_READ_ONLY);
    EXPECT_OK(ckpt_disk_close(disk));
    return check_finish("test_resize");
}
