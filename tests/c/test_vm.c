/*
 * A VM and its checkpoint tree through the C API, as a hypervisor would
 * drive it: create a VM on two base disks, write guest data through
 * ckpt_disk_open on the current disk, production checkpoints with a
 * quiesce callback, standard checkpoints with save_memory, the fallback
 * when quiescing fails, apply with capture, revert, delete (a middle
 * checkpoint, a leaf, one under the current state, a cancelled one),
 * rename, export (of a checkpoint, of the current state, cancelled),
 * the JSON views, walking the tree without JSON, re-entrant calls from a
 * callback, and the VM lock against a forked process. Then the regressions
 * of issue 8: deletes cancelled at the first and a later progress call,
 * revert after deleting a branch point, exports of disks sharing a file
 * name, empty names, and the messages naming C fields.
 *
 * Usage: test_vm DIR (a scratch directory)
 */
#define _POSIX_C_SOURCE 200809L

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_util.h"

#define SIZE (4u * MIB)

/* Write a NUL-terminated tag at offset 0 of the disk at `path`. */
static void write_tag(const char *path, const char *tag) {
    ckpt_disk *disk = NULL;
    EXPECT_OK(ckpt_disk_open(path, CKPT_OPEN_READ_WRITE, &disk));
    if (disk == NULL) {
        return;
    }
    EXPECT_OK(ckpt_disk_write(disk, (const uint8_t *)tag, strlen(tag) + 1, 0));
    /* and something in a second block, so merges have data to move */
    EXPECT_OK(ckpt_disk_write(disk, (const uint8_t *)tag, strlen(tag) + 1, 2 * MIB + 7));
    EXPECT_OK(ckpt_disk_close(disk));
}

/* Whether the disk at `path` starts with `tag` (and has it at 2 MiB + 7). */
static int has_tag(const char *path, const char *tag) {
    ckpt_disk *disk = NULL;
    if (ckpt_disk_open(path, CKPT_OPEN_READ_ONLY, &disk) != CKPT_STATUS_OK) {
        return 0;
    }
    char a[64], b[64];
    size_t n = strlen(tag) + 1;
    int ok = n <= sizeof a && ckpt_disk_read(disk, (uint8_t *)a, n, 0) == CKPT_STATUS_OK &&
             ckpt_disk_read(disk, (uint8_t *)b, n, 2 * MIB + 7) == CKPT_STATUS_OK &&
             memcmp(a, tag, n) == 0 && memcmp(b, tag, n) == 0;
    ckpt_disk_close(disk);
    return ok;
}

/* The current file of disk `k`, into a static buffer (one per k). */
static const char *current(ckpt_vm *vm, size_t k) {
    static char buf[2][4096];
    if (ckpt_vm_current_disk_path(vm, k, buf[k], sizeof buf[k], NULL) != CKPT_STATUS_OK) {
        buf[k][0] = '\0';
    }
    return buf[k];
}

static size_t checkpoint_count(ckpt_vm *vm) {
    size_t n = 0;
    EXPECT_OK(ckpt_vm_checkpoint_count(vm, &n));
    return n;
}

/* The info of the checkpoint called `name`; `index` receives its index. */
static ckpt_checkpoint_info checkpoint(ckpt_vm *vm, const char *name, size_t *index) {
    ckpt_checkpoint_info c;
    memset(&c, 0, sizeof c);
    c.struct_size = sizeof c;
    size_t i = 0;
    EXPECT_OK(ckpt_vm_checkpoint_find(vm, name, &i));
    EXPECT_OK(ckpt_vm_checkpoint_get(vm, i, &c));
    if (index != NULL) {
        *index = i;
    }
    return c;
}

/* Disk `k` of checkpoint `name`, into a static buffer. */
static const char *checkpoint_disk(ckpt_vm *vm, const char *name, size_t k) {
    static char buf[4096];
    size_t i = 0;
    buf[0] = '\0';
    if (ckpt_vm_checkpoint_find(vm, name, &i) == CKPT_STATUS_OK &&
        ckpt_vm_checkpoint_disk_path(vm, i, k, buf, sizeof buf, NULL) != CKPT_STATUS_OK) {
        buf[0] = '\0';
    }
    return buf;
}

/* A JSON getter's whole text, malloc'ed (sized with a first call). */
static char *json_of(ckpt_status (*get)(const ckpt_vm *, char *, size_t, size_t *),
                     ckpt_vm *vm) {
    size_t len = 0;
    EXPECT_STATUS(get(vm, NULL, 0, &len), CKPT_STATUS_BUFFER_TOO_SMALL);
    char *text = malloc(len + 1);
    if (text == NULL) {
        return NULL;
    }
    size_t len2 = 0;
    EXPECT_OK(get(vm, text, len + 1, &len2));
    CHECK(len2 == len && strlen(text) == len);
    return text;
}

/* ---- the hypervisor's callbacks ---- */

typedef struct {
    ckpt_vm *vm;          /* for the re-entrancy check */
    int quiesce_result;   /* what quiesce returns */
    int quiesce_calls, thaw_calls, save_calls, progress_calls;
    int resume_calls;     /* resume, and whether save_memory came first */
    int resume_out_of_order;
    int save_result;      /* what save_memory returns */
    const char *memory;   /* what save_memory writes */
    int cancel_progress;  /* progress returns non-zero */
    ckpt_status reentrant; /* status of a call on `vm` from inside a callback */
} guest;

static int on_quiesce(void *user) {
    guest *g = user;
    g->quiesce_calls++;
    if (g->vm != NULL) {
        ckpt_vm_info i;
        memset(&i, 0, sizeof i);
        i.struct_size = sizeof i;
        g->reentrant = ckpt_vm_get_info(g->vm, &i);
    }
    return g->quiesce_result;
}

static void on_thaw(void *user) {
    guest *g = user;
    g->thaw_calls++;
}

static int on_save_memory(ckpt_writer *w, void *user) {
    guest *g = user;
    g->save_calls++;
    if (g->save_result != 0) {
        return g->save_result;
    }
    /* in two pieces, and an empty write */
    size_t n = strlen(g->memory);
    if (ckpt_writer_write(w, (const uint8_t *)g->memory, n / 2) != CKPT_STATUS_OK ||
        ckpt_writer_write(w, NULL, 0) != CKPT_STATUS_OK ||
        ckpt_writer_write(w, (const uint8_t *)g->memory + n / 2, n - n / 2) != CKPT_STATUS_OK) {
        return 2;
    }
    return 0;
}

static void on_resume(void *user) {
    guest *g = user;
    if (g->save_calls != g->resume_calls + 1) {
        g->resume_out_of_order++;
    }
    g->resume_calls++;
}

static int on_progress(uint64_t done, uint64_t total, void *user) {
    guest *g = user;
    g->progress_calls++;
    (void)done;
    (void)total;
    return g->cancel_progress;
}

static ckpt_hooks hooks_for(guest *g) {
    ckpt_hooks h;
    memset(&h, 0, sizeof h);
    h.struct_size = sizeof h;
    h.quiesce = on_quiesce;
    h.thaw = on_thaw;
    h.save_memory = on_save_memory;
    h.progress = on_progress;
    h.user = g;
    h.resume = on_resume;
    return h;
}

static guest guest_new(void) {
    guest g;
    memset(&g, 0, sizeof g);
    g.memory = "MEMORY";
    g.reentrant = CKPT_STATUS_OK;
    return g;
}

/* ---- issue 8: the checkpoint-tree regressions ---- */

/* Fill the whole disk at `path` with `byte`. */
static void fill_disk(const char *path, uint8_t byte) {
    ckpt_disk *disk = NULL;
    EXPECT_OK(ckpt_disk_open(path, CKPT_OPEN_READ_WRITE, &disk));
    if (disk == NULL) {
        return;
    }
    uint8_t *buf = malloc(SIZE);
    if (buf != NULL) {
        memset(buf, byte, SIZE);
        EXPECT_OK(ckpt_disk_write(disk, buf, SIZE, 0));
        free(buf);
    }
    EXPECT_OK(ckpt_disk_close(disk));
}

/* The first byte of the disk at `path` (-1 when it cannot be read). */
static int first_byte(const char *path) {
    ckpt_disk *disk = NULL;
    uint8_t b = 0;
    if (ckpt_disk_open(path, CKPT_OPEN_READ_ONLY, &disk) != CKPT_STATUS_OK) {
        return -1;
    }
    int ok = ckpt_disk_read(disk, &b, 1, 0) == CKPT_STATUS_OK;
    ckpt_disk_close(disk);
    return ok ? b : -1;
}

/* A standard VM on one disk in DIR/NAME: checkpoint X (zeros), 0x11 over
 * the whole disk, checkpoint Y. */
static ckpt_vm *x_then_y(const char *dir, const char *name, char *vmdir, size_t vmdir_len) {
    char sub[2048], disk[4096];
    snprintf(sub, sizeof sub, "%s/%s", dir, name);
    CHECK(mkdir(sub, 0755) == 0);
    snprintf(disk, sizeof disk, "%s/os.vhdx", sub);
    make_disk(disk, SIZE);
    snprintf(vmdir, vmdir_len, "%s/vm", sub);
    const char *disks[] = {disk};
    ckpt_vm_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.struct_size = sizeof spec;
    spec.name = name;
    spec.disks = disks;
    spec.disk_count = 1;
    spec.checkpoint_type = CKPT_CHECKPOINT_TYPE_STANDARD;
    ckpt_vm *vm = NULL;
    EXPECT_OK(ckpt_vm_create(vmdir, &spec, &vm));
    if (vm == NULL) {
        return NULL;
    }
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "X", NULL));
    fill_disk(current(vm, 0), 0x11);
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "Y", NULL));
    return vm;
}

/* X is never served with Y's data: apply and export either refuse it or
 * give zeros. */
static void x_never_mixed(ckpt_vm *vm, const char *exp) {
    size_t i = 0;
    if (ckpt_vm_checkpoint_find(vm, "X", &i) == CKPT_STATUS_OK &&
        !checkpoint(vm, "X", NULL).deleting) {
        CHECK(first_byte(checkpoint_disk(vm, "X", 0)) == 0);
    }
    ckpt_status s = ckpt_vm_checkpoint_export(vm, "X", exp, NULL);
    CHECK(s == CKPT_STATUS_OK || s == CKPT_STATUS_NOT_FOUND);
    if (s == CKPT_STATUS_OK) {
        char path[8192];
        snprintf(path, sizeof path, "%s/os.vhdx", exp);
        CHECK(first_byte(path) == 0);
    }
    s = ckpt_vm_checkpoint_apply(vm, "X", NULL, NULL);
    CHECK(s == CKPT_STATUS_OK || s == CKPT_STATUS_NOT_FOUND);
    if (s == CKPT_STATUS_OK) {
        CHECK(first_byte(current(vm, 0)) == 0);
    }
    CHECK(first_byte(checkpoint_disk(vm, "Y", 0)) == 0x11);
}

/* Item 10: a delete cancelled at progress call `at`. */
static void cancelled_delete(const char *dir, int at) {
    char name[32], vmdir[2048], exp[4096];
    snprintf(name, sizeof name, "cancel-%d", at);
    ckpt_vm *vm = x_then_y(dir, name, vmdir, sizeof vmdir);
    if (vm == NULL) {
        return;
    }
    canceller c = {0, at};
    ckpt_hooks h;
    memset(&h, 0, sizeof h);
    h.struct_size = sizeof h;
    h.progress = cancel_progress;
    h.user = &c;
    EXPECT_STATUS(ckpt_vm_checkpoint_delete(vm, "X", 0, &h), CKPT_STATUS_CANCELLED);
    CHECK(c.calls == at);
    size_t i = 0;
    EXPECT_OK(ckpt_vm_checkpoint_find(vm, "X", &i));
    ckpt_checkpoint_info info = checkpoint(vm, "X", NULL);
    if (at == 1) {
        /* cancelled before anything changed: X is as it was */
        CHECK(!info.deleting);
        CHECK(first_byte(checkpoint_disk(vm, "X", 0)) == 0);
    } else {
        /* X's disk holds part of Y's data: visibly pending, refused */
        CHECK(info.deleting);
        char *list = json_of(ckpt_vm_checkpoints_json, vm);
        CHECK(list != NULL && strstr(list, "\"deleting\": true") != NULL);
        free(list);
    }
    snprintf(exp, sizeof exp, "%s/%s/export", dir, name);
    x_never_mixed(vm, exp);
    EXPECT_OK(ckpt_vm_close(vm));
    vm = NULL;
    EXPECT_OK(ckpt_vm_open(vmdir, &vm));
    if (vm != NULL) {
        snprintf(exp, sizeof exp, "%s/%s/export-again", dir, name);
        x_never_mixed(vm, exp);
        EXPECT_OK(ckpt_vm_close(vm));
    }
}

/* Item 10: pending, then another operation first finishes the delete. */
static void cancelled_delete_then_create(const char *dir) {
    char vmdir[2048];
    ckpt_vm *vm = x_then_y(dir, "cancel-then-create", vmdir, sizeof vmdir);
    if (vm == NULL) {
        return;
    }
    canceller c = {0, 2};
    ckpt_hooks h;
    memset(&h, 0, sizeof h);
    h.struct_size = sizeof h;
    h.progress = cancel_progress;
    h.user = &c;
    EXPECT_STATUS(ckpt_vm_checkpoint_delete(vm, "X", 0, &h), CKPT_STATUS_CANCELLED);
    CHECK(checkpoint(vm, "X", NULL).deleting);
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "Z", NULL));
    size_t i = 0;
    EXPECT_STATUS(ckpt_vm_checkpoint_find(vm, "X", &i), CKPT_STATUS_NOT_FOUND);
    CHECK(first_byte(checkpoint_disk(vm, "Y", 0)) == 0x11);
    CHECK(checkpoint_count(vm) == 2);
    EXPECT_OK(ckpt_vm_close(vm));
}

/* Item 11: revert after deleting the branch point the current state hangs under. */
static void revert_after_branch_delete(const char *dir) {
    char sub[2048], disk[4096], vmdir[4096];
    snprintf(sub, sizeof sub, "%s/branch", dir);
    CHECK(mkdir(sub, 0755) == 0);
    snprintf(disk, sizeof disk, "%s/os.vhdx", sub);
    make_disk(disk, SIZE);
    snprintf(vmdir, sizeof vmdir, "%s/vm", sub);
    const char *disks[] = {disk};
    ckpt_vm_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.struct_size = sizeof spec;
    spec.name = "branch";
    spec.disks = disks;
    spec.disk_count = 1;
    spec.checkpoint_type = CKPT_CHECKPOINT_TYPE_STANDARD;
    ckpt_vm *vm = NULL;
    EXPECT_OK(ckpt_vm_create(vmdir, &spec, &vm));
    if (vm == NULL) {
        return;
    }
    write_tag(current(vm, 0), "one");
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "root", NULL));
    write_tag(current(vm, 0), "two");
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "X", NULL));
    write_tag(current(vm, 0), "three");
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "Y", NULL));
    EXPECT_OK(ckpt_vm_checkpoint_apply(vm, "X", NULL, NULL));
    write_tag(current(vm, 0), "four");
    EXPECT_OK(ckpt_vm_checkpoint_delete(vm, "X", 0, NULL));
    size_t i = 0;
    EXPECT_STATUS(ckpt_vm_checkpoint_find(vm, "X", &i), CKPT_STATUS_NOT_FOUND);
    char *show = json_of(ckpt_vm_show_json, vm);
    CHECK(show != NULL && strstr(show, "\"current_checkpoint\": \"root\"") != NULL);
    free(show);
    CHECK(checkpoint(vm, "root", NULL).is_current_parent);
    CHECK(!checkpoint(vm, "Y", NULL).is_current_parent);
    CHECK(vm_info(vm).has_current_checkpoint);
    CHECK(has_tag(current(vm, 0), "four"));
    EXPECT_OK(ckpt_vm_checkpoint_revert(vm));
    CHECK(has_tag(current(vm, 0), "one"));
    CHECK(has_tag(checkpoint_disk(vm, "Y", 0), "three"));
    EXPECT_OK(ckpt_vm_close(vm));
}

/* Item 12: two disks with the same file name export under distinct names. */
static void export_shared_names(const char *dir) {
    char sub[2048], a[4096], b[4096], vmdir[4096], exp[4096], path[8192];
    snprintf(sub, sizeof sub, "%s/names", dir);
    CHECK(mkdir(sub, 0755) == 0);
    snprintf(a, sizeof a, "%s/a", sub);
    CHECK(mkdir(a, 0755) == 0);
    snprintf(b, sizeof b, "%s/b", sub);
    CHECK(mkdir(b, 0755) == 0);
    snprintf(a, sizeof a, "%s/a/disk1.vhdx", sub);
    snprintf(b, sizeof b, "%s/b/disk1.vhdx", sub);
    make_disk(a, SIZE);
    make_disk(b, SIZE);
    snprintf(vmdir, sizeof vmdir, "%s/vm", sub);
    const char *disks[] = {a, b};
    ckpt_vm_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.struct_size = sizeof spec;
    spec.name = "names";
    spec.disks = disks;
    spec.disk_count = 2;
    ckpt_vm *vm = NULL;
    EXPECT_OK(ckpt_vm_create(vmdir, &spec, &vm));
    if (vm == NULL) {
        return;
    }
    write_tag(current(vm, 0), "first");
    write_tag(current(vm, 1), "second");
    char text[64];
    EXPECT_STATUS(ckpt_vm_export_files_json(vm, text, sizeof text, NULL), CKPT_STATUS_NOT_FOUND);
    snprintf(exp, sizeof exp, "%s/out", sub);
    EXPECT_OK(ckpt_vm_checkpoint_export(vm, NULL, exp, NULL));
    snprintf(path, sizeof path, "%s/disk1-0.vhdx", exp);
    CHECK(has_tag(path, "first"));
    snprintf(path, sizeof path, "%s/disk1-1.vhdx", exp);
    CHECK(has_tag(path, "second"));
    char *files = json_of(ckpt_vm_export_files_json, vm);
    CHECK(files != NULL && strstr(files, path) != NULL);
    CHECK(files != NULL && strstr(files, "config.json") != NULL);
    CHECK(files != NULL && strstr(files, "\"disk_index\": 1") != NULL);
    free(files);
    EXPECT_OK(ckpt_vm_close(vm));
}

/* Item 13 and the messages naming C fields. */
static void names_and_messages(const char *dir) {
    char vmdir[2048], exp[4096];
    ckpt_vm *vm = x_then_y(dir, "names-empty", vmdir, sizeof vmdir);
    if (vm == NULL) {
        return;
    }
    size_t i = 99;
    EXPECT_STATUS(ckpt_vm_checkpoint_find(vm, "", &i), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(i == 99);
    EXPECT_STATUS(ckpt_vm_checkpoint_apply(vm, "", NULL, NULL), CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_vm_checkpoint_apply(vm, "X", "", NULL), CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_vm_checkpoint_delete(vm, "", 0, NULL), CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_vm_checkpoint_rename(vm, "", "x"), CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_vm_checkpoint_rename(vm, "X", ""), CKPT_STATUS_INVALID_ARGUMENT);
    snprintf(exp, sizeof exp, "%s/names-empty/export", dir);
    EXPECT_STATUS(ckpt_vm_checkpoint_export(vm, "", exp, NULL), CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_vm_checkpoint_create(vm, "", NULL), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(checkpoint_count(vm) == 2);
    EXPECT_OK(ckpt_vm_close(vm));

    ckpt_vm_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.struct_size = sizeof spec;
    spec.name = "m";
    spec.disk_count = 3;
    snprintf(vmdir, sizeof vmdir, "%s/names-empty/vm2", dir);
    EXPECT_STATUS(ckpt_vm_create(vmdir, &spec, &vm), CKPT_STATUS_NULL_POINTER);
    CHECK(strstr(last_error_text(), "spec->disk_count") != NULL);
    CHECK(strstr(last_error_text(), "disks_count") == NULL);
}

/* Issue 9, item 10: the name rule (at most 100 characters, no control
 * characters, no blank at either end) and names compared ignoring case. */
static void name_rules(const char *dir) {
    char vmdir[2048], long_name[128];
    ckpt_vm *vm = x_then_y(dir, "names-rule", vmdir, sizeof vmdir);
    if (vm == NULL) {
        return;
    }
    memset(long_name, 'n', 101);
    long_name[101] = '\0';
    EXPECT_STATUS(ckpt_vm_checkpoint_create(vm, long_name, NULL), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(last_error_text(), "100 characters") != NULL);
    long_name[100] = '\0';
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, long_name, NULL));
    EXPECT_STATUS(ckpt_vm_checkpoint_create(vm, "two\nlines", NULL),
                  CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(last_error_text(), "control characters") != NULL);
    EXPECT_STATUS(ckpt_vm_checkpoint_create(vm, "Y ", NULL), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(last_error_text(), "blank") != NULL);
    EXPECT_STATUS(ckpt_vm_checkpoint_rename(vm, "X", "\tX"), CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_vm_checkpoint_create(vm, "y", NULL), CKPT_STATUS_ALREADY_EXISTS);
    CHECK(checkpoint_count(vm) == 3);
    size_t a = 99, b = 98;
    EXPECT_OK(ckpt_vm_checkpoint_find(vm, "x", &a));
    EXPECT_OK(ckpt_vm_checkpoint_find(vm, "X", &b));
    CHECK(a == b);
    EXPECT_OK(ckpt_vm_checkpoint_rename(vm, "x", "xx"));
    EXPECT_OK(ckpt_vm_checkpoint_find(vm, "XX", &a));
    CHECK(a == b);
    EXPECT_OK(ckpt_vm_close(vm));
}

/* ckpt_vm_warnings_json: empty after an open and after a plain change; a
 * delete whose tidy-up fails after its commit succeeds with a warning (the
 * deleted checkpoint's configuration copy cannot be removed: a folder with
 * a file in it stands in its place), which the next change replaces. */
static void warnings_after_commit(const char *dir) {
    char vmdir[2048], id[128], config[3072], inside[4096];
    ckpt_vm *vm = x_then_y(dir, "warnings", vmdir, sizeof vmdir);
    if (vm == NULL) {
        return;
    }
    char *w = json_of(ckpt_vm_warnings_json, vm);
    CHECK(w != NULL && strstr(w, "\"warnings\": []") != NULL);
    free(w);
    EXPECT_OK(ckpt_vm_checkpoint_apply(vm, "X", NULL, NULL));
    w = json_of(ckpt_vm_warnings_json, vm);
    CHECK(w != NULL && strstr(w, "\"warnings\": []") != NULL);
    free(w);
    /* Y is now a leaf nothing depends on: deleting it removes its files */
    size_t y = 0;
    EXPECT_OK(ckpt_vm_checkpoint_find(vm, "Y", &y));
    EXPECT_OK(ckpt_vm_checkpoint_id(vm, y, id, sizeof id, NULL));
    snprintf(config, sizeof config, "%s/checkpoints/%s.json", vmdir, id);
    snprintf(inside, sizeof inside, "%s/keep", config);
    CHECK(file_exists(config));
    CHECK(remove(config) == 0);
    CHECK(mkdir(config, 0755) == 0);
    FILE *f = fopen(inside, "w");
    CHECK(f != NULL);
    if (f != NULL) {
        fclose(f);
    }
    EXPECT_OK(ckpt_vm_checkpoint_delete(vm, "Y", 0, NULL));
    EXPECT_STATUS(ckpt_vm_checkpoint_find(vm, "Y", &y), CKPT_STATUS_NOT_FOUND);
    w = json_of(ckpt_vm_warnings_json, vm);
    CHECK(w != NULL && strstr(w, "deleting checkpoint \\\"Y\\\" was done") != NULL);
    CHECK(w != NULL && strstr(w, "next opened") != NULL);
    free(w);
    /* reading does not empty it */
    w = json_of(ckpt_vm_warnings_json, vm);
    CHECK(w != NULL && strstr(w, "was done") != NULL);
    free(w);
    /* a too-small buffer: the size, then the text */
    char small[4];
    size_t need = 0;
    EXPECT_STATUS(ckpt_vm_warnings_json(vm, small, sizeof small, &need),
                  CKPT_STATUS_BUFFER_TOO_SMALL);
    CHECK(need > sizeof small);
    /* the way is clear again: the next change tidies up and has no warning */
    CHECK(remove(inside) == 0);
    CHECK(remove(config) == 0);
    EXPECT_OK(ckpt_vm_checkpoint_rename(vm, "X", "X2"));
    w = json_of(ckpt_vm_warnings_json, vm);
    CHECK(w != NULL && strstr(w, "\"warnings\": []") != NULL);
    free(w);
    EXPECT_OK(ckpt_vm_close(vm));
    vm = NULL;
    EXPECT_OK(ckpt_vm_open(vmdir, &vm));
    CHECK(vm != NULL && checkpoint_count(vm) == 1);
    EXPECT_STATUS(ckpt_vm_warnings_json(NULL, small, sizeof small, &need),
                  CKPT_STATUS_NULL_POINTER);
    EXPECT_OK(ckpt_vm_close(vm));
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    char disks_dir[2048], os[4096], data[4096], vmdir[2048], text[4096];
    snprintf(disks_dir, sizeof disks_dir, "%s/disks", dir);
    snprintf(os, sizeof os, "%s/os.vhdx", disks_dir);
    snprintf(data, sizeof data, "%s/data.vhdx", disks_dir);
    snprintf(vmdir, sizeof vmdir, "%s/vm", dir);
    CHECK(mkdir(disks_dir, 0755) == 0);
    make_disk(os, SIZE);
    make_disk(data, SIZE);

    /* ---- create ---- */
    const char *disks[] = {os, data};
    const char *passthrough[] = {"/dev/sdz"};
    ckpt_vm_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.struct_size = sizeof spec;
    spec.name = "web";
    spec.disks = disks;
    spec.disk_count = 2;
    spec.passthrough = passthrough;
    spec.passthrough_count = 1;
    spec.memory_mib = 2048;
    spec.cpus = 2;
    spec.hypervisor_json = "{\"secure_boot\": true}";
    ckpt_vm *vm = VM_SENTINEL;
    /* bad specs first: nothing is made */
    spec.checkpoint_type = 9;
    EXPECT_STATUS(ckpt_vm_create(vmdir, &spec, &vm), CKPT_STATUS_INVALID_ARGUMENT);
    spec.checkpoint_type = 0; /* production, the default */
    spec.hypervisor_json = "{not json";
    EXPECT_STATUS(ckpt_vm_create(vmdir, &spec, &vm), CKPT_STATUS_INVALID_ARGUMENT);
    spec.hypervisor_json = "{\"secure_boot\": true}";
    spec.disk_count = 3; /* disks[2] would be read: give a NULL array instead */
    spec.disks = NULL;
    EXPECT_STATUS(ckpt_vm_create(vmdir, &spec, &vm), CKPT_STATUS_NULL_POINTER);
    spec.disks = disks;
    spec.disk_count = 2;
    CHECK(vm == VM_SENTINEL);
    EXPECT_OK(ckpt_vm_create(vmdir, &spec, &vm));
    if (vm == VM_SENTINEL || vm == NULL) {
        return check_finish("test_vm");
    }
    ckpt_vm_info vi = vm_info(vm);
    CHECK(vi.state == CKPT_VM_STATE_OFF);
    CHECK(vi.checkpoint_type == CKPT_CHECKPOINT_TYPE_PRODUCTION);
    CHECK(vi.memory_mib == 2048 && vi.cpus == 2);
    CHECK(vi.disk_count == 2 && vi.passthrough_count == 1 && vi.checkpoint_count == 0);
    CHECK(!vi.has_current_checkpoint && !vi.has_saved_state);
    EXPECT_OK(ckpt_vm_get_name(vm, text, sizeof text, NULL));
    CHECK(strcmp(text, "web") == 0);
    CHECK(strcmp(current(vm, 0), os) == 0); /* before a checkpoint: the base disk */
    EXPECT_STATUS(ckpt_vm_current_disk_path(vm, 2, text, sizeof text, NULL),
                  CKPT_STATUS_INVALID_ARGUMENT);
    /* a second VM in the same folder is refused */
    ckpt_vm *again = VM_SENTINEL;
    EXPECT_STATUS(ckpt_vm_create(vmdir, &spec, &again), CKPT_STATUS_BUSY);
    CHECK(again == VM_SENTINEL);
    EXPECT_OK(ckpt_vm_set_state(vm, CKPT_VM_STATE_RUNNING));
    EXPECT_STATUS(ckpt_vm_set_state(vm, 0), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(vm_info(vm).state == CKPT_VM_STATE_RUNNING);

    write_tag(current(vm, 0), "state-0");
    write_tag(current(vm, 1), "data-0");

    /* ---- production checkpoint "a": quiesced, no memory ---- */
    guest g = guest_new();
    g.vm = vm;
    ckpt_hooks h = hooks_for(&g);
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "a", &h));
    CHECK(g.quiesce_calls == 1 && g.thaw_calls == 1 && g.save_calls == 0);
    CHECK(g.resume_calls == 0); /* nothing was paused */
    /* a call on the same handle from inside a callback: BUSY, not a deadlock */
    CHECK(g.reentrant == CKPT_STATUS_BUSY);
    size_t ia = 99;
    ckpt_checkpoint_info ca = checkpoint(vm, "a", &ia);
    CHECK(ia == 0);
    CHECK(ca.struct_size == sizeof ca);
    CHECK(ca.taken == CKPT_TAKEN_TYPE_PRODUCTION);
    CHECK(ca.requested == CKPT_CHECKPOINT_TYPE_PRODUCTION);
    CHECK(!ca.has_saved_state && !ca.has_fallback_reason && !ca.hidden);
    CHECK(ca.parent_index == -1 && ca.is_current_parent);
    CHECK(ca.disk_count == 2 && ca.skipped_passthrough_count == 1);
    CHECK(ca.chain_depth == 1 && ca.created > 0);
    CHECK(strcmp(checkpoint_disk(vm, "a", 0), os) == 0); /* the frozen base disk */
    const char *cur = current(vm, 0);
    CHECK(strstr(cur, ".avhdx") != NULL && strncmp(cur, disks_dir, strlen(disks_dir)) == 0);
    CHECK(chain_length(cur) == 2);
    CHECK(has_tag(cur, "state-0"));
    vi = vm_info(vm);
    CHECK(vi.checkpoint_count == 1 && vi.has_current_checkpoint);
    write_tag(current(vm, 0), "state-1");
    CHECK(has_tag(os, "state-0")); /* the checkpoint is protected */

    /* ---- standard checkpoint "b": memory through save_memory ---- */
    EXPECT_OK(ckpt_vm_set_checkpoint_type(vm, CKPT_CHECKPOINT_TYPE_STANDARD));
    EXPECT_STATUS(ckpt_vm_set_checkpoint_type(vm, 77), CKPT_STATUS_INVALID_ARGUMENT);
    g = guest_new();
    g.memory = "MEMORY-OF-B";
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "b", &h));
    CHECK(g.quiesce_calls == 0 && g.save_calls == 1);
    CHECK(g.resume_calls == 1 && g.resume_out_of_order == 0); /* after save_memory */
    size_t ib = 0;
    ckpt_checkpoint_info cb = checkpoint(vm, "b", &ib);
    CHECK(cb.taken == CKPT_TAKEN_TYPE_STANDARD && cb.requested == CKPT_CHECKPOINT_TYPE_STANDARD);
    CHECK(cb.has_saved_state && !cb.has_fallback_reason);
    CHECK(cb.parent_index == (int64_t)ia && cb.is_current_parent);
    CHECK(cb.chain_depth == 2);
    {
        char id[128], mem[4096], content[64];
        id[0] = '\0';
        EXPECT_OK(ckpt_vm_checkpoint_id(vm, ib, id, sizeof id, NULL));
        snprintf(mem, sizeof mem, "%s/checkpoints/%.100s.vmrs", vmdir, id);
        CHECK(strcmp(slurp(mem, content, sizeof content), "MEMORY-OF-B") == 0);
    }
    /* save_memory failing: no checkpoint, nothing left behind */
    g = guest_new();
    g.save_result = 7;
    EXPECT_STATUS(ckpt_vm_checkpoint_create(vm, "broken", &h), CKPT_STATUS_IO);
    CHECK(strstr(last_error_text(), "returned 7") != NULL);
    CHECK(g.save_calls == 1 && g.resume_calls == 1); /* resumed after a failure too */
    CHECK(checkpoint_count(vm) == 2);
    /* save_memory saying "no memory state" (1): a standard checkpoint without it */
    g = guest_new();
    g.save_result = 1;
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "nomem", &h));
    CHECK(!checkpoint(vm, "nomem", NULL).has_saved_state);
    CHECK(g.resume_calls == 1); /* whatever save_memory returned */
    EXPECT_OK(ckpt_vm_checkpoint_delete(vm, "nomem", 0, NULL)); /* under the current state */
    /* a caller built with the first ckpt_hooks (no `resume`) still works:
       the library reads only its struct_size bytes */
    {
        ckpt_hooks old = hooks_for(&g);
        old.struct_size = (uint32_t)offsetof(ckpt_hooks, resume);
        g = guest_new();
        g.memory = "MEMORY-OF-OLD";
        EXPECT_OK(ckpt_vm_checkpoint_create(vm, "old", &old));
        CHECK(g.save_calls == 1 && g.resume_calls == 0);
        CHECK(checkpoint(vm, "old", NULL).has_saved_state);
        EXPECT_OK(ckpt_vm_checkpoint_delete(vm, "old", 0, NULL));
        /* smaller than the first version: refused, nothing taken */
        old.struct_size = (uint32_t)offsetof(ckpt_hooks, resume) - 1;
        g = guest_new();
        EXPECT_STATUS(ckpt_vm_checkpoint_create(vm, "old", &old),
                      CKPT_STATUS_INVALID_ARGUMENT);
        CHECK(g.save_calls == 0 && checkpoint_count(vm) == 2);
    }
    CHECK(checkpoint_count(vm) == 2);
    CHECK(has_tag(current(vm, 0), "state-1"));
    write_tag(current(vm, 0), "state-2");

    /* ---- production falls back to standard when quiescing fails ---- */
    EXPECT_OK(ckpt_vm_set_checkpoint_type(vm, CKPT_CHECKPOINT_TYPE_PRODUCTION));
    g = guest_new();
    g.quiesce_result = 5;
    g.memory = "MEMORY-OF-C";
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "c", &h));
    CHECK(g.quiesce_calls == 1 && g.thaw_calls == 0 && g.save_calls == 1);
    CHECK(g.resume_calls == 1 && g.resume_out_of_order == 0);
    size_t ic = 0;
    ckpt_checkpoint_info cc = checkpoint(vm, "c", &ic);
    CHECK(cc.taken == CKPT_TAKEN_TYPE_STANDARD && cc.requested == CKPT_CHECKPOINT_TYPE_PRODUCTION);
    CHECK(cc.has_fallback_reason && cc.has_saved_state);
    EXPECT_OK(ckpt_vm_checkpoint_fallback_reason(vm, ic, text, sizeof text, NULL));
    CHECK(strstr(text, "quiesce failed") != NULL && strstr(text, "returned 5") != NULL);
    EXPECT_OK(ckpt_vm_checkpoint_fallback_reason(vm, ia, text, sizeof text, NULL));
    CHECK(text[0] == '\0');
    /* with no hooks at all, production falls back too */
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "nohooks", NULL));
    ckpt_checkpoint_info cn = checkpoint(vm, "nohooks", NULL);
    CHECK(cn.taken == CKPT_TAKEN_TYPE_STANDARD && cn.has_fallback_reason && !cn.has_saved_state);
    EXPECT_OK(ckpt_vm_checkpoint_delete(vm, "nohooks", 0, NULL));
    /* production-only refuses */
    EXPECT_OK(ckpt_vm_set_checkpoint_type(vm, CKPT_CHECKPOINT_TYPE_PRODUCTION_ONLY));
    g = guest_new();
    g.quiesce_result = 5;
    EXPECT_STATUS(ckpt_vm_checkpoint_create(vm, "refused", &h), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(last_error_text(), "quiesce failed") != NULL);
    EXPECT_OK(ckpt_vm_set_checkpoint_type(vm, CKPT_CHECKPOINT_TYPE_DISABLED));
    EXPECT_STATUS(ckpt_vm_checkpoint_create(vm, "refused", &h), CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_OK(ckpt_vm_set_checkpoint_type(vm, CKPT_CHECKPOINT_TYPE_PRODUCTION));
    CHECK(checkpoint_count(vm) == 3);
    /* names: empty and taken ones are refused */
    EXPECT_STATUS(ckpt_vm_checkpoint_create(vm, "a", &h), CKPT_STATUS_ALREADY_EXISTS);
    EXPECT_STATUS(ckpt_vm_checkpoint_create(vm, "", &h), CKPT_STATUS_INVALID_ARGUMENT);
    write_tag(current(vm, 0), "state-3");
    EXPECT_OK(ckpt_vm_set_resources(vm, 4096, 0));
    vi = vm_info(vm);
    CHECK(vi.memory_mib == 4096 && vi.cpus == 2);

    /* ---- apply and revert of a running VM: refused, nothing changes ---- */
    g = guest_new();
    EXPECT_STATUS(ckpt_vm_checkpoint_apply(vm, "a", "d", &h), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(last_error_text(), "stop or save the VM first") != NULL);
    EXPECT_STATUS(ckpt_vm_checkpoint_revert(vm), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(g.quiesce_calls == 0 && checkpoint_count(vm) == 3);
    CHECK(has_tag(current(vm, 0), "state-3"));
    EXPECT_OK(ckpt_vm_set_state(vm, CKPT_VM_STATE_OFF));

    /* ---- apply "a", capturing the current state as "d" ---- */
    g = guest_new();
    EXPECT_OK(ckpt_vm_checkpoint_apply(vm, "a", "d", &h));
    /* the VM is off: its checkpoint is production with nothing to quiesce */
    CHECK(g.quiesce_calls == 0 && g.thaw_calls == 0 && g.save_calls == 0);
    ckpt_checkpoint_info cd = checkpoint(vm, "d", NULL);
    CHECK(cd.taken == CKPT_TAKEN_TYPE_PRODUCTION && cd.parent_index == (int64_t)ic);
    CHECK(checkpoint(vm, "a", NULL).is_current_parent);
    vi = vm_info(vm);
    CHECK(vi.state == CKPT_VM_STATE_OFF && !vi.has_saved_state); /* production: off */
    CHECK(vi.memory_mib == 2048); /* the configuration came back */
    CHECK(has_tag(current(vm, 0), "state-0"));
    CHECK(has_tag(current(vm, 1), "data-0"));
    CHECK(has_tag(checkpoint_disk(vm, "d", 0), "state-3"));
    EXPECT_STATUS(ckpt_vm_checkpoint_apply(vm, "missing", NULL, &h),
                  CKPT_STATUS_NOT_FOUND);

    /* ---- revert: everything since "a" is discarded ---- */
    write_tag(current(vm, 0), "state-4");
    char before[4096];
    snprintf(before, sizeof before, "%s", current(vm, 0));
    EXPECT_OK(ckpt_vm_checkpoint_revert(vm));
    CHECK(has_tag(current(vm, 0), "state-0"));
    CHECK(strcmp(before, current(vm, 0)) != 0 && !file_exists(before));

    /* ---- apply "b" (standard): saved, with its memory ---- */
    EXPECT_OK(ckpt_vm_checkpoint_apply(vm, "b", NULL, NULL));
    vi = vm_info(vm);
    CHECK(vi.state == CKPT_VM_STATE_SAVED && vi.has_saved_state);
    CHECK(has_tag(current(vm, 0), "state-1"));
    {
        char *show = json_of(ckpt_vm_show_json, vm);
        CHECK(show != NULL && strstr(show, "\"state\": \"saved\"") != NULL);
        CHECK(show != NULL && strstr(show, "\"current_checkpoint\": \"b\"") != NULL);
        free(show);
    }
    /* the hypervisor resumes the VM from that memory state */
    EXPECT_OK(ckpt_vm_set_state(vm, CKPT_VM_STATE_RUNNING));
    vi = vm_info(vm);
    CHECK(vi.state == CKPT_VM_STATE_RUNNING && !vi.has_saved_state);

    /* ---- delete a middle checkpoint: "c" has one dependant, "d" ---- */
    EXPECT_OK(ckpt_vm_checkpoint_delete(vm, "c", 0, NULL));
    CHECK(has_tag(checkpoint_disk(vm, "d", 0), "state-3")); /* d reads the same */
    size_t id_ = 0;
    EXPECT_STATUS(ckpt_vm_checkpoint_find(vm, "c", &id_), CKPT_STATUS_NOT_FOUND);
    /* ---- delete a leaf: "d"; its files go ---- */
    char d_disk[4096];
    snprintf(d_disk, sizeof d_disk, "%s", checkpoint_disk(vm, "d", 0));
    CHECK(file_exists(d_disk));
    EXPECT_OK(ckpt_vm_checkpoint_delete(vm, "d", 0, NULL));
    CHECK(!file_exists(d_disk));
    CHECK(checkpoint_count(vm) == 2);
    /* ---- delete the checkpoint the current state hangs under: merged ---- */
    write_tag(current(vm, 0), "state-5");
    g = guest_new();
    EXPECT_OK(ckpt_vm_checkpoint_delete(vm, "b", 0, &h));
    CHECK(g.progress_calls > 0);
    CHECK(has_tag(current(vm, 0), "state-5"));
    CHECK(checkpoint_count(vm) == 1);
    CHECK(checkpoint(vm, "a", NULL).is_current_parent);

    /* ---- a delete cancelled through the progress callback ---- */
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "e", &h));
    write_tag(current(vm, 0), "state-6");
    g = guest_new();
    g.cancel_progress = 1;
    EXPECT_STATUS(ckpt_vm_checkpoint_delete(vm, "e", 0, &h), CKPT_STATUS_CANCELLED);
    CHECK(g.progress_calls == 1);
    CHECK(has_tag(current(vm, 0), "state-6")); /* nothing lost */
    g = guest_new();
    EXPECT_OK(ckpt_vm_checkpoint_delete(vm, "e", 0, &h));
    CHECK(has_tag(current(vm, 0), "state-6"));
    CHECK(checkpoint_count(vm) == 1);

    /* ---- rename ---- */
    EXPECT_OK(ckpt_vm_checkpoint_rename(vm, "a", "golden"));
    EXPECT_STATUS(ckpt_vm_checkpoint_find(vm, "a", &id_), CKPT_STATUS_NOT_FOUND);
    EXPECT_OK(ckpt_vm_checkpoint_find(vm, "golden", &id_));
    EXPECT_OK(ckpt_vm_checkpoint_name(vm, id_, text, sizeof text, NULL));
    CHECK(strcmp(text, "golden") == 0);
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "f", &h));
    EXPECT_STATUS(ckpt_vm_checkpoint_rename(vm, "f", "golden"), CKPT_STATUS_ALREADY_EXISTS);
    EXPECT_STATUS(ckpt_vm_checkpoint_rename(vm, "nope", "x"), CKPT_STATUS_NOT_FOUND);

    /* ---- export "golden": flattened disks with no parent ---- */
    char exp[2048], path[4096];
    snprintf(exp, sizeof exp, "%s/export-golden", dir);
    g = guest_new();
    EXPECT_OK(ckpt_vm_checkpoint_export(vm, "golden", exp, &h));
    CHECK(g.progress_calls > 0);
    snprintf(path, sizeof path, "%s/os.vhdx", exp);
    CHECK(has_tag(path, "state-0") && chain_length(path) == 1);
    {
        ckpt_disk *disk = NULL;
        EXPECT_OK(ckpt_disk_open(path, CKPT_OPEN_READ_ONLY, &disk));
        ckpt_disk_info di;
        memset(&di, 0, sizeof di);
        di.struct_size = sizeof di;
        EXPECT_OK(ckpt_disk_get_info(disk, &di));
        CHECK(!di.has_parent && di.kind != CKPT_DISK_KIND_DIFFERENCING);
        EXPECT_STATUS(ckpt_disk_get_parent_path(disk, text, sizeof text, NULL),
                      CKPT_STATUS_INVALID_ARGUMENT);
        EXPECT_OK(ckpt_disk_close(disk));
    }
    snprintf(path, sizeof path, "%s/data.vhdx", exp);
    CHECK(has_tag(path, "data-0"));
    snprintf(path, sizeof path, "%s/config.json", exp);
    CHECK(strstr(slurp(path, text, sizeof text), "secure_boot") != NULL);
    /* the current state */
    snprintf(exp, sizeof exp, "%s/export-now", dir);
    EXPECT_OK(ckpt_vm_checkpoint_export(vm, NULL, exp, NULL));
    snprintf(path, sizeof path, "%s/os.vhdx", exp);
    CHECK(has_tag(path, "state-6") && chain_length(path) == 1);
    /* into a folder that is not empty: refused */
    EXPECT_STATUS(ckpt_vm_checkpoint_export(vm, NULL, exp, NULL), CKPT_STATUS_INVALID_ARGUMENT);
    /* cancelled: nothing is left */
    snprintf(exp, sizeof exp, "%s/export-cancelled", dir);
    g = guest_new();
    g.cancel_progress = 1;
    EXPECT_STATUS(ckpt_vm_checkpoint_export(vm, "golden", exp, &h), CKPT_STATUS_CANCELLED);
    snprintf(path, sizeof path, "%s/os.vhdx", exp);
    CHECK(!file_exists(path));

    /* ---- the JSON views ---- */
    {
        char *list = json_of(ckpt_vm_checkpoints_json, vm);
        CHECK(list != NULL && strstr(list, "\"checkpoints\"") != NULL);
        CHECK(list != NULL && strstr(list, "\"name\": \"golden\"") != NULL);
        CHECK(list != NULL && strstr(list, "\"name\": \"f\"") != NULL);
        CHECK(list != NULL && strstr(list, "\"type\": \"production\"") != NULL);
        CHECK(list != NULL && strstr(list, "\"requested_type\"") != NULL);
        CHECK(list != NULL && strstr(list, "\"skipped_passthrough\"") != NULL);
        CHECK(list != NULL && strstr(list, "/dev/sdz") != NULL);
        CHECK(list != NULL && strstr(list, "\"current\"") != NULL);
        CHECK(list != NULL && strstr(list, "\"hidden\": false") != NULL);
        CHECK(list != NULL && strstr(list, disks_dir) != NULL); /* absolute paths */
        free(list);
        char *show = json_of(ckpt_vm_show_json, vm);
        CHECK(show != NULL && strstr(show, "\"name\": \"web\"") != NULL);
        CHECK(show != NULL && strstr(show, "\"memory_mib\": 2048") != NULL);
        CHECK(show != NULL && strstr(show, "\"cpus\": 2") != NULL);
        CHECK(show != NULL && strstr(show, "\"checkpoint_type\": \"production\"") != NULL);
        CHECK(show != NULL && strstr(show, "\"current_checkpoint\": \"f\"") != NULL);
        CHECK(show != NULL && strstr(show, "\"settings\"") != NULL);
        CHECK(show != NULL && strstr(show, "secure_boot") != NULL);
        CHECK(show != NULL && strstr(show, current(vm, 0)) != NULL);
        free(show);
        /* a small buffer is left alone */
        char small[8];
        size_t len = 0;
        memset(small, 'x', sizeof small);
        EXPECT_STATUS(ckpt_vm_show_json(vm, small, sizeof small, &len),
                      CKPT_STATUS_BUFFER_TOO_SMALL);
        CHECK(small[0] == 'x' && len > sizeof small);
    }

    /* ---- walking the tree without JSON ---- */
    size_t n = checkpoint_count(vm);
    CHECK(n == 2);
    for (size_t i = 0; i < n; i++) {
        ckpt_checkpoint_info c;
        memset(&c, 0, sizeof c);
        c.struct_size = sizeof c;
        EXPECT_OK(ckpt_vm_checkpoint_get(vm, i, &c));
        CHECK(c.parent_index < (int64_t)i); /* parents first */
        char name[64];
        EXPECT_OK(ckpt_vm_checkpoint_name(vm, i, name, sizeof name, NULL));
        CHECK((i == 0 && strcmp(name, "golden") == 0) || (i == 1 && strcmp(name, "f") == 0));
    }
    ckpt_checkpoint_info c;
    memset(&c, 0x33, sizeof c);
    c.struct_size = sizeof c;
    EXPECT_STATUS(ckpt_vm_checkpoint_get(vm, n, &c), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(c.created == 0x3333333333333333ULL); /* untouched */
    c.struct_size = 8;
    EXPECT_STATUS(ckpt_vm_checkpoint_get(vm, 0, &c), CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_vm_checkpoint_name(vm, n, text, sizeof text, NULL),
                  CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_vm_checkpoint_disk_path(vm, 0, 2, text, sizeof text, NULL),
                  CKPT_STATUS_INVALID_ARGUMENT);

    /* ---- settings ---- */
    char loc[2048];
    snprintf(loc, sizeof loc, "%s/elsewhere", dir);
    EXPECT_OK(ckpt_vm_set_checkpoint_location(vm, loc));
    EXPECT_OK(ckpt_vm_set_age_warning(vm, 3600));
    EXPECT_OK(ckpt_vm_set_hypervisor_settings(vm, "{\"tpm\": 2}"));
    EXPECT_STATUS(ckpt_vm_set_hypervisor_settings(vm, "{"), CKPT_STATUS_INVALID_ARGUMENT);
    g = guest_new();
    g.memory = "MEMORY-OF-G";
    g.quiesce_result = 1;
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "g", &h));
    {
        size_t ig = 0;
        char id[128], content[64];
        EXPECT_OK(ckpt_vm_checkpoint_find(vm, "g", &ig));
        EXPECT_OK(ckpt_vm_checkpoint_id(vm, ig, id, sizeof id, NULL));
        snprintf(path, sizeof path, "%s/%.100s.vmrs", loc, id);
        CHECK(strcmp(slurp(path, content, sizeof content), "MEMORY-OF-G") == 0);
        char *show = json_of(ckpt_vm_show_json, vm);
        CHECK(show != NULL && strstr(show, "\"age_warning_seconds\": 3600") != NULL);
        CHECK(show != NULL && strstr(show, "elsewhere") != NULL);
        CHECK(show != NULL && strstr(show, "\"tpm\": 2") != NULL);
        free(show);
    }
    EXPECT_OK(ckpt_vm_set_checkpoint_location(vm, NULL));
    CHECK(vm_info(vm).age_warning_seconds == 3600);
    /* A role: shown, refused when unknown, cleared by NULL. */
    CHECK(vm_info(vm).role == CKPT_VM_ROLE_NONE);
    EXPECT_OK(ckpt_vm_set_role(vm, "domain-controller"));
    CHECK(vm_info(vm).role == CKPT_VM_ROLE_DOMAIN_CONTROLLER);
    EXPECT_OK(ckpt_vm_set_role(vm, "replicated"));
    CHECK(vm_info(vm).role == CKPT_VM_ROLE_REPLICATED);
    EXPECT_OK(ckpt_vm_set_role(vm, "cluster-member"));
    CHECK(vm_info(vm).role == CKPT_VM_ROLE_CLUSTER_MEMBER);
    EXPECT_OK(ckpt_vm_set_role(vm, "domain-controller"));
    EXPECT_STATUS(ckpt_vm_set_role(vm, "web-server"), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(vm_info(vm).role == CKPT_VM_ROLE_DOMAIN_CONTROLLER);
    {
        char *show = json_of(ckpt_vm_show_json, vm);
        CHECK(show != NULL && strstr(show, "\"role\": \"domain-controller\"") != NULL);
        free(show);
    }
    EXPECT_OK(ckpt_vm_set_role(vm, NULL));
    CHECK(vm_info(vm).role == CKPT_VM_ROLE_NONE);
    {
        char *show = json_of(ckpt_vm_show_json, vm);
        CHECK(show != NULL && strstr(show, "\"role\": null") != NULL);
        free(show);
    }

    /* ---- the lock: another process (and another handle) gets BUSY ---- */
    ckpt_vm *second = VM_SENTINEL;
    EXPECT_STATUS(ckpt_vm_open(vmdir, &second), CKPT_STATUS_BUSY);
    CHECK(second == VM_SENTINEL);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        ckpt_vm *other = VM_SENTINEL;
        ckpt_status s = ckpt_vm_open(vmdir, &other);
        _exit(s == CKPT_STATUS_BUSY && other == VM_SENTINEL ? 0 : 10 + (int)s);
    }
    CHECK(pid > 0);
    if (pid > 0) {
        int wstatus = 0;
        CHECK(waitpid(pid, &wstatus, 0) == pid);
        CHECK(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0);
    }
    char dirbuf[4096];
    EXPECT_OK(ckpt_vm_get_dir(vm, dirbuf, sizeof dirbuf, NULL));
    CHECK(strstr(dirbuf, "/vm") != NULL);
    EXPECT_OK(ckpt_vm_close(vm));

    /* ---- reopen: everything was saved ---- */
    vm = NULL;
    EXPECT_OK(ckpt_vm_open(vmdir, &vm));
    if (vm != NULL) {
        vi = vm_info(vm);
        CHECK(vi.checkpoint_count == 3 && vi.memory_mib == 2048);
        CHECK(vi.checkpoint_type == CKPT_CHECKPOINT_TYPE_PRODUCTION);
        CHECK(has_tag(current(vm, 0), "state-6"));
        /* delete a subtree: "golden" and everything under it */
        EXPECT_OK(ckpt_vm_checkpoint_delete(vm, "golden", 1, NULL));
        CHECK(checkpoint_count(vm) == 0);
        CHECK(has_tag(current(vm, 0), "state-6"));
        CHECK(has_tag(current(vm, 1), "data-0"));
        EXPECT_STATUS(ckpt_vm_checkpoint_revert(vm), CKPT_STATUS_INVALID_ARGUMENT);
        EXPECT_OK(ckpt_vm_close(vm));
    }
    EXPECT_STATUS(ckpt_vm_open(dir, &second), CKPT_STATUS_NOT_FOUND); /* no VM there */
    CHECK(second == VM_SENTINEL);

    cancelled_delete(dir, 1);
    cancelled_delete(dir, 2);
    cancelled_delete_then_create(dir);
    revert_after_branch_delete(dir);
    export_shared_names(dir);
    names_and_messages(dir);
    name_rules(dir);
    warnings_after_commit(dir);

    return check_finish("test_vm");
}
