/*
 * A VM's tree to and from a real Ceph cluster through the C API (issue
 * 17): ckpt_vm_export_rbd of a VM with two checkpoints (stats, the
 * progress lines, a second run that sends no snapshot again), its
 * refusals (NULL pool, a bad pool, unknown flags, a short stats struct,
 * an attached VM), ckpt_vm_write_rbd_image (an export-format 2 stream
 * in DIR/image.rbd, which tests/c_api.rs imports with rbd itself), then
 * ckpt_vm_import_rbd of the image into a new VM
 * whose checkpoints and current state read what was written, and its
 * refusals. tests/c_api.rs runs it against the cluster of tests/rbd.rs
 * (support/ceph.rs) and removes the images afterwards.
 *
 * Usage: test_rbd_cluster DIR CEPH_CONF POOL PREFIX
 */
#define _POSIX_C_SOURCE 200809L

#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "test_util.h"

#define SIZE (8u * MIB)

static char path_buf[4096];

static const char *current(ckpt_vm *vm) {
    if (ckpt_vm_current_disk_path(vm, 0, path_buf, sizeof path_buf, NULL) != CKPT_STATUS_OK) {
        path_buf[0] = '\0';
    }
    return path_buf;
}

static const char *checkpoint_disk(ckpt_vm *vm, const char *name) {
    size_t i = 0;
    path_buf[0] = '\0';
    if (ckpt_vm_checkpoint_find(vm, name, &i) != CKPT_STATUS_OK ||
        ckpt_vm_checkpoint_disk_path(vm, i, 0, path_buf, sizeof path_buf, NULL) !=
            CKPT_STATUS_OK) {
        path_buf[0] = '\0';
    }
    return path_buf;
}

static void put(const char *path, uint64_t off, uint8_t value) {
    uint8_t b[4096];
    memset(b, value, sizeof b);
    ckpt_disk *d = NULL;
    EXPECT_OK(ckpt_disk_open(path, CKPT_OPEN_READ_WRITE, &d));
    if (d != NULL) {
        EXPECT_OK(ckpt_disk_write(d, b, sizeof b, off));
        EXPECT_OK(ckpt_disk_close(d));
    }
}

/* Whether the 4 KiB at `off` of the disk `path` are all `value`. */
static int holds(const char *path, uint64_t off, uint8_t value) {
    uint8_t b[4096];
    ckpt_disk *d = NULL;
    if (ckpt_disk_open(path, CKPT_OPEN_READ_ONLY, &d) != CKPT_STATUS_OK) {
        return 0;
    }
    int ok = ckpt_disk_read(d, b, sizeof b, off) == CKPT_STATUS_OK;
    ckpt_disk_close(d);
    for (size_t i = 0; ok && i < sizeof b; i++) {
        ok = b[i] == value;
    }
    return ok;
}

static int lines;

static void on_line(const char *line, void *user) {
    CHECK(user == &lines);
    CHECK(line != NULL && strchr(line, '\n') == NULL);
    lines++;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s DIR CEPH_CONF POOL PREFIX\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1], *conf = argv[2], *pool = argv[3], *prefix = argv[4];
    char disk[4096], vmdir[4096], back[4096], image[512];
    snprintf(disk, sizeof disk, "%s/os.vhdx", dir);
    snprintf(vmdir, sizeof vmdir, "%s/vm", dir);
    snprintf(back, sizeof back, "%s/back", dir);
    snprintf(image, sizeof image, "%s/%s-disk0", pool, prefix);
    make_disk(disk, SIZE);
    const char *disks[] = {disk};
    ckpt_vm_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.struct_size = sizeof spec;
    spec.name = "crbd";
    spec.disks = disks;
    spec.disk_count = 1;
    spec.checkpoint_type = CKPT_CHECKPOINT_TYPE_STANDARD;
    ckpt_vm *vm = NULL;
    EXPECT_OK(ckpt_vm_create(vmdir, &spec, &vm));
    if (vm == NULL) {
        return check_finish("test_rbd_cluster");
    }
    put(current(vm), 0, 0x11);
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "one", NULL));
    put(current(vm), MIB, 0x22);
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "two", NULL));
    put(current(vm), 0, 0x33);

    ckpt_rbd_options o;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.conf = conf;
    o.client_id = "admin";
    o.message = on_line;
    o.user = &lines;

    /* Refusals first: nothing is sent. */
    ckpt_rbd_export_stats st;
    EXPECT_STATUS(ckpt_vm_export_rbd(vm, NULL, prefix, &o, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_export_rbd(NULL, pool, prefix, &o, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_export_rbd(vm, "a/b", prefix, &o, NULL),
                  CKPT_STATUS_INVALID_ARGUMENT);
    o.flags = 0x80;
    EXPECT_STATUS(ckpt_vm_export_rbd(vm, pool, prefix, &o, NULL),
                  CKPT_STATUS_INVALID_ARGUMENT);
    o.flags = 0;
    memset(&st, 0, sizeof st);
    st.struct_size = 4;
    EXPECT_STATUS(ckpt_vm_export_rbd(vm, pool, prefix, &o, &st), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(lines == 0);

    memset(&st, 0xee, sizeof st);
    st.struct_size = sizeof st;
    EXPECT_OK(ckpt_vm_export_rbd(vm, pool, prefix, &o, &st));
    CHECK(st.struct_size == sizeof st);
    CHECK(st.images == 1 && st.images_created == 1);
    CHECK(st.snapshots_sent == 2 && st.snapshots_pruned == 0);
    CHECK(st.data_bytes >= 3 * 4096 && st.stream_bytes > st.data_bytes);
    CHECK(st.clones_pruned == 0);
    CHECK(lines > 0);

    /* Again: the cluster has both snapshots. */
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    EXPECT_OK(ckpt_vm_export_rbd(vm, pool, prefix, &o, &st));
    CHECK(st.images == 1 && st.images_created == 0 && st.snapshots_sent == 0);

    /* The whole image with its snapshots as one export-format 2 stream
       (tests/c_api.rs imports it with rbd and compares). */
    char img_file[4096];
    snprintf(img_file, sizeof img_file, "%s/image.rbd", dir);
    int fd = open(img_file, O_CREAT | O_TRUNC | O_RDWR, 0644);
    CHECK(fd >= 0);
    ckpt_rbd_diff_stats ds;
    memset(&ds, 0, sizeof ds);
    EXPECT_OK(ckpt_vm_write_rbd_image(vm, 0, fd, &ds));
    EXPECT_STATUS(ckpt_vm_write_rbd_image(vm, 5, fd, NULL), CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_vm_write_rbd_image(vm, 0, -1, NULL), CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_vm_write_rbd_image(NULL, 0, fd, NULL), CKPT_STATUS_NULL_POINTER);
    char head[13] = {0};
    CHECK(pread(fd, head, 12, 0) == 12 && memcmp(head, "rbd image v2", 12) == 0);
    CHECK(ds.data_bytes >= 3 * 4096 && (off_t)ds.stream_bytes == lseek(fd, 0, SEEK_END));
    close(fd);

    /* An attached VM (its disk handed out) is refused. */
    ckpt_disk *live = NULL;
    EXPECT_OK(ckpt_vm_disk(vm, 0, &live));
    EXPECT_STATUS(ckpt_vm_export_rbd(vm, pool, prefix, &o, NULL), CKPT_STATUS_BUSY);
    EXPECT_STATUS(ckpt_vm_write_rbd_image(vm, 0, 1, NULL), CKPT_STATUS_BUSY);
    EXPECT_OK(ckpt_vm_close(vm)); /* closes the borrowed disk handle too */

    /* Import refusals. */
    const char *images[] = {image};
    const char *null_image[] = {NULL};
    ckpt_vm *got = NULL;
    EXPECT_STATUS(ckpt_vm_import_rbd(images, 0, back, "back", &o, &got),
                  CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_vm_import_rbd(NULL, 1, back, "back", &o, &got),
                  CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_import_rbd(null_image, 1, back, "back", &o, &got),
                  CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_import_rbd(images, 1, back, "back", &o, NULL),
                  CKPT_STATUS_NULL_POINTER);
    o.flags = CKPT_RBD_PRUNE;
    EXPECT_STATUS(ckpt_vm_import_rbd(images, 1, back, "back", &o, &got),
                  CKPT_STATUS_INVALID_ARGUMENT);
    o.flags = 0;
    CHECK(got == NULL);

    /* The tree comes back. */
    EXPECT_OK(ckpt_vm_import_rbd(images, 1, back, "back", &o, &got));
    if (got == NULL) {
        return check_finish("test_rbd_cluster");
    }
    size_t n = 0;
    EXPECT_OK(ckpt_vm_checkpoint_count(got, &n));
    CHECK(n == 2);
    CHECK(holds(checkpoint_disk(got, "one"), 0, 0x11));
    CHECK(holds(checkpoint_disk(got, "one"), MIB, 0x00));
    CHECK(holds(checkpoint_disk(got, "two"), 0, 0x11));
    CHECK(holds(checkpoint_disk(got, "two"), MIB, 0x22));
    CHECK(holds(current(got), 0, 0x33));
    CHECK(holds(current(got), MIB, 0x22));
    EXPECT_OK(ckpt_vm_close(got));
    return check_finish("test_rbd_cluster");
}
