/*
 * ckpt_disk_extents: the allocation map of a disk and of a chain (data in
 * the base, data in the child, a trim in the child over the base's data),
 * checked against the bytes the disk reads as; ranges cut to a sub-range;
 * the count-then-fill convention with a too-small buffer; out-of-range
 * requests. NULL arguments are in test_null_args.c.
 *
 * Usage: test_extents DIR (a scratch directory)
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "test_util.h"

#define SIZE (8u * MIB)
#define MAX_EXTENTS 16

/* The flags are NBD's base:allocation bits, so they pass straight through. */
#if CKPT_EXTENT_HOLE != 1 || CKPT_EXTENT_ZERO != 2
#error "CKPT_EXTENT_HOLE / CKPT_EXTENT_ZERO no longer match NBD_STATE_HOLE / NBD_STATE_ZERO"
#endif

static uint8_t back[SIZE];

static void put(ckpt_disk *disk, uint64_t off, size_t n, uint8_t byte) {
    static uint8_t buf[65536];
    memset(buf, byte, sizeof buf);
    CHECK(n <= sizeof buf);
    EXPECT_OK(ckpt_disk_write(disk, buf, n, off));
}

/* An expected extent: start and length in bytes, and whether it is a hole. */
typedef struct {
    uint64_t offset, length;
    int hole;
} want;

/*
 * Map [off, off + len) of `disk` and check it against `w` (n entries), and
 * the general promises: contiguous from `off` to `off + len`, neighbours
 * with different flags, no unknown flag bits, reserved 0, and every hole
 * reads as zeros.
 */
static void expect_map(ckpt_disk *disk, uint64_t off, uint64_t len, const want *w, size_t n) {
    ckpt_extent e[MAX_EXTENTS];
    size_t count = 0;
    memset(e, 0x5a, sizeof e);
    EXPECT_OK(ckpt_disk_extents(disk, off, len, e, MAX_EXTENTS, &count));
    CHECK(count == n);
    if (count != n || count > MAX_EXTENTS) {
        for (size_t i = 0; i < count && i < MAX_EXTENTS; i++) {
            fprintf(stderr, "    got [%llu, +%llu) flags %u\n", (unsigned long long)e[i].offset,
                    (unsigned long long)e[i].length, e[i].flags);
        }
        return;
    }
    EXPECT_OK(ckpt_disk_read(disk, back, SIZE, 0));
    uint64_t pos = off;
    for (size_t i = 0; i < count; i++) {
        uint32_t hole_flags = CKPT_EXTENT_HOLE | CKPT_EXTENT_ZERO;
        CHECK(e[i].offset == pos && e[i].length > 0);
        CHECK(e[i].offset == w[i].offset && e[i].length == w[i].length);
        CHECK(e[i].flags == (w[i].hole ? hole_flags : 0u));
        CHECK(e[i].reserved == 0);
        if (i > 0) {
            CHECK(e[i].flags != e[i - 1].flags);
        }
        if (e[i].flags & CKPT_EXTENT_ZERO) {
            int zero = 1;
            for (uint64_t b = e[i].offset; b < e[i].offset + e[i].length; b++) {
                zero &= back[b] == 0;
            }
            CHECK(zero);
        }
        pos = e[i].offset + e[i].length;
    }
    CHECK(pos == off + len);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    char base[4096], child[4096];
    snprintf(base, sizeof base, "%s/ebase.vhdx", dir);
    snprintf(child, sizeof child, "%s/echild.avhdx", dir);

    /* A dynamic base with 1 MiB blocks: data in blocks 0 and 3. */
    ckpt_create_options o;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.block_size = MIB;
    ckpt_disk *disk = NULL;
    EXPECT_OK(ckpt_disk_create(base, SIZE, &o, &disk));
    if (disk == NULL) {
        return check_finish("test_extents");
    }
    /* A new disk is one hole. */
    const want empty[] = {{0, SIZE, 1}};
    expect_map(disk, 0, SIZE, empty, 1);
    put(disk, 0, 65536, 0x11);
    put(disk, 3 * MIB + 100, 10, 0x22);
    const want base_map[] = {
        {0, MIB, 0}, {MIB, 2 * MIB, 1}, {3 * MIB, MIB, 0}, {4 * MIB, 4 * MIB, 1}};
    expect_map(disk, 0, SIZE, base_map, 4);
    EXPECT_OK(ckpt_disk_close(disk));

    /* A child (1 MiB blocks): data in block 5, block 3 trimmed over the
     * base's data. */
    ckpt_child_options co = child_options(MIB);
    disk = NULL;
    EXPECT_OK(ckpt_disk_create_child(child, base, &co, &disk));
    if (disk == NULL) {
        return check_finish("test_extents");
    }
    /* Before any write the child maps as its parent. */
    expect_map(disk, 0, SIZE, base_map, 4);
    put(disk, 5 * MIB + 4096, 4096, 0x33);
    EXPECT_OK(ckpt_disk_trim(disk, 3 * MIB, MIB));
    EXPECT_OK(ckpt_disk_close(disk));

    disk = NULL;
    EXPECT_OK(ckpt_disk_open(child, CKPT_OPEN_READ_ONLY, &disk));
    if (disk == NULL) {
        return check_finish("test_extents");
    }
    const want chain_map[] = {
        {0, MIB, 0}, {MIB, 4 * MIB, 1}, {5 * MIB, MIB, 0}, {6 * MIB, 2 * MIB, 1}};
    expect_map(disk, 0, SIZE, chain_map, 4);

    /* A sub-range: the first and last extents are cut to it. */
    const want sub[] = {{MIB / 2, MIB / 2, 0}, {MIB, 4 * MIB, 1}, {5 * MIB, 5000, 0}};
    expect_map(disk, MIB / 2, 4 * MIB + MIB / 2 + 5000, sub, 3);
    const want inside[] = {{5 * MIB + 4096 + 7, 512, 0}};
    expect_map(disk, 5 * MIB + 4096 + 7, 512, inside, 1);
    /* The last byte of the disk. */
    const want last[] = {{SIZE - 1, 1, 1}};
    expect_map(disk, SIZE - 1, 1, last, 1);

    /* Count first (cap 0, buf NULL), then fill. */
    size_t count = 777;
    EXPECT_STATUS(ckpt_disk_extents(disk, 0, SIZE, NULL, 0, &count), CKPT_STATUS_BUFFER_TOO_SMALL);
    CHECK(count == 4);
    CHECK(strstr(last_error_text(), "4 extents") != NULL);
    /* Too small: the buffer is not touched, the count is still given. */
    ckpt_extent e[MAX_EXTENTS];
    memset(e, 0x5a, sizeof e);
    count = 777;
    EXPECT_STATUS(ckpt_disk_extents(disk, 0, SIZE, e, 3, &count), CKPT_STATUS_BUFFER_TOO_SMALL);
    CHECK(count == 4 && e[0].offset == 0x5a5a5a5a5a5a5a5aULL && e[2].flags == 0x5a5a5a5au);
    count = 777;
    EXPECT_OK(ckpt_disk_extents(disk, 0, SIZE, e, 4, &count));
    CHECK(count == 4 && e[3].offset == 6 * MIB && e[3].length == 2 * MIB);
    /* Length 0: no extent, and buf may be NULL. */
    count = 777;
    EXPECT_OK(ckpt_disk_extents(disk, MIB, 0, NULL, 0, &count));
    CHECK(count == 0);

    /* Past the end: refused, nothing written. */
    count = 777;
    memset(e, 0x5a, sizeof e);
    EXPECT_STATUS(ckpt_disk_extents(disk, SIZE - 512, 1024, e, MAX_EXTENTS, &count),
                  CKPT_STATUS_OUT_OF_RANGE);
    EXPECT_STATUS(ckpt_disk_extents(disk, SIZE, 1, e, MAX_EXTENTS, &count),
                  CKPT_STATUS_OUT_OF_RANGE);
    EXPECT_STATUS(ckpt_disk_extents(disk, UINT64_MAX, 2, e, MAX_EXTENTS, &count),
                  CKPT_STATUS_OUT_OF_RANGE);
    CHECK(count == 777 && e[0].offset == 0x5a5a5a5a5a5a5a5aULL);
    EXPECT_OK(ckpt_disk_close(disk));

    return check_finish("test_extents");
}
