/*
 * Every pointer argument of the C API given NULL: a status, never a crash,
 * and out-parameters left alone.
 *
 * Usage: test_null_args DIR (a scratch directory)
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "test_util.h"

static int ignore_progress(uint64_t done, uint64_t total, void *user) {
    (void)done;
    (void)total;
    (void)user;
    return 0;
}

/* Chains: NULL handles, paths and out-parameters. */
static void chain_nulls(const char *dir) {
    char base[4096], child[4096];
    snprintf(base, sizeof base, "%s/nbase.vhdx", dir);
    snprintf(child, sizeof child, "%s/nchild.avhdx", dir);
    ckpt_disk *disk = DISK_SENTINEL;
    char text[64];
    size_t n = 777;
    ckpt_range r[2];
    ckpt_extent e[2];

    EXPECT_OK(ckpt_disk_create(base, 1 << 20, NULL, &disk));
    EXPECT_OK(ckpt_disk_close(disk));
    disk = DISK_SENTINEL;
    EXPECT_STATUS(ckpt_disk_create_child(NULL, base, NULL, &disk), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_disk_create_child(child, NULL, NULL, &disk), CKPT_STATUS_NULL_POINTER);
    CHECK(strstr(last_error_text(), "parent_path") != NULL);
    EXPECT_STATUS(ckpt_disk_create_child(child, base, NULL, NULL), CKPT_STATUS_NULL_POINTER);
    CHECK(disk == DISK_SENTINEL && !file_exists(child));

    EXPECT_STATUS(ckpt_disk_get_parent_path(NULL, text, sizeof text, &n), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_disk_get_creator(NULL, text, sizeof text, &n), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_disk_chain_length(NULL, &n), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_disk_chain_path(NULL, 0, text, sizeof text, &n), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_disk_level_of(NULL, base, &n), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_disk_changed_ranges(NULL, 1, r, 2, &n), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_disk_extents(NULL, 0, 4096, e, 2, &n), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_disk_extents(NULL, 0, 0, NULL, 0, &n), CKPT_STATUS_NULL_POINTER);
    CHECK(n == 777);

    EXPECT_OK(ckpt_disk_create_child(child, base, NULL, &disk));
    if (disk != DISK_SENTINEL && disk != NULL) {
        EXPECT_STATUS(ckpt_disk_chain_length(disk, NULL), CKPT_STATUS_NULL_POINTER);
        EXPECT_STATUS(ckpt_disk_chain_path(disk, 0, NULL, 8, &n), CKPT_STATUS_NULL_POINTER);
        EXPECT_STATUS(ckpt_disk_get_parent_path(disk, NULL, 8, &n), CKPT_STATUS_NULL_POINTER);
        EXPECT_STATUS(ckpt_disk_get_creator(disk, NULL, 8, &n), CKPT_STATUS_NULL_POINTER);
        CHECK(n == 777);
        EXPECT_STATUS(ckpt_disk_level_of(disk, NULL, &n), CKPT_STATUS_NULL_POINTER);
        EXPECT_STATUS(ckpt_disk_level_of(disk, base, NULL), CKPT_STATUS_NULL_POINTER);
        EXPECT_STATUS(ckpt_disk_changed_ranges(disk, 1, r, 2, NULL), CKPT_STATUS_NULL_POINTER);
        EXPECT_STATUS(ckpt_disk_changed_ranges(disk, 1, NULL, 2, &n), CKPT_STATUS_NULL_POINTER);
        CHECK(n == 777);
        memset(e, 0x5a, sizeof e);
        EXPECT_STATUS(ckpt_disk_extents(disk, 0, 4096, e, 2, NULL), CKPT_STATUS_NULL_POINTER);
        CHECK(strstr(last_error_text(), "out_count") != NULL);
        EXPECT_STATUS(ckpt_disk_extents(disk, 0, 4096, NULL, 2, &n), CKPT_STATUS_NULL_POINTER);
        CHECK(strstr(last_error_text(), "buf") != NULL);
        CHECK(n == 777 && e[0].offset == 0x5a5a5a5a5a5a5a5aULL);
        /* cap 0 never touches buf: the count comes back */
        EXPECT_STATUS(ckpt_disk_extents(disk, 0, 4096, NULL, 0, &n), CKPT_STATUS_BUFFER_TOO_SMALL);
        CHECK(n == 1);
        n = 777;
        /* out_len may be NULL; len 0 never touches buf */
        EXPECT_OK(ckpt_disk_get_creator(disk, text, sizeof text, NULL));
        EXPECT_STATUS(ckpt_disk_get_creator(disk, NULL, 0, &n), CKPT_STATUS_BUFFER_TOO_SMALL);
        CHECK(n == strlen(text));
        EXPECT_OK(ckpt_disk_close(disk));
    }

    EXPECT_STATUS(ckpt_disk_merge(NULL, NULL, NULL, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_disk_merge(NULL, base, ignore_progress, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_disk_flatten(NULL, child, NULL, NULL, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_disk_flatten(child, NULL, NULL, NULL, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_disk_reparent(NULL, base, 0), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_disk_reparent(child, NULL, 1), CKPT_STATUS_NULL_POINTER);
    CHECK(file_exists(child)); /* nothing was merged */
}

/* VMs: NULL handles, names, specs, hooks and out-parameters. */
static void vm_nulls(const char *dir) {
    char vmdir[4096], disk_path[4096];
    snprintf(vmdir, sizeof vmdir, "%s/nvm", dir);
    snprintf(disk_path, sizeof disk_path, "%s/nvm.vhdx", dir);
    ckpt_vm *vm = VM_SENTINEL;
    char text[64];
    size_t n = 777;

    ckpt_vm_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.struct_size = sizeof spec;
    EXPECT_STATUS(ckpt_vm_create(vmdir, &spec, &vm), CKPT_STATUS_NULL_POINTER); /* no name */
    CHECK(strstr(last_error_text(), "name") != NULL);
    spec.name = "n";
    spec.disk_count = 1; /* disks is NULL */
    EXPECT_STATUS(ckpt_vm_create(vmdir, &spec, &vm), CKPT_STATUS_NULL_POINTER);
    const char *disks[] = {NULL};
    spec.disks = disks; /* disks[0] is NULL */
    EXPECT_STATUS(ckpt_vm_create(vmdir, &spec, &vm), CKPT_STATUS_NULL_POINTER);
    CHECK(strstr(last_error_text(), "disks[0]") != NULL);
    spec.disk_count = 0;
    spec.passthrough_count = 2; /* passthrough is NULL */
    EXPECT_STATUS(ckpt_vm_create(vmdir, &spec, &vm), CKPT_STATUS_NULL_POINTER);
    spec.passthrough_count = 0;
    EXPECT_STATUS(ckpt_vm_create(NULL, &spec, &vm), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_create(vmdir, NULL, &vm), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_create(vmdir, &spec, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_open(NULL, &vm), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_open(vmdir, NULL), CKPT_STATUS_NULL_POINTER);
    CHECK(vm == VM_SENTINEL);
    EXPECT_OK(ckpt_vm_close(NULL));

    /* RBD: NULL before anything runs (no rbd needed). */
    EXPECT_STATUS(ckpt_vm_export_rbd(NULL, "rbd", NULL, NULL, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_write_rbd_image(NULL, 0, 1, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_write_rbd_diff(NULL, 0, NULL, NULL, 1, NULL), CKPT_STATUS_NULL_POINTER);
    const char *no_images[] = {NULL};
    EXPECT_STATUS(ckpt_vm_import_rbd(NULL, 1, vmdir, "n", NULL, &vm), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_import_rbd(no_images, 1, vmdir, "n", NULL, &vm),
                  CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_import_rbd(NULL, 0, vmdir, "n", NULL, NULL), CKPT_STATUS_NULL_POINTER);
    const char *one_image[] = {"rbd/x"};
    EXPECT_STATUS(ckpt_vm_import_rbd(one_image, 1, NULL, "n", NULL, &vm),
                  CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_import_rbd(one_image, 1, vmdir, NULL, NULL, &vm),
                  CKPT_STATUS_NULL_POINTER);
    CHECK(vm == VM_SENTINEL);

    /* every function on a NULL handle */
    ckpt_vm_info vi;
    memset(&vi, 0, sizeof vi);
    vi.struct_size = sizeof vi;
    ckpt_checkpoint_info ci;
    memset(&ci, 0, sizeof ci);
    ci.struct_size = sizeof ci;
    EXPECT_STATUS(ckpt_vm_get_info(NULL, &vi), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_get_name(NULL, text, sizeof text, &n), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_get_dir(NULL, text, sizeof text, &n), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_current_disk_path(NULL, 0, text, sizeof text, &n),
                  CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_set_state(NULL, CKPT_VM_STATE_OFF), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_set_resources(NULL, 1, 1), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_set_checkpoint_type(NULL, CKPT_CHECKPOINT_TYPE_STANDARD),
                  CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_set_checkpoint_location(NULL, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_set_age_warning(NULL, 1), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_set_role(NULL, "replicated"), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_set_hypervisor_settings(NULL, "{}"), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_show_json(NULL, text, sizeof text, &n), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoints_json(NULL, text, sizeof text, &n),
                  CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_warnings_json(NULL, text, sizeof text, &n), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_count(NULL, &n), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_get(NULL, 0, &ci), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_name(NULL, 0, text, sizeof text, &n),
                  CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_id(NULL, 0, text, sizeof text, &n),
                  CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_fallback_reason(NULL, 0, text, sizeof text, &n),
                  CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_disk_path(NULL, 0, 0, text, sizeof text, &n),
                  CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_find(NULL, "a", &n), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_create(NULL, "a", NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_apply(NULL, "a", NULL, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_revert(NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_delete(NULL, "a", 0, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_rename(NULL, "a", "b"), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_export(NULL, NULL, vmdir, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_writer_write(NULL, (const uint8_t *)"x", 1), CKPT_STATUS_NULL_POINTER);
    CHECK(n == 777);

    /* a real VM: NULL for every other pointer */
    ckpt_disk *disk = NULL;
    EXPECT_OK(ckpt_disk_create(disk_path, 1 << 20, NULL, &disk));
    EXPECT_OK(ckpt_disk_close(disk));
    const char *real_disks[] = {disk_path};
    spec.disks = real_disks;
    spec.disk_count = 1;
    EXPECT_OK(ckpt_vm_create(vmdir, &spec, &vm));
    if (vm == VM_SENTINEL || vm == NULL) {
        return;
    }
    EXPECT_STATUS(ckpt_vm_get_info(vm, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_get_name(vm, NULL, 8, &n), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_show_json(vm, NULL, 8, &n), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoints_json(vm, NULL, 8, &n), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_warnings_json(vm, NULL, 8, &n), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_count(vm, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_get(vm, 0, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_find(vm, NULL, &n), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_find(vm, "a", NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_set_hypervisor_settings(vm, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_create(vm, NULL, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_apply(vm, NULL, NULL, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_delete(vm, NULL, 0, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_rename(vm, NULL, "b"), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_rename(vm, "a", NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_export(vm, NULL, NULL, NULL), CKPT_STATUS_NULL_POINTER);
    CHECK(n == 777);
    /* NULL hooks are fine: a production checkpoint falls back to standard */
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "a", NULL));
    /* hooks with every callback NULL are fine too */
    ckpt_hooks h;
    memset(&h, 0, sizeof h);
    h.struct_size = sizeof h;
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "b", &h));
    EXPECT_OK(ckpt_vm_checkpoint_count(vm, &n));
    CHECK(n == 2);
    /* hooks with a bad struct_size or reserved field are refused */
    h.struct_size = 4;
    EXPECT_STATUS(ckpt_vm_checkpoint_create(vm, "c", &h), CKPT_STATUS_INVALID_ARGUMENT);
    h.struct_size = sizeof h;
    h.reserved = 1;
    EXPECT_STATUS(ckpt_vm_checkpoint_create(vm, "c", &h), CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_OK(ckpt_vm_close(vm));
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    char path[4096];
    snprintf(path, sizeof path, "%s/never.vhdx", dir);

    ckpt_disk *disk = DISK_SENTINEL;
    uint8_t buf[16];
    memset(buf, 0xA5, sizeof buf);

    /* create */
    EXPECT_STATUS(ckpt_disk_create(NULL, 1 << 20, NULL, &disk), CKPT_STATUS_NULL_POINTER);
    CHECK(disk == DISK_SENTINEL);
    CHECK(strstr(last_error_text(), "path") != NULL);
    EXPECT_STATUS(ckpt_disk_create(path, 1 << 20, NULL, NULL), CKPT_STATUS_NULL_POINTER);
    CHECK(strstr(last_error_text(), "out") != NULL);
    CHECK(!file_exists(path)); /* nothing is done when an argument is bad */

    /* open */
    EXPECT_STATUS(ckpt_disk_open(NULL, CKPT_OPEN_READ_ONLY, &disk), CKPT_STATUS_NULL_POINTER);
    CHECK(disk == DISK_SENTINEL);
    EXPECT_STATUS(ckpt_disk_open(path, CKPT_OPEN_READ_WRITE, NULL), CKPT_STATUS_NULL_POINTER);
    CHECK(!file_exists(path));

    /* info */
    ckpt_disk_info info;
    memset(&info, 0x77, sizeof info);
    info.struct_size = sizeof info;
    EXPECT_STATUS(ckpt_disk_get_info(NULL, &info), CKPT_STATUS_NULL_POINTER);
    CHECK(strstr(last_error_text(), "disk is NULL") != NULL);
    CHECK(info.struct_size == sizeof info && info.virtual_size == 0x7777777777777777ULL);

    /* I/O on a NULL handle, with and without a buffer */
    EXPECT_STATUS(ckpt_disk_read(NULL, buf, sizeof buf, 0), CKPT_STATUS_NULL_POINTER);
    CHECK(buf[0] == 0xA5 && buf[15] == 0xA5);
    EXPECT_STATUS(ckpt_disk_read(NULL, NULL, 0, 0), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_disk_write(NULL, buf, sizeof buf, 0), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_disk_write(NULL, NULL, 0, 0), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_disk_flush(NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_disk_trim(NULL, 0, 4096), CKPT_STATUS_NULL_POINTER);

    /* close accepts NULL, and success clears the last error */
    CHECK(ckpt_last_error_length() > 0);
    EXPECT_OK(ckpt_disk_close(NULL));
    CHECK(ckpt_last_error_length() == 0);

    /* last error itself */
    EXPECT_STATUS(ckpt_disk_flush(NULL), CKPT_STATUS_NULL_POINTER);
    size_t len = 12345;
    EXPECT_STATUS(ckpt_last_error(NULL, 8, &len), CKPT_STATUS_NULL_POINTER);
    CHECK(len == 12345);
    EXPECT_STATUS(ckpt_last_error(NULL, 0, &len), CKPT_STATUS_BUFFER_TOO_SMALL);
    CHECK(len == ckpt_last_error_length() && len > 0);
    char msg[256];
    EXPECT_OK(ckpt_last_error(msg, sizeof msg, NULL)); /* out_len may be NULL */
    CHECK(strcmp(msg, "disk is NULL") == 0);

    /* functions that never fail */
    CHECK(strcmp(ckpt_status_name(CKPT_STATUS_NULL_POINTER), "CKPT_STATUS_NULL_POINTER") == 0);
    CHECK(ckpt_version() != NULL);

    chain_nulls(dir);
    vm_nulls(dir);

    return check_finish("test_null_args");
}
