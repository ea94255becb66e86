/*
 * Incremental backup through the C API (issue 15, part 1): a VM on one
 * disk, a full export of checkpoint c0, writes, checkpoint c1, the changes
 * between c0 and c1 through the extent iterator (ckpt_vm_changes_open /
 * _next / _free), the incremental export of c1 on the full export, the
 * chain read back (two files, the written bytes, zeros elsewhere),
 * refusals (REF not older, a wrong base, unknown names) and NULL
 * arguments.
 *
 * Usage: test_backup DIR (a scratch directory)
 */
#define _POSIX_C_SOURCE 200809L

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "test_util.h"

#define SIZE (8u * MIB)

/* The current file of disk 0, into a static buffer. */
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

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    char disk[4096], vmdir[4096], full[4096], inc[4096], other[4096];
    snprintf(disk, sizeof disk, "%s/os.vhdx", dir);
    snprintf(vmdir, sizeof vmdir, "%s/vm", dir);
    snprintf(full, sizeof full, "%s/full", dir);
    snprintf(inc, sizeof inc, "%s/inc", dir);
    snprintf(other, sizeof other, "%s/other", dir);
    make_disk(disk, SIZE);
    const char *disks[] = {disk};
    ckpt_vm_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.struct_size = sizeof spec;
    spec.name = "backup";
    spec.disks = disks;
    spec.disk_count = 1;
    spec.checkpoint_type = CKPT_CHECKPOINT_TYPE_STANDARD;
    ckpt_vm *vm = NULL;
    EXPECT_OK(ckpt_vm_create(vmdir, &spec, &vm));
    if (vm == NULL) {
        return check_finish("test_backup");
    }
    write_bytes(current(vm), 0, "base", 4);
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "c0", NULL));
    EXPECT_OK(ckpt_vm_checkpoint_export(vm, "c0", full, NULL));
    /* Two changes: one sector at 1 MiB + 100, 8 KiB at 5 MiB. */
    write_bytes(current(vm), MIB + 100, "changed", 7);
    uint8_t block[8192];
    memset(block, 0x77, sizeof block);
    write_bytes(current(vm), 5u * MIB, block, sizeof block);
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "c1", NULL));

    /* The iterator. */
    ckpt_vm_changes *it = NULL;
    EXPECT_OK(ckpt_vm_changes_open(vm, "c0", "c1", 0, &it));
    ckpt_range r[4];
    size_t n = 0;
    bool more = true;
    while (it != NULL && n < 4) {
        ckpt_range x;
        EXPECT_OK(ckpt_vm_changes_next(it, &x, &more));
        if (!more) {
            break;
        }
        r[n++] = x;
    }
    CHECK(n == 2);
    CHECK(!more);
    if (n == 2) {
        CHECK(r[0].offset == MIB && r[0].length == 512);
        CHECK(r[1].offset == 5u * MIB && r[1].length == sizeof block);
    }
    /* After the end it stays at the end. */
    ckpt_range untouched = {42, 42};
    more = true;
    EXPECT_OK(ckpt_vm_changes_next(it, &untouched, &more));
    CHECK(!more && untouched.offset == 42);
    ckpt_vm_changes_free(it);
    ckpt_vm_changes_free(NULL);
    /* The current state: the same changes. */
    it = NULL;
    EXPECT_OK(ckpt_vm_changes_open(vm, "c0", NULL, 0, &it));
    size_t m = 0;
    for (;;) {
        ckpt_range x;
        more = false;
        if (ckpt_vm_changes_next(it, &x, &more) != CKPT_STATUS_OK || !more) {
            break;
        }
        m++;
    }
    CHECK(m == 2);
    ckpt_vm_changes_free(it);

    /* Refusals of the query; *out is not written. */
    it = (ckpt_vm_changes *)(uintptr_t)0x5c5c;
    EXPECT_STATUS(ckpt_vm_changes_open(vm, "c1", "c0", 0, &it), CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_vm_changes_open(vm, "nope", NULL, 0, &it), CKPT_STATUS_NOT_FOUND);
    EXPECT_STATUS(ckpt_vm_changes_open(vm, "c0", NULL, 1, &it), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(it == (ckpt_vm_changes *)(uintptr_t)0x5c5c);
    EXPECT_STATUS(ckpt_vm_changes_open(NULL, "c0", NULL, 0, &it), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_changes_open(vm, NULL, NULL, 0, &it), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_changes_open(vm, "c0", NULL, 0, NULL), CKPT_STATUS_NULL_POINTER);
    ckpt_range x;
    EXPECT_STATUS(ckpt_vm_changes_next(NULL, &x, &more), CKPT_STATUS_NULL_POINTER);

    /* Refusals of the export: nothing is made. */
    EXPECT_STATUS(ckpt_vm_checkpoint_export_incremental(vm, "c1", "c1", full, inc, NULL),
                  CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_vm_checkpoint_export_incremental(vm, "c0", "c1", full, inc, NULL),
                  CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_vm_checkpoint_export_incremental(vm, "c1", "nope", full, inc, NULL),
                  CKPT_STATUS_NOT_FOUND);
    EXPECT_OK(ckpt_vm_checkpoint_export(vm, "c1", other, NULL));
    EXPECT_STATUS(ckpt_vm_checkpoint_export_incremental(vm, "c1", "c0", other, inc, NULL),
                  CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(last_error_text(), "captured") != NULL);
    EXPECT_STATUS(ckpt_vm_checkpoint_export_incremental(vm, "c1", "c0", NULL, inc, NULL),
                  CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_export_incremental(vm, "c1", NULL, full, inc, NULL),
                  CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_export_incremental(vm, "c1", "c0", full, NULL, NULL),
                  CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_export_incremental(NULL, "c1", "c0", full, inc, NULL),
                  CKPT_STATUS_NULL_POINTER);
    struct stat st;
    CHECK(stat(inc, &st) != 0);

    /* The incremental, and its chain read back. */
    EXPECT_OK(ckpt_vm_checkpoint_export_incremental(vm, "c1", "c0", full, inc, NULL));
    char files[4096];
    EXPECT_OK(ckpt_vm_export_files_json(vm, files, sizeof files, NULL));
    CHECK(strstr(files, "\"disk\"") != NULL);
    const char *top = path_in(inc, "os.vhdx");
    CHECK(chain_length(top) == 2);
    ckpt_disk *d = NULL;
    EXPECT_OK(ckpt_disk_open(top, CKPT_OPEN_READ_ONLY, &d));
    if (d != NULL) {
        char a[8] = {0}, b[8] = {0};
        uint8_t c[8192];
        EXPECT_OK(ckpt_disk_read(d, (uint8_t *)a, 4, 0));
        EXPECT_OK(ckpt_disk_read(d, (uint8_t *)b, 7, MIB + 100));
        EXPECT_OK(ckpt_disk_read(d, c, sizeof c, 5u * MIB));
        CHECK(memcmp(a, "base", 4) == 0);
        CHECK(memcmp(b, "changed", 7) == 0);
        CHECK(memcmp(c, block, sizeof c) == 0);
        /* The incremental's own layer holds exactly the two ranges. */
        ckpt_range own[4];
        size_t count = 0;
        EXPECT_OK(ckpt_disk_changed_ranges(d, 1, own, 4, &count));
        CHECK(count == 2);
        if (count == 2) {
            CHECK(own[0].offset == MIB && own[0].length == 512);
            CHECK(own[1].offset == 5u * MIB && own[1].length == sizeof block);
        }
        EXPECT_OK(ckpt_disk_close(d));
    }

    /* Reference points: c0 converted (c1's layer merges into it); the
     * changes since it are still the two writes, rounded out to the change
     * map's 64 KiB. */
    EXPECT_OK(ckpt_vm_checkpoint_reference(vm, "c0", NULL));
    EXPECT_STATUS(ckpt_vm_checkpoint_reference(vm, "c0", NULL), CKPT_STATUS_NOT_FOUND);
    EXPECT_STATUS(ckpt_vm_checkpoint_reference(NULL, "c0", NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_reference(vm, NULL, NULL), CKPT_STATUS_NULL_POINTER);
    char refs[4096];
    EXPECT_OK(ckpt_vm_references_json(vm, refs, sizeof refs, NULL));
    CHECK(strstr(refs, "\"name\": \"c0\"") != NULL);
    EXPECT_STATUS(ckpt_vm_references_json(NULL, refs, sizeof refs, NULL),
                  CKPT_STATUS_NULL_POINTER);
    ckpt_vm_changes *since_ref = NULL;
    EXPECT_OK(ckpt_vm_changes_open(vm, "c0", "c1", 0, &since_ref));
    if (since_ref != NULL) {
        ckpt_range r[4];
        size_t n = 0;
        bool more = true;
        while (n < 4) {
            EXPECT_OK(ckpt_vm_changes_next(since_ref, &r[n], &more));
            if (!more) {
                break;
            }
            n++;
        }
        CHECK(n == 2);
        if (n == 2) {
            CHECK(r[0].offset == MIB && r[0].length == 64 * 1024);
            CHECK(r[1].offset == 5u * MIB && r[1].length == 64 * 1024);
        }
        ckpt_vm_changes_free(since_ref);
    }
    /* An incremental of the current state since the reference point, on
     * the export that captured c0. */
    char inc2[4096];
    snprintf(inc2, sizeof inc2, "%s/inc2", dir);
    write_bytes(current(vm), 3u * MIB, "later", 5);
    EXPECT_OK(ckpt_vm_checkpoint_export_incremental(vm, NULL, "c0", full, inc2, NULL));
    CHECK(chain_length(path_in(inc2, "os.vhdx")) == 2);
    /* The restore check: the set, the newest alone, then a damaged base. */
    const char *set[] = {full, inc2};
    bool all_ok = false;
    char report[8192];
    size_t need = 0;
    EXPECT_STATUS(ckpt_verify_backup(set, 2, &all_ok, NULL, 0, &need),
                  CKPT_STATUS_BUFFER_TOO_SMALL);
    CHECK(need > 0 && need < sizeof report);
    EXPECT_OK(ckpt_verify_backup(set, 2, &all_ok, report, sizeof report, NULL));
    CHECK(all_ok);
    CHECK(strstr(report, "\"ok\":true") != NULL);
    EXPECT_OK(ckpt_verify_backup(set + 1, 1, &all_ok, report, sizeof report, NULL));
    CHECK(all_ok);
    EXPECT_STATUS(ckpt_verify_backup(NULL, 1, &all_ok, report, sizeof report, NULL),
                  CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_verify_backup(set, 0, &all_ok, report, sizeof report, NULL),
                  CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_verify_backup(set, 2, NULL, report, sizeof report, NULL),
                  CKPT_STATUS_NULL_POINTER);
    const char *holes[] = {full, NULL};
    EXPECT_STATUS(ckpt_verify_backup(holes, 2, &all_ok, report, sizeof report, NULL),
                  CKPT_STATUS_NULL_POINTER);
    write_bytes(path_in(full, "os.vhdx"), 0, "x", 1);
    EXPECT_OK(ckpt_verify_backup(set, 2, &all_ok, report, sizeof report, NULL));
    CHECK(!all_ok);
    CHECK(strstr(report, "\"ok\":false") != NULL);
    EXPECT_STATUS(ckpt_vm_reference_delete(vm, "nope"), CKPT_STATUS_NOT_FOUND);
    EXPECT_STATUS(ckpt_vm_reference_delete(vm, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_OK(ckpt_vm_reference_delete(vm, "c0"));
    EXPECT_STATUS(ckpt_vm_changes_open(vm, "c0", NULL, 0, &since_ref), CKPT_STATUS_NOT_FOUND);
    EXPECT_OK(ckpt_vm_close(vm));
    return check_finish("test_backup");
}
