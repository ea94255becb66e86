/*
 * Base disks through the C API: create, info, write, read back, flush,
 * trim, read/write past the end, reopen read-only (writes refused),
 * reopen read-write, fixed disks, and concurrent I/O on one handle (of a
 * base disk, and of a differencing chain with trims, flushes and getters).
 *
 * Usage: test_disk_io DIR (a scratch directory)
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

#define DISK_SIZE (8u * MIB)

static void fill(uint8_t *p, size_t n, uint32_t seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = (uint8_t)(seed >> 16);
    }
}

static int all_zero(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (p[i] != 0) {
            return 0;
        }
    }
    return 1;
}

static int get_info(const ckpt_disk *disk, ckpt_disk_info *info) {
    memset(info, 0, sizeof *info);
    info->struct_size = sizeof *info;
    return ckpt_disk_get_info(disk, info) == CKPT_STATUS_OK;
}

static void create_write_read(const char *path) {
    ckpt_disk *disk = NULL;
    ckpt_create_options o;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.block_size = MIB;
    EXPECT_OK(ckpt_disk_create(path, DISK_SIZE, &o, &disk));
    if (disk == NULL) {
        return;
    }

    /* info of a fresh dynamic disk */
    ckpt_disk_info info;
    CHECK(get_info(disk, &info));
    CHECK(info.struct_size == sizeof info);
    CHECK(info.kind == CKPT_DISK_KIND_DYNAMIC);
    CHECK(info.virtual_size == DISK_SIZE);
    CHECK(info.block_size == MIB);
    CHECK(info.logical_sector_size == 512);
    CHECK(info.physical_sector_size == 4096);
    CHECK(info.file_size > 0);
    CHECK(info.allocated_bytes == 0);
    CHECK(!info.log_dirty && !info.has_parent && !info.read_only);
    CHECK(!all_zero(info.disk_id, sizeof info.disk_id));

    CHECK(info.format == CKPT_DISK_FORMAT_VHDX && info.reserved2 == 0);

    /* A caller compiled against the first version of the struct (64
       bytes, up to disk_id) gets those fields and nothing past them. */
    ckpt_disk_info v1;
    memset(&v1, 0x44, sizeof v1);
    v1.struct_size = 64;
    EXPECT_OK(ckpt_disk_get_info(disk, &v1));
    CHECK(v1.struct_size == 64 && v1.virtual_size == info.virtual_size);
    CHECK(memcmp(v1.disk_id, info.disk_id, sizeof v1.disk_id) == 0);
    CHECK(v1.format == 0x44444444u && v1.reserved2 == 0x44444444u);

    /* struct_size too small: refused, nothing written */
    ckpt_disk_info small;
    memset(&small, 0x33, sizeof small);
    small.struct_size = 8;
    EXPECT_STATUS(ckpt_disk_get_info(disk, &small), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(small.struct_size == 8 && small.virtual_size == 0x3333333333333333ULL);

    /* unwritten space reads as zeros */
    static uint8_t buf[3 * 65536], back[3 * 65536];
    memset(back, 0xEE, sizeof back);
    EXPECT_OK(ckpt_disk_read(disk, back, sizeof back, 3 * MIB));
    CHECK(all_zero(back, sizeof back));

    /* an unaligned write across a block boundary, read back */
    fill(buf, sizeof buf, 1);
    uint64_t off = MIB - 4095;
    EXPECT_OK(ckpt_disk_write(disk, buf, sizeof buf, off));
    memset(back, 0, sizeof back);
    EXPECT_OK(ckpt_disk_read(disk, back, sizeof back, off));
    CHECK(memcmp(buf, back, sizeof buf) == 0);
    /* a small read in the middle */
    uint8_t mid[7];
    EXPECT_OK(ckpt_disk_read(disk, mid, sizeof mid, off + 1000));
    CHECK(memcmp(mid, buf + 1000, sizeof mid) == 0);

    /* the last bytes of the disk */
    EXPECT_OK(ckpt_disk_write(disk, buf, 512, DISK_SIZE - 512));
    EXPECT_OK(ckpt_disk_read(disk, back, 512, DISK_SIZE - 512));
    CHECK(memcmp(buf, back, 512) == 0);

    /* zero-length requests never touch the buffer */
    EXPECT_OK(ckpt_disk_read(disk, NULL, 0, 0));
    EXPECT_OK(ckpt_disk_write(disk, NULL, 0, 0));
    /* but a NULL buffer with a length is refused */
    EXPECT_STATUS(ckpt_disk_read(disk, NULL, 16, 0), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_disk_write(disk, NULL, 16, 0), CKPT_STATUS_NULL_POINTER);

    /* past the end: refused, the buffer is untouched */
    memset(back, 0xEE, 1024);
    EXPECT_STATUS(ckpt_disk_read(disk, back, 1024, DISK_SIZE - 512), CKPT_STATUS_OUT_OF_RANGE);
    CHECK(back[0] == 0xEE && back[1023] == 0xEE);
    CHECK(strstr(last_error_text(), "outside") != NULL);
    EXPECT_STATUS(ckpt_disk_read(disk, back, 1, DISK_SIZE), CKPT_STATUS_OUT_OF_RANGE);
    EXPECT_STATUS(ckpt_disk_read(disk, back, 16, UINT64_MAX - 4), CKPT_STATUS_OUT_OF_RANGE);
    EXPECT_STATUS(ckpt_disk_write(disk, buf, 1024, DISK_SIZE - 512), CKPT_STATUS_OUT_OF_RANGE);
    EXPECT_STATUS(ckpt_disk_write(disk, buf, 16, UINT64_MAX - 4), CKPT_STATUS_OUT_OF_RANGE);
    EXPECT_STATUS(ckpt_disk_trim(disk, DISK_SIZE - MIB, 2 * MIB), CKPT_STATUS_OUT_OF_RANGE);
    /* the refused write changed nothing */
    EXPECT_OK(ckpt_disk_read(disk, back, 512, DISK_SIZE - 512));
    CHECK(memcmp(buf, back, 512) == 0);

    EXPECT_OK(ckpt_disk_flush(disk));

    /* allocation: the write touched blocks 0, 1 and the last one */
    CHECK(get_info(disk, &info));
    CHECK(info.allocated_bytes == 3 * (uint64_t)MIB);

    /* trim a whole block: reads as zeros, space given back */
    EXPECT_OK(ckpt_disk_trim(disk, 7 * (uint64_t)MIB, MIB));
    EXPECT_OK(ckpt_disk_read(disk, back, 512, DISK_SIZE - 512));
    CHECK(all_zero(back, 512));
    CHECK(get_info(disk, &info));
    CHECK(info.allocated_bytes == 2 * (uint64_t)MIB);
    /* trim part of a block: that part reads as zeros, the rest stays */
    EXPECT_OK(ckpt_disk_trim(disk, MIB, 4096));
    EXPECT_OK(ckpt_disk_read(disk, back, sizeof back, off));
    CHECK(memcmp(back, buf, 4095) == 0);
    CHECK(all_zero(back + 4095, 4096));
    CHECK(memcmp(back + 4095 + 4096, buf + 4095 + 4096, sizeof buf - 4095 - 4096) == 0);

    EXPECT_OK(ckpt_disk_close(disk));
}

static void reopen_read_only(const char *path) {
    static uint8_t buf[3 * 65536], back[3 * 65536];
    fill(buf, sizeof buf, 1);
    uint64_t off = MIB - 4095;

    ckpt_disk *disk = NULL;
    EXPECT_OK(ckpt_disk_open(path, CKPT_OPEN_READ_ONLY, &disk));
    if (disk == NULL) {
        return;
    }
    ckpt_disk_info info;
    CHECK(get_info(disk, &info));
    CHECK(info.read_only);
    CHECK(info.virtual_size == DISK_SIZE);
    CHECK(!info.log_dirty); /* it was closed cleanly */

    /* the data survived close and reopen (the trimmed 4 KiB reads as zeros) */
    EXPECT_OK(ckpt_disk_read(disk, back, sizeof back, off));
    CHECK(memcmp(back, buf, 4095) == 0);
    CHECK(all_zero(back + 4095, 4096));
    CHECK(memcmp(back + 8191, buf + 8191, sizeof buf - 8191) == 0);

    /* writes are refused */
    EXPECT_STATUS(ckpt_disk_write(disk, buf, 512, 0), CKPT_STATUS_READ_ONLY);
    CHECK(strstr(last_error_text(), "read-only") != NULL);
    EXPECT_STATUS(ckpt_disk_trim(disk, 0, MIB), CKPT_STATUS_READ_ONLY);
    EXPECT_OK(ckpt_disk_read(disk, back, 512, 0));
    CHECK(all_zero(back, 512));
    EXPECT_OK(ckpt_disk_close(disk));

    /* read-write again: writes work */
    disk = NULL;
    EXPECT_OK(ckpt_disk_open(path, CKPT_OPEN_READ_WRITE, &disk));
    if (disk == NULL) {
        return;
    }
    CHECK(get_info(disk, &info));
    CHECK(!info.read_only);
    EXPECT_OK(ckpt_disk_write(disk, buf, 512, 0));
    EXPECT_OK(ckpt_disk_read(disk, back, 512, 0));
    CHECK(memcmp(back, buf, 512) == 0);
    EXPECT_OK(ckpt_disk_close(disk));

    /* creating over an existing file fails and hands out nothing */
    disk = DISK_SENTINEL;
    ckpt_status s = ckpt_disk_create(path, DISK_SIZE, NULL, &disk);
    CHECK(s != CKPT_STATUS_OK);
    CHECK(disk == DISK_SENTINEL);
    CHECK(ckpt_last_error_length() > 0);
}

static void fixed_disk(const char *path) {
    ckpt_create_options o;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.flags = CKPT_CREATE_FIXED;
    o.block_size = MIB;
    o.logical_sector_size = 4096;
    ckpt_disk *disk = NULL;
    EXPECT_OK(ckpt_disk_create(path, 4 * MIB, &o, &disk));
    if (disk == NULL) {
        return;
    }
    ckpt_disk_info info;
    CHECK(get_info(disk, &info));
    CHECK(info.kind == CKPT_DISK_KIND_FIXED);
    CHECK(info.logical_sector_size == 4096);
    CHECK(info.allocated_bytes == 4 * (uint64_t)MIB);
    CHECK(info.file_size >= 4 * (uint64_t)MIB);
    uint8_t b[4096];
    EXPECT_OK(ckpt_disk_read(disk, b, sizeof b, 4 * MIB - sizeof b));
    CHECK(all_zero(b, sizeof b));
    EXPECT_OK(ckpt_disk_close(disk));
}

/* Several threads writing and reading their own ranges of one handle. */
#define THREADS 4
#define PER_THREAD (MIB / 2)

typedef struct {
    ckpt_disk *disk;
    unsigned index;
    int ok;
} worker;

static void *work(void *arg) {
    worker *w = arg;
    uint8_t *buf = malloc(PER_THREAD);
    uint8_t *back = malloc(PER_THREAD);
    w->ok = 0;
    if (buf != NULL && back != NULL) {
        fill(buf, PER_THREAD, 100 + w->index);
        uint64_t base = (uint64_t)w->index * PER_THREAD + 512 * w->index;
        int ok = 1;
        for (unsigned i = 0; i < PER_THREAD / 8192; i++) {
            uint64_t at = base + (uint64_t)i * 8192;
            ok &= ckpt_disk_write(w->disk, buf + i * 8192, 8192, at) == CKPT_STATUS_OK;
            ok &= ckpt_disk_read(w->disk, back + i * 8192, 8192, at) == CKPT_STATUS_OK;
        }
        w->ok = ok && memcmp(buf, back, PER_THREAD) == 0;
    }
    free(buf);
    free(back);
    return NULL;
}

static void concurrent(const char *path) {
    ckpt_create_options o;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.block_size = MIB;
    ckpt_disk *disk = NULL;
    EXPECT_OK(ckpt_disk_create(path, DISK_SIZE, &o, &disk));
    if (disk == NULL) {
        return;
    }
    pthread_t t[THREADS];
    worker w[THREADS];
    for (unsigned i = 0; i < THREADS; i++) {
        w[i].disk = disk;
        w[i].index = i;
        w[i].ok = 0;
        CHECK(pthread_create(&t[i], NULL, work, &w[i]) == 0);
    }
    for (unsigned i = 0; i < THREADS; i++) {
        CHECK(pthread_join(t[i], NULL) == 0);
        CHECK(w[i].ok);
    }
    EXPECT_OK(ckpt_disk_close(disk));

    /* everything is there after reopening */
    EXPECT_OK(ckpt_disk_open(path, CKPT_OPEN_READ_ONLY, &disk));
    if (disk == NULL) {
        return;
    }
    uint8_t *want = malloc(PER_THREAD), *got = malloc(PER_THREAD);
    CHECK(want != NULL && got != NULL);
    if (want != NULL && got != NULL) {
        for (unsigned i = 0; i < THREADS; i++) {
            fill(want, PER_THREAD, 100 + i);
            EXPECT_OK(ckpt_disk_read(disk, got, PER_THREAD, (uint64_t)i * PER_THREAD + 512 * i));
            CHECK(memcmp(want, got, PER_THREAD) == 0);
        }
    }
    free(want);
    free(got);
    EXPECT_OK(ckpt_disk_close(disk));
}

/*
 * Several threads on one handle of a differencing chain, mixing every call
 * a disk handle allows concurrently: each thread writes (sector-aligned,
 * as the ckpt_disk thread-safety note asks for differencing disks) and
 * reads back its own ranges, trims a part of them (which must then read as
 * zeros although the parent holds data there), flushes, and calls the
 * getters. Afterwards the chain reopens with every thread's data, and the
 * parent is unchanged.
 */
#define CHAIN_THREADS 4
#define SLICE (DISK_SIZE / CHAIN_THREADS)
#define ROUNDS 24
#define CHUNK 16384u

typedef struct {
    ckpt_disk *disk;
    unsigned index;
    uint8_t *want; /* what the thread's slice must read as at the end */
    int ok;
} chain_worker;

static void *chain_work(void *arg) {
    chain_worker *w = arg;
    uint8_t *buf = malloc(CHUNK), *back = malloc(CHUNK);
    int ok = buf != NULL && back != NULL;
    uint64_t base = (uint64_t)w->index * SLICE;
    for (unsigned r = 0; ok && r < ROUNDS; r++) {
        uint64_t at = (uint64_t)r * (SLICE / ROUNDS) / 512 * 512;
        fill(buf, CHUNK, 1000 * w->index + r);
        ok &= ckpt_disk_write(w->disk, buf, CHUNK, base + at) == CKPT_STATUS_OK;
        ok &= ckpt_disk_read(w->disk, back, CHUNK, base + at) == CKPT_STATUS_OK;
        ok &= memcmp(buf, back, CHUNK) == 0;
        memcpy(w->want + at, buf, CHUNK);
        if (r % 3 == 1) {
            /* Trim the middle of what was just written, over parent data. */
            ok &= ckpt_disk_trim(w->disk, base + at + 4096, 8192) == CKPT_STATUS_OK;
            memset(w->want + at + 4096, 0, 8192);
            ok &= ckpt_disk_read(w->disk, back, CHUNK, base + at) == CKPT_STATUS_OK;
            ok &= memcmp(w->want + at, back, CHUNK) == 0;
        }
        if (r % 4 == 2) {
            ok &= ckpt_disk_flush(w->disk) == CKPT_STATUS_OK;
        }
        ckpt_disk_info info;
        size_t depth = 0;
        ok &= get_info(w->disk, &info) && info.has_parent;
        ok &= ckpt_disk_chain_length(w->disk, &depth) == CKPT_STATUS_OK && depth == 2;
    }
    /* The whole slice, written and untouched parts, reads as expected. */
    uint8_t *all = malloc(SLICE);
    ok &= all != NULL;
    if (all != NULL) {
        ok &= ckpt_disk_read(w->disk, all, SLICE, base) == CKPT_STATUS_OK;
        ok &= memcmp(all, w->want, SLICE) == 0;
    }
    free(all);
    free(buf);
    free(back);
    w->ok = ok;
    return NULL;
}

static void concurrent_chain(const char *dir) {
    char base[4096], child[4096];
    snprintf(base, sizeof base, "%s/cbase.vhdx", dir);
    snprintf(child, sizeof child, "%s/cchild.avhdx", dir);
    uint8_t *parent = malloc(DISK_SIZE);
    CHECK(parent != NULL);
    if (parent == NULL) {
        return;
    }
    fill(parent, DISK_SIZE, 77);
    ckpt_disk *disk = NULL;
    EXPECT_OK(ckpt_disk_create(base, DISK_SIZE, NULL, &disk));
    if (disk == NULL) {
        free(parent);
        return;
    }
    EXPECT_OK(ckpt_disk_write(disk, parent, DISK_SIZE, 0));
    EXPECT_OK(ckpt_disk_close(disk));

    ckpt_child_options co = child_options(MIB);
    disk = NULL;
    EXPECT_OK(ckpt_disk_create_child(child, base, &co, &disk));
    if (disk == NULL) {
        free(parent);
        return;
    }
    pthread_t t[CHAIN_THREADS];
    chain_worker w[CHAIN_THREADS];
    for (unsigned i = 0; i < CHAIN_THREADS; i++) {
        w[i].disk = disk;
        w[i].index = i;
        w[i].want = parent + (size_t)i * SLICE; /* starts as the parent's bytes */
        w[i].ok = 0;
        CHECK(pthread_create(&t[i], NULL, chain_work, &w[i]) == 0);
    }
    for (unsigned i = 0; i < CHAIN_THREADS; i++) {
        CHECK(pthread_join(t[i], NULL) == 0);
        CHECK(w[i].ok);
    }
    EXPECT_OK(ckpt_disk_close(disk));

    /* Reopened: the chain reads as the threads left it ... */
    uint8_t *got = malloc(DISK_SIZE);
    CHECK(got != NULL);
    disk = NULL;
    EXPECT_OK(ckpt_disk_open(child, CKPT_OPEN_READ_ONLY, &disk));
    if (disk != NULL && got != NULL) {
        EXPECT_OK(ckpt_disk_read(disk, got, DISK_SIZE, 0));
        CHECK(memcmp(got, parent, DISK_SIZE) == 0);
    }
    EXPECT_OK(ckpt_disk_close(disk));
    /* ... and the parent still holds its own bytes. */
    fill(parent, DISK_SIZE, 77);
    disk = NULL;
    EXPECT_OK(ckpt_disk_open(base, CKPT_OPEN_READ_ONLY, &disk));
    if (disk != NULL && got != NULL) {
        EXPECT_OK(ckpt_disk_read(disk, got, DISK_SIZE, 0));
        CHECK(memcmp(got, parent, DISK_SIZE) == 0);
    }
    EXPECT_OK(ckpt_disk_close(disk));
    free(got);
    free(parent);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    char a[4096], b[4096], c[4096];
    snprintf(a, sizeof a, "%s/dynamic.vhdx", argv[1]);
    snprintf(b, sizeof b, "%s/fixed.vhdx", argv[1]);
    snprintf(c, sizeof c, "%s/threads.vhdx", argv[1]);
    create_write_read(a);
    reopen_read_only(a);
    fixed_disk(b);
    concurrent(c);
    concurrent_chain(argv[1]);
    return check_finish("test_disk_io");
}
