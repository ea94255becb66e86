/*
 * ckpt_disk_compact: a dynamic disk with most of its data trimmed shrinks
 * and reads the same; the report; refusals (NULL, a bad mode, a too small
 * report, a fixed disk, a read-only handle) and a cancel; and a VM's live
 * disk handle (ckpt_vm_disk) compacted while the VM holds it.
 *
 * Usage: test_compact DIR (a scratch directory)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

#define BLOCKS 16u

static void fill(uint8_t *buf, unsigned block) {
    for (size_t i = 0; i < MIB; i++) {
        buf[i] = (uint8_t)(1 + (block * 31u + i * 7u) % 251u);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    char path[4096], fixed[4096];
    snprintf(path, sizeof path, "%s/c.vhdx", dir);
    snprintf(fixed, sizeof fixed, "%s/f.vhdx", dir);
    uint8_t *buf = malloc(MIB), *got = malloc(MIB);
    CHECK(buf != NULL && got != NULL);
    if (buf == NULL || got == NULL) {
        return 1;
    }

    make_disk(path, BLOCKS * MIB);
    ckpt_disk *disk = NULL;
    EXPECT_OK(ckpt_disk_open(path, CKPT_OPEN_READ_WRITE, &disk));
    for (unsigned b = 0; b < BLOCKS; b++) {
        fill(buf, b);
        EXPECT_OK(ckpt_disk_write(disk, buf, MIB, (uint64_t)b * MIB));
    }
    /* Every block but 3, 9 and 14 trimmed; block 5 rewritten as zeros. */
    for (unsigned b = 0; b < BLOCKS; b++) {
        if (b != 3 && b != 9 && b != 14 && b != 5) {
            EXPECT_OK(ckpt_disk_trim(disk, (uint64_t)b * MIB, MIB));
        }
    }
    memset(buf, 0, MIB);
    EXPECT_OK(ckpt_disk_write(disk, buf, MIB, 5u * MIB));
    EXPECT_OK(ckpt_disk_flush(disk));

    ckpt_compact_report r;
    memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    EXPECT_STATUS(ckpt_disk_compact(NULL, CKPT_COMPACT_FULL, NULL, NULL, &r),
                  CKPT_STATUS_NULL_POINTER);
    CHECK(strstr(last_error_text(), "disk") != NULL);
    EXPECT_STATUS(ckpt_disk_compact(disk, 7, NULL, NULL, &r), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(last_error_text(), "mode") != NULL);
    r.struct_size = 4;
    EXPECT_STATUS(ckpt_disk_compact(disk, CKPT_COMPACT_FULL, NULL, NULL, &r),
                  CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(r.bytes_after == 0);
    r.struct_size = sizeof r;

    /* A cancel from the first progress call leaves the disk whole. */
    canceller c = {0, 1};
    EXPECT_STATUS(ckpt_disk_compact(disk, CKPT_COMPACT_FULL, cancel_progress, &c, &r),
                  CKPT_STATUS_CANCELLED);
    CHECK(c.calls == 1 && r.bytes_after == 0);

    canceller never = {0, 1 << 30};
    EXPECT_OK(ckpt_disk_compact(disk, CKPT_COMPACT_FULL, cancel_progress, &never, &r));
    CHECK(never.calls > 0);
    CHECK(r.struct_size == sizeof r);
    CHECK(r.mode == CKPT_COMPACT_FULL);
    CHECK(r.blocks_freed == 1); /* block 5, all zeros */
    CHECK(r.blocks_moved > 0);
    CHECK(r.bytes_after < r.bytes_before);
    /* Header, log, BAT, metadata (4 MiB) and three blocks. */
    CHECK(r.bytes_after <= 7u * MIB);
    /* A report is optional. */
    EXPECT_OK(ckpt_disk_compact(disk, CKPT_COMPACT_QUICK, NULL, NULL, NULL));
    EXPECT_OK(ckpt_disk_close(disk));

    EXPECT_OK(ckpt_disk_open(path, CKPT_OPEN_READ_ONLY, &disk));
    for (unsigned b = 0; b < BLOCKS; b++) {
        if (b == 3 || b == 9 || b == 14) {
            fill(buf, b);
        } else {
            memset(buf, 0, MIB);
        }
        EXPECT_OK(ckpt_disk_read(disk, got, MIB, (uint64_t)b * MIB));
        CHECK(memcmp(buf, got, MIB) == 0);
    }
    EXPECT_STATUS(ckpt_disk_compact(disk, CKPT_COMPACT_QUICK, NULL, NULL, NULL),
                  CKPT_STATUS_READ_ONLY);
    EXPECT_OK(ckpt_disk_close(disk));

    /* A fixed disk is refused. */
    ckpt_create_options o;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.flags = CKPT_CREATE_FIXED;
    o.block_size = MIB;
    EXPECT_OK(ckpt_disk_create(fixed, 4u * MIB, &o, &disk));
    EXPECT_STATUS(ckpt_disk_compact(disk, CKPT_COMPACT_QUICK, NULL, NULL, &r),
                  CKPT_STATUS_UNSUPPORTED);
    CHECK(strstr(last_error_text(), "fixed") != NULL);
    EXPECT_OK(ckpt_disk_close(disk));

    /* A VM's live disk handle compacts (live) and reads the same. */
    char vmdisk[4096], vmdir[4096];
    snprintf(vmdisk, sizeof vmdisk, "%s/v.vhdx", dir);
    snprintf(vmdir, sizeof vmdir, "%s/vm", dir);
    make_disk(vmdisk, BLOCKS * MIB);
    const char *disks[] = {vmdisk};
    ckpt_vm_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.struct_size = sizeof spec;
    spec.name = "compact";
    spec.disks = disks;
    spec.disk_count = 1;
    ckpt_vm *vm = NULL;
    EXPECT_OK(ckpt_vm_create(vmdir, &spec, &vm));
    if (vm != NULL) {
        ckpt_disk *live = NULL;
        EXPECT_OK(ckpt_vm_disk(vm, 0, &live));
        for (unsigned b = 0; b < BLOCKS; b++) {
            fill(buf, b);
            EXPECT_OK(ckpt_disk_write(live, buf, MIB, (uint64_t)b * MIB));
        }
        for (unsigned b = 0; b < BLOCKS; b++) {
            if (b % 4 != 1) {
                EXPECT_OK(ckpt_disk_trim(live, (uint64_t)b * MIB, MIB));
            }
        }
        EXPECT_OK(ckpt_disk_flush(live));
        memset(&r, 0, sizeof r);
        r.struct_size = sizeof r;
        EXPECT_OK(ckpt_disk_compact(live, CKPT_COMPACT_QUICK, NULL, NULL, &r));
        CHECK(r.bytes_after < r.bytes_before);
        for (unsigned b = 0; b < BLOCKS; b++) {
            if (b % 4 == 1) {
                fill(buf, b);
            } else {
                memset(buf, 0, MIB);
            }
            EXPECT_OK(ckpt_disk_read(live, got, MIB, (uint64_t)b * MIB));
            CHECK(memcmp(buf, got, MIB) == 0);
        }
        EXPECT_OK(ckpt_vm_close(vm));
    }

    free(buf);
    free(got);
    return check_finish("test_compact");
}
