/*
 * ckpt_disk_create with CKPT_CREATE_VHD: a dynamic and a fixed VHD are
 * made, written, read back after a reopen (ckpt_disk_open finds the format
 * from the content); VHDX-only fields are refused with a VHD.
 *
 * Usage: test_vhd DIR (a scratch directory)
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "test_util.h"

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    char path[4096];
    uint8_t data[4096], got[4096];
    for (size_t i = 0; i < sizeof data; i++) {
        data[i] = (uint8_t)(i * 7u + 3u);
    }
    for (int fixed = 0; fixed < 2; fixed++) {
        snprintf(path, sizeof path, "%s/d%d.vhd", argv[1], fixed);
        ckpt_create_options o;
        memset(&o, 0, sizeof o);
        o.struct_size = sizeof o;
        o.flags = CKPT_CREATE_VHD | (fixed ? CKPT_CREATE_FIXED : 0u);
        ckpt_disk *d = NULL;
        EXPECT_OK(ckpt_disk_create(path, 3u * MIB, &o, &d));
        EXPECT_OK(ckpt_disk_write(d, data, sizeof data, MIB + 512u));
        EXPECT_OK(ckpt_disk_close(d));
        d = NULL;
        EXPECT_OK(ckpt_disk_open(path, CKPT_OPEN_READ_ONLY, &d));
        EXPECT_OK(ckpt_disk_read(d, got, sizeof got, MIB + 512u));
        CHECK(memcmp(data, got, sizeof got) == 0);
        ckpt_disk_info i;
        memset(&i, 0, sizeof i);
        i.struct_size = sizeof i;
        EXPECT_OK(ckpt_disk_get_info(d, &i));
        CHECK(i.kind == (fixed ? CKPT_DISK_KIND_FIXED : CKPT_DISK_KIND_DYNAMIC));
        CHECK(i.format == CKPT_DISK_FORMAT_VHD);
        CHECK(i.virtual_size == 3u * MIB);
        EXPECT_OK(ckpt_disk_close(d));
    }
    /* A VHD has no log and 512-byte sectors. */
    snprintf(path, sizeof path, "%s/bad.vhd", argv[1]);
    ckpt_create_options o;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.flags = CKPT_CREATE_VHD;
    o.log_size = MIB;
    ckpt_disk *d = DISK_SENTINEL;
    EXPECT_STATUS(ckpt_disk_create(path, 3u * MIB, &o, &d), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(d == DISK_SENTINEL);
    return check_finish("test_vhd");
}
