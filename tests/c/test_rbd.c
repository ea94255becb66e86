/*
 * RBD diff streams through the C API (issue 17): a VM on one disk, two
 * checkpoints, the stream of the second since the first written to a
 * file descriptor by ckpt_vm_write_rbd_diff and parsed here byte by byte
 * (header, f / t / s records, one w record, e), the full stream of the
 * first, the stats, and the refusals (NULL vm, a bad fd, a disk index
 * past the last, an unknown name). rbd itself judges the streams in
 * tests/rbd.rs.
 *
 * Usage: test_rbd DIR (a scratch directory)
 */
#define _POSIX_C_SOURCE 200809L

#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_util.h"

#define SIZE (8u * MIB)

static const char *current(ckpt_vm *vm) {
    static char buf[4096];
    if (ckpt_vm_current_disk_path(vm, 0, buf, sizeof buf, NULL) != CKPT_STATUS_OK) {
        buf[0] = '\0';
    }
    return buf;
}

static void write_bytes(const char *path, uint64_t off, const void *data, size_t len) {
    ckpt_disk *disk = NULL;
    EXPECT_OK(ckpt_disk_open(path, CKPT_OPEN_READ_WRITE, &disk));
    if (disk == NULL) {
        return;
    }
    EXPECT_OK(ckpt_disk_write(disk, data, len, off));
    EXPECT_OK(ckpt_disk_close(disk));
}

static uint64_t le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Write the stream into `path`; returns its length (0 on failure). */
static size_t stream_to(ckpt_vm *vm, const char *from, const char *to, const char *path,
                        uint8_t *buf, size_t cap, ckpt_rbd_diff_stats *st) {
    int fd = open(path, O_CREAT | O_TRUNC | O_RDWR, 0644);
    CHECK(fd >= 0);
    if (fd < 0) {
        return 0;
    }
    EXPECT_OK(ckpt_vm_write_rbd_diff(vm, 0, from, to, fd, st));
    /* The descriptor stays open: it can still be read. */
    CHECK(lseek(fd, 0, SEEK_SET) == 0);
    ssize_t n = read(fd, buf, cap);
    CHECK(n > 0);
    close(fd);
    return n > 0 ? (size_t)n : 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    char disk[4096], vmdir[4096], file[4096];
    snprintf(disk, sizeof disk, "%s/os.vhdx", dir);
    snprintf(vmdir, sizeof vmdir, "%s/vm", dir);
    snprintf(file, sizeof file, "%s/stream", dir);
    make_disk(disk, SIZE);
    const char *disks[] = {disk};
    ckpt_vm_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.struct_size = sizeof spec;
    spec.name = "rbd";
    spec.disks = disks;
    spec.disk_count = 1;
    spec.checkpoint_type = CKPT_CHECKPOINT_TYPE_STANDARD;
    ckpt_vm *vm = NULL;
    EXPECT_OK(ckpt_vm_create(vmdir, &spec, &vm));
    if (vm == NULL) {
        return check_finish("test_rbd");
    }
    write_bytes(current(vm), 0, "base", 4);
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "c0", NULL));
    uint8_t block[4096];
    memset(block, 0x77, sizeof block);
    write_bytes(current(vm), MIB, block, sizeof block);
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "c 1", NULL));

    static uint8_t s[1 << 16];
    ckpt_rbd_diff_stats st;
    memset(&st, 0xff, sizeof st);
    size_t n = stream_to(vm, "c0", "c 1", file, s, sizeof s, &st);
    CHECK(st.stream_bytes == n);
    CHECK(st.data_bytes == sizeof block);
    CHECK(st.zero_bytes == 0);
    /* header, f "c0", t "c_1~<8>", s SIZE, w (1 MiB, 4096, data), e */
    size_t want = 12 + (5 + 2) + (5 + 12) + 9 + (17 + sizeof block) + 1;
    CHECK(n == want);
    if (n == want) {
        const uint8_t *p = s;
        CHECK(memcmp(p, "rbd diff v1\n", 12) == 0);
        p += 12;
        CHECK(p[0] == 'f' && le32(p + 1) == 2 && memcmp(p + 5, "c0", 2) == 0);
        p += 7;
        CHECK(p[0] == 't' && le32(p + 1) == 12 && memcmp(p + 5, "c_1~", 4) == 0);
        p += 17;
        CHECK(p[0] == 's' && le64(p + 1) == SIZE);
        p += 9;
        CHECK(p[0] == 'w' && le64(p + 1) == MIB && le64(p + 9) == sizeof block);
        CHECK(memcmp(p + 17, block, sizeof block) == 0);
        p += 17 + sizeof block;
        CHECK(p[0] == 'e');
    }
    /* The full stream of c0: no f record, one 4 KiB unit of data, the
     * rest of its allocated block as zeros. */
    n = stream_to(vm, NULL, "c0", file, s, sizeof s, &st);
    CHECK(n == st.stream_bytes);
    CHECK(st.data_bytes == 4096 && st.zero_bytes > 0);
    CHECK(n > 12 && s[12] == 't');

    /* Refusals. */
    EXPECT_STATUS(ckpt_vm_write_rbd_diff(NULL, 0, NULL, NULL, 1, NULL),
                  CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_write_rbd_diff(vm, 0, NULL, NULL, -1, NULL),
                  CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_vm_write_rbd_diff(vm, 5, NULL, NULL, 1, NULL),
                  CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_vm_write_rbd_diff(vm, 0, "nope", NULL, 1, NULL), CKPT_STATUS_NOT_FOUND);
    EXPECT_OK(ckpt_vm_close(vm));
    return check_finish("test_rbd");
}
