/*
 * Differencing chains through the C API: children, the chain's paths,
 * parent path and creator getters, changed ranges (with a too-small
 * buffer), flatten (with progress and cancel), merge (cancelled through
 * the progress callback, then finished; into an ancestor) and re-parent.
 * Every read is compared with a model of the bytes written.
 *
 * Usage: test_chain DIR (a scratch directory)
 */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

#define SIZE (8u * MIB)

static uint8_t model[SIZE];
static uint8_t back[SIZE];

static void fill(uint8_t *p, size_t n, uint32_t seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = (uint8_t)(seed >> 16) | 1u; /* never zero */
    }
}

static int ends_with(const char *s, const char *tail) {
    size_t a = strlen(s), b = strlen(tail);
    return a >= b && strcmp(s + a - b, tail) == 0;
}

/* Write `n` bytes of pattern `seed` at `off` through `disk` and into the model. */
static void put(ckpt_disk *disk, uint64_t off, size_t n, uint32_t seed) {
    uint8_t *buf = malloc(n);
    if (buf == NULL) {
        CHECK(!"out of memory");
        return;
    }
    fill(buf, n, seed);
    EXPECT_OK(ckpt_disk_write(disk, buf, n, off));
    memcpy(model + off, buf, n);
    free(buf);
}

/* Whether the whole of an open disk reads as the model. */
static int handle_reads_as_model(ckpt_disk *disk) {
    memset(back, 0xEE, sizeof back);
    ckpt_status s = ckpt_disk_read(disk, back, sizeof back, 0);
    return s == CKPT_STATUS_OK && memcmp(back, model, sizeof back) == 0;
}

/* Whether the whole disk at `path` reads as the model. */
static int reads_as_model(const char *path) {
    ckpt_disk *disk = NULL;
    if (ckpt_disk_open(path, CKPT_OPEN_READ_ONLY, &disk) != CKPT_STATUS_OK) {
        return 0;
    }
    int same = handle_reads_as_model(disk);
    ckpt_disk_close(disk);
    return same;
}

typedef struct {
    int calls;
    int cancel_at; /* cancel on this call (1-based); 0 = never */
    uint64_t last_done, last_total;
    int monotonic;
} progress_state;

static int on_progress(uint64_t done, uint64_t total, void *user) {
    progress_state *p = user;
    p->calls++;
    if (done < p->last_done || done > total) {
        p->monotonic = 0;
    }
    p->last_done = done;
    p->last_total = total;
    return p->cancel_at != 0 && p->calls >= p->cancel_at;
}

static progress_state progress_new(int cancel_at) {
    progress_state p;
    memset(&p, 0, sizeof p);
    p.cancel_at = cancel_at;
    p.monotonic = 1;
    return p;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    char base[4096], child1[4096], child2[4096], flat[4096], flat2[4096];
    snprintf(base, sizeof base, "%s/base.vhdx", dir);
    snprintf(child1, sizeof child1, "%s/child1.avhdx", dir);
    snprintf(child2, sizeof child2, "%s/child2.avhdx", dir);
    snprintf(flat, sizeof flat, "%s/flat.vhdx", dir);
    snprintf(flat2, sizeof flat2, "%s/flat2.vhdx", dir);
    memset(model, 0, sizeof model);

    /* A base disk with data at 0 and 3 MiB. */
    ckpt_create_options o;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.block_size = MIB;
    ckpt_disk *disk = NULL;
    EXPECT_OK(ckpt_disk_create(base, SIZE, &o, &disk));
    if (disk == NULL) {
        return check_finish("test_chain");
    }
    put(disk, 0, 65536, 1);
    put(disk, 3 * MIB, 65536, 2);
    char text[4096];
    size_t len = 0;
    /* A base disk has no parent. */
    EXPECT_STATUS(ckpt_disk_get_parent_path(disk, text, sizeof text, &len),
                  CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(last_error_text(), "no parent") != NULL);
    EXPECT_OK(ckpt_disk_close(disk));

    /* A child with 1 MiB blocks: a sector-aligned write and an unaligned one. */
    ckpt_child_options co = child_options(MIB);
    disk = NULL;
    EXPECT_OK(ckpt_disk_create_child(child1, base, &co, &disk));
    if (disk == NULL) {
        return check_finish("test_chain");
    }
    ckpt_disk_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    EXPECT_OK(ckpt_disk_get_info(disk, &info));
    CHECK(info.kind == CKPT_DISK_KIND_DIFFERENCING && info.has_parent);
    CHECK(info.virtual_size == SIZE && info.block_size == MIB);
    CHECK(handle_reads_as_model(disk)); /* before any write: the parent's data */
    put(disk, MIB, 65536, 3);
    put(disk, 5 * MIB + 10, 100, 4);
    EXPECT_OK(ckpt_disk_flush(disk));

    /* Locks: while child1 is open for writing (and base as its parent),
     * nothing else may open child1, nor write base, nor give child1 a
     * child, nor merge or flatten it: CKPT_STATUS_BUSY naming the file and
     * this process as the holder. Read-only opens of base coexist. */
    ckpt_disk *again = NULL;
    EXPECT_STATUS(ckpt_disk_open(child1, CKPT_OPEN_READ_ONLY, &again), CKPT_STATUS_BUSY);
    CHECK(again == NULL);
    CHECK(strstr(last_error_text(), "child1.avhdx") != NULL);
    CHECK(strstr(last_error_text(), "open for writing by another handle in this process") != NULL);
    EXPECT_STATUS(ckpt_disk_open(base, CKPT_OPEN_READ_WRITE, &again), CKPT_STATUS_BUSY);
    CHECK(again == NULL);
    CHECK(strstr(last_error_text(), "base.vhdx") != NULL);
    CHECK(strstr(last_error_text(), "read-only by another handle in this process") != NULL);
    EXPECT_STATUS(ckpt_disk_create_child(child2, child1, NULL, &again), CKPT_STATUS_BUSY);
    CHECK(again == NULL && !file_exists(child2));
    EXPECT_STATUS(ckpt_disk_merge(child1, NULL, NULL, NULL), CKPT_STATUS_BUSY);
    EXPECT_STATUS(ckpt_disk_flatten(child1, flat, NULL, NULL, NULL), CKPT_STATUS_BUSY);
    CHECK(!file_exists(flat));
    EXPECT_OK(ckpt_disk_open(base, CKPT_OPEN_READ_ONLY, &again));
    ckpt_disk_close(again);

    /* The chain, seen from the child. */
    size_t n = 0;
    EXPECT_OK(ckpt_disk_chain_length(disk, &n));
    CHECK(n == 2);
    EXPECT_OK(ckpt_disk_chain_path(disk, 0, text, sizeof text, &len));
    CHECK(ends_with(text, "/child1.avhdx") && len == strlen(text));
    EXPECT_OK(ckpt_disk_chain_path(disk, 1, text, sizeof text, &len));
    CHECK(ends_with(text, "/base.vhdx"));
    EXPECT_STATUS(ckpt_disk_chain_path(disk, 2, text, sizeof text, &len),
                  CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_OK(ckpt_disk_get_parent_path(disk, text, sizeof text, NULL));
    CHECK(ends_with(text, "/base.vhdx"));
    size_t level = 99;
    EXPECT_OK(ckpt_disk_level_of(disk, base, &level));
    CHECK(level == 1);
    EXPECT_STATUS(ckpt_disk_level_of(disk, flat, &level), CKPT_STATUS_NOT_FOUND);
    CHECK(level == 1);

    /* String getters: too small leaves the buffer alone and gives the length. */
    size_t need = 0;
    EXPECT_STATUS(ckpt_disk_get_parent_path(disk, NULL, 0, &need), CKPT_STATUS_BUFFER_TOO_SMALL);
    CHECK(need > strlen("/base.vhdx"));
    memset(text, 'x', 8);
    EXPECT_STATUS(ckpt_disk_get_parent_path(disk, text, need, &len), CKPT_STATUS_BUFFER_TOO_SMALL);
    CHECK(text[0] == 'x' && text[7] == 'x' && len == need);
    EXPECT_OK(ckpt_disk_get_parent_path(disk, text, need + 1, &len));
    CHECK(strlen(text) == need);
    EXPECT_OK(ckpt_disk_get_creator(disk, text, sizeof text, &len));
    CHECK(strncmp(text, "libckpt ", 8) == 0);
    CHECK(strstr(text, ckpt_version()) != NULL);

    /* Changed ranges of the top file alone: exact to the 512-byte sector. */
    ckpt_range ranges[16];
    size_t count = 0;
    EXPECT_STATUS(ckpt_disk_changed_ranges(disk, 1, NULL, 0, &count), CKPT_STATUS_BUFFER_TOO_SMALL);
    CHECK(count == 2);
    memset(ranges, 0x5a, sizeof ranges);
    EXPECT_STATUS(ckpt_disk_changed_ranges(disk, 1, ranges, 1, &count),
                  CKPT_STATUS_BUFFER_TOO_SMALL);
    CHECK(count == 2 && ranges[0].offset == 0x5a5a5a5a5a5a5a5aULL); /* untouched */
    EXPECT_OK(ckpt_disk_changed_ranges(disk, 1, ranges, 16, &count));
    CHECK(count == 2);
    CHECK(ranges[0].offset == MIB && ranges[0].length == 65536);
    CHECK(ranges[1].offset == 5 * MIB && ranges[1].length == 512);
    /* Down to the base: everything any file holds, sorted and disjoint,
     * covering the data written at 0 and 3 MiB and the child's ranges. */
    EXPECT_OK(ckpt_disk_changed_ranges(disk, 2, ranges, 16, &count));
    CHECK(count >= 3);
    int sorted = 1, covers0 = 0, covers3 = 0, covers1 = 0;
    for (size_t i = 0; i < count && i < 16; i++) {
        if (i > 0 && ranges[i].offset <= ranges[i - 1].offset + ranges[i - 1].length) {
            sorted = 0;
        }
        uint64_t a = ranges[i].offset, b = a + ranges[i].length;
        covers0 |= a == 0 && b >= 65536;
        covers1 |= a <= MIB && b >= MIB + 65536;
        covers3 |= a <= 3 * MIB && b >= 3 * MIB + 65536;
    }
    CHECK(sorted && covers0 && covers1 && covers3);
    EXPECT_STATUS(ckpt_disk_changed_ranges(disk, 0, ranges, 16, &count),
                  CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_disk_changed_ranges(disk, 3, ranges, 16, &count),
                  CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_OK(ckpt_disk_close(disk));

    /* A grandchild with the default options (NULL). */
    disk = NULL;
    EXPECT_OK(ckpt_disk_create_child(child2, child1, NULL, &disk));
    if (disk == NULL) {
        return check_finish("test_chain");
    }
    put(disk, 2 * MIB, 4096, 5);
    put(disk, 7 * MIB, 8192, 6);
    EXPECT_OK(ckpt_disk_chain_length(disk, &n));
    CHECK(n == 3);
    EXPECT_OK(ckpt_disk_level_of(disk, base, &level));
    CHECK(level == 2);
    EXPECT_OK(ckpt_disk_close(disk));
    /* Creating over an existing file is refused. */
    disk = NULL;
    EXPECT_STATUS(ckpt_disk_create_child(child2, child1, NULL, &disk),
                  CKPT_STATUS_ALREADY_EXISTS);
    CHECK(disk == NULL);
    CHECK(reads_as_model(child2));

    /* Flatten, cancelled on the first progress call: nothing is left. */
    progress_state p = progress_new(1);
    EXPECT_STATUS(ckpt_disk_flatten(child2, flat, NULL, on_progress, &p), CKPT_STATUS_CANCELLED);
    CHECK(p.calls == 1);
    CHECK(!file_exists(flat));
    /* Flatten for real: a standalone disk with the same bytes. */
    p = progress_new(0);
    EXPECT_OK(ckpt_disk_flatten(child2, flat, &o, on_progress, &p));
    CHECK(p.calls >= 1 && p.monotonic && p.last_done == p.last_total && p.last_total > 0);
    CHECK(chain_length(flat) == 1);
    CHECK(reads_as_model(flat));
    /* Without a callback and with default options. */
    EXPECT_OK(ckpt_disk_flatten(child2, flat2, NULL, NULL, NULL));
    CHECK(reads_as_model(flat2));

    /* Merge child2 into child1, cancelled by the progress callback: the
     * chain is still whole and reads the same bytes. */
    p = progress_new(1);
    EXPECT_STATUS(ckpt_disk_merge(child2, NULL, on_progress, &p), CKPT_STATUS_CANCELLED);
    CHECK(p.calls == 1);
    CHECK(strstr(last_error_text(), "cancel") != NULL);
    CHECK(file_exists(child2));
    CHECK(chain_length(child2) == 3);
    CHECK(reads_as_model(child2));
    /* The same merge again finishes it: child2 is gone, child1 has its data. */
    p = progress_new(0);
    EXPECT_OK(ckpt_disk_merge(child2, NULL, on_progress, &p));
    CHECK(p.calls >= 1 && p.monotonic);
    CHECK(!file_exists(child2));
    CHECK(chain_length(child1) == 2);
    CHECK(reads_as_model(child1));

    /* Merge into an ancestor: a new child of child1, merged into the base. */
    disk = NULL;
    EXPECT_OK(ckpt_disk_create_child(child2, child1, &co, &disk));
    if (disk != NULL) {
        put(disk, 6 * MIB, 512, 7);
        EXPECT_OK(ckpt_disk_close(disk));
    }
    EXPECT_OK(ckpt_disk_merge(child2, base, NULL, NULL));
    CHECK(!file_exists(child2) && !file_exists(child1));
    CHECK(chain_length(base) == 1);
    CHECK(reads_as_model(base));
    /* A base disk cannot be merged. */
    EXPECT_STATUS(ckpt_disk_merge(base, NULL, NULL, NULL), CKPT_STATUS_INVALID_ARGUMENT);

    /* Re-parent after the parent moved. */
    char moved[4096], other[4096];
    snprintf(moved, sizeof moved, "%s/moved.vhdx", dir);
    snprintf(other, sizeof other, "%s/other.vhdx", dir);
    disk = NULL;
    EXPECT_OK(ckpt_disk_create_child(child1, base, &co, &disk));
    if (disk != NULL) {
        put(disk, 4 * MIB, 4096, 8);
        EXPECT_OK(ckpt_disk_close(disk));
    }
    CHECK(rename(base, moved) == 0);
    disk = NULL;
    ckpt_status s = ckpt_disk_open(child1, CKPT_OPEN_READ_ONLY, &disk);
    CHECK(s != CKPT_STATUS_OK && disk == NULL); /* the parent is not found */
    EXPECT_OK(ckpt_disk_reparent(child1, moved, 0));
    CHECK(reads_as_model(child1));
    /* An unrelated disk of the same size: refused unless forced. */
    disk = NULL;
    EXPECT_OK(ckpt_disk_create(other, SIZE, &o, &disk));
    EXPECT_OK(ckpt_disk_close(disk));
    EXPECT_STATUS(ckpt_disk_reparent(child1, other, 0), CKPT_STATUS_PARENT_MISMATCH);
    CHECK(reads_as_model(child1)); /* unchanged */
    EXPECT_OK(ckpt_disk_reparent(child1, other, 1));
    disk = NULL;
    EXPECT_OK(ckpt_disk_open(child1, CKPT_OPEN_READ_ONLY, &disk));
    if (disk != NULL) {
        EXPECT_OK(ckpt_disk_get_parent_path(disk, text, sizeof text, NULL));
        CHECK(ends_with(text, "/other.vhdx"));
        /* Only the child's own data is left over an empty parent. */
        uint8_t b[4096];
        EXPECT_OK(ckpt_disk_read(disk, b, sizeof b, 4 * MIB));
        CHECK(memcmp(b, model + 4 * MIB, sizeof b) == 0);
        EXPECT_OK(ckpt_disk_read(disk, b, sizeof b, 0));
        CHECK(b[0] == 0 && b[4095] == 0);
        EXPECT_OK(ckpt_disk_close(disk));
    }
    /* Re-parenting a base disk is refused. */
    EXPECT_STATUS(ckpt_disk_reparent(moved, other, 1), CKPT_STATUS_INVALID_ARGUMENT);

    /* Options: bad struct_size, unknown flags. */
    ckpt_child_options bad = co;
    bad.struct_size = 4;
    disk = NULL;
    EXPECT_STATUS(ckpt_disk_create_child(child2, moved, &bad, &disk), CKPT_STATUS_INVALID_ARGUMENT);
    bad = co;
    bad.flags = 2;
    EXPECT_STATUS(ckpt_disk_create_child(child2, moved, &bad, &disk), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(disk == NULL && !file_exists(child2));

    return check_finish("test_chain");
}
