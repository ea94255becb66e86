/*
 * What a hypervisor author found missing in the C API (issue 11), added in
 * 0.2 and driven from the header alone: the typed getters (memory-state
 * files, hypervisor settings, checkpoint location, pass-through and skipped
 * devices), checkpoints by stable id (names reused, hidden branch points),
 * the pending-delete flags after a cancelled delete, ckpt_disk_chain_path(0)
 * absolute after a relative open, vectored reads and writes, one file
 * opened without its parents, and paths that are not UTF-8.
 * Vectored I/O also runs from several threads on one handle at once.
 *
 * Usage: test_hypervisor DIR (a scratch directory)
 */
#define _XOPEN_SOURCE 700

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "test_util.h"

#define SIZE (4u * MIB)

/* Write `len` bytes of `byte` at `offset` of the disk at `path`. */
static void put(const char *path, uint8_t byte, size_t len, uint64_t offset) {
    ckpt_disk *disk = NULL;
    EXPECT_OK(ckpt_disk_open(path, CKPT_OPEN_READ_WRITE, &disk));
    uint8_t *buf = malloc(len);
    if (disk != NULL && buf != NULL) {
        memset(buf, byte, len);
        EXPECT_OK(ckpt_disk_write(disk, buf, len, offset));
    }
    free(buf);
    EXPECT_OK(ckpt_disk_close(disk));
}

/* Whether all `len` bytes at `offset` of `disk` are `byte`. */
static int all_are(ckpt_disk *disk, uint8_t byte, size_t len, uint64_t offset) {
    uint8_t *buf = malloc(len);
    int ok = buf != NULL && ckpt_disk_read(disk, buf, len, offset) == CKPT_STATUS_OK;
    for (size_t i = 0; ok && i < len; i++) {
        ok = buf[i] == byte;
    }
    free(buf);
    return ok;
}

/* A VM getter's text (size, then fill) into a static buffer. */
typedef ckpt_status (*vm_getter)(const ckpt_vm *, char *, size_t, size_t *);
static const char *text_of(vm_getter get, ckpt_vm *vm) {
    static char buf[4096];
    size_t len = 0, len2 = 0;
    buf[0] = '\0';
    ckpt_status s = get(vm, NULL, 0, &len);
    CHECK(s == CKPT_STATUS_BUFFER_TOO_SMALL);
    if (s == CKPT_STATUS_BUFFER_TOO_SMALL && len < sizeof buf) {
        EXPECT_OK(get(vm, buf, len + 1, &len2));
        CHECK(len2 == len && strlen(buf) == len);
    }
    return buf;
}

/* An indexed VM getter's text into a static buffer. */
typedef ckpt_status (*vm_index_getter)(const ckpt_vm *, size_t, char *, size_t, size_t *);
static const char *indexed(vm_index_getter get, ckpt_vm *vm, size_t index) {
    static char buf[4096];
    size_t len = 0;
    buf[0] = '\0';
    EXPECT_OK(get(vm, index, buf, sizeof buf, &len));
    CHECK(strlen(buf) == len);
    return buf;
}

/* The id of the checkpoint called `name` into `id`. */
static void id_of(ckpt_vm *vm, const char *name, char *id, size_t len) {
    size_t i = 0;
    id[0] = '\0';
    EXPECT_OK(ckpt_vm_checkpoint_find(vm, name, &i));
    EXPECT_OK(ckpt_vm_checkpoint_id(vm, i, id, len, NULL));
}

static ckpt_checkpoint_info info_by_id(ckpt_vm *vm, const char *id) {
    ckpt_checkpoint_info c;
    memset(&c, 0, sizeof c);
    c.struct_size = sizeof c;
    EXPECT_OK(ckpt_vm_checkpoint_get_by_id(vm, id, &c));
    return c;
}

static int on_save_memory(ckpt_writer *w, void *user) {
    const char *memory = user;
    return ckpt_writer_write(w, (const uint8_t *)memory, strlen(memory)) == CKPT_STATUS_OK ? 0
                                                                                          : 1;
}

static int starts_with(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

/* ---- typed getters and ids ---- */

static void getters_and_ids(const char *dir) {
    char sub[2048], d0[4096], d1[4096], vmdir[4096], loc[4096], mem[4096], buf[4096];
    snprintf(sub, sizeof sub, "%s/getters", dir);
    CHECK(mkdir(sub, 0755) == 0);
    snprintf(d0, sizeof d0, "%s/os.vhdx", sub);
    snprintf(d1, sizeof d1, "%s/data.vhdx", sub);
    snprintf(vmdir, sizeof vmdir, "%s/vm", sub);
    snprintf(loc, sizeof loc, "%s/states", sub);
    make_disk(d0, SIZE);
    make_disk(d1, SIZE);
    const char *disks[] = {d0, d1};
    const char *passthrough[] = {"/dev/sdz", "/dev/sdy"};
    ckpt_vm_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.struct_size = sizeof spec;
    spec.name = "web";
    spec.disks = disks;
    spec.disk_count = 2;
    spec.passthrough = passthrough;
    spec.passthrough_count = 2;
    spec.checkpoint_type = CKPT_CHECKPOINT_TYPE_STANDARD;
    spec.checkpoint_location = loc;
    spec.hypervisor_json = "{\"secure_boot\": true}";
    ckpt_vm *vm = NULL;
    EXPECT_OK(ckpt_vm_create(vmdir, &spec, &vm));
    if (vm == NULL) {
        return;
    }

    /* what was reachable only through the JSON views */
    CHECK(strcmp(text_of(ckpt_vm_hypervisor_json, vm), "{\"secure_boot\":true}") == 0);
    CHECK(strcmp(text_of(ckpt_vm_get_checkpoint_location, vm), loc) == 0);
    CHECK(strcmp(indexed(ckpt_vm_passthrough, vm, 0), "/dev/sdz") == 0);
    CHECK(strcmp(indexed(ckpt_vm_passthrough, vm, 1), "/dev/sdy") == 0);
    EXPECT_STATUS(ckpt_vm_passthrough(vm, 2, buf, sizeof buf, NULL), CKPT_STATUS_INVALID_ARGUMENT);
    /* no memory state yet: the empty string, and the flag says so */
    CHECK(!vm_info(vm).has_saved_state);
    CHECK(strcmp(text_of(ckpt_vm_current_saved_state_path, vm), "") == 0);

    /* a standard checkpoint of a running VM keeps the memory state */
    ckpt_hooks h;
    memset(&h, 0, sizeof h);
    h.struct_size = sizeof h;
    h.save_memory = on_save_memory;
    h.user = (void *)"MEMORY-S";
    EXPECT_OK(ckpt_vm_set_state(vm, CKPT_VM_STATE_RUNNING));
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "S", &h));
    size_t si = 0;
    EXPECT_OK(ckpt_vm_checkpoint_find(vm, "S", &si));
    snprintf(mem, sizeof mem, "%s", indexed(ckpt_vm_checkpoint_saved_state_path, vm, si));
    CHECK(starts_with(mem, loc) && mem[strlen(loc)] == '/');
    CHECK(strcmp(slurp(mem, buf, sizeof buf), "MEMORY-S") == 0);
    EXPECT_OK(ckpt_vm_checkpoint_skipped_device(vm, si, 1, buf, sizeof buf, NULL));
    CHECK(strcmp(buf, "/dev/sdy") == 0);
    EXPECT_STATUS(ckpt_vm_checkpoint_skipped_device(vm, si, 2, buf, sizeof buf, NULL),
                  CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_vm_checkpoint_saved_state_path(vm, 99, buf, sizeof buf, NULL),
                  CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(strcmp(indexed(ckpt_vm_checkpoint_hypervisor_json, vm, si),
                 "{\"secure_boot\":true}") == 0);

    /* the hypervisor settings change; S keeps the old ones, apply restores them */
    EXPECT_OK(ckpt_vm_set_hypervisor_settings(vm, "{\"secure_boot\": false, \"tpm\": 2}"));
    CHECK(strcmp(text_of(ckpt_vm_hypervisor_json, vm), "{\"secure_boot\":false,\"tpm\":2}") == 0);
    CHECK(strcmp(indexed(ckpt_vm_checkpoint_hypervisor_json, vm, si),
                 "{\"secure_boot\":true}") == 0);

    /* stable ids: rename keeps the id, by-id calls reach it */
    char sid[128], id2[128];
    id_of(vm, "S", sid, sizeof sid);
    CHECK(strlen(sid) > 0);
    EXPECT_OK(ckpt_vm_checkpoint_rename_by_id(vm, sid, "Saved one"));
    id_of(vm, "saved ONE", id2, sizeof id2);
    CHECK(strcmp(sid, id2) == 0);
    size_t found = 99;
    EXPECT_OK(ckpt_vm_checkpoint_find_id(vm, sid, &found));
    EXPECT_OK(ckpt_vm_checkpoint_find(vm, "Saved one", &si));
    CHECK(found == si);
    ckpt_checkpoint_info ci = info_by_id(vm, sid);
    CHECK(ci.has_saved_state && !ci.hidden && !ci.deleting && ci.skipped_passthrough_count == 2);
    EXPECT_STATUS(ckpt_vm_checkpoint_find_id(vm, "no-such-id", &found), CKPT_STATUS_NOT_FOUND);
    EXPECT_STATUS(ckpt_vm_checkpoint_find_id(vm, "", &found), CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_vm_checkpoint_find_id(vm, NULL, &found), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_apply_by_id(vm, "no-such-id", NULL, NULL),
                  CKPT_STATUS_NOT_FOUND);

    /* apply by id (the VM must be stopped or saved first) */
    EXPECT_STATUS(ckpt_vm_checkpoint_apply_by_id(vm, sid, NULL, NULL),
                  CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_OK(ckpt_vm_set_state(vm, CKPT_VM_STATE_OFF));
    EXPECT_OK(ckpt_vm_checkpoint_apply_by_id(vm, sid, NULL, NULL));
    CHECK(vm_info(vm).state == CKPT_VM_STATE_SAVED && vm_info(vm).has_saved_state);
    CHECK(strcmp(text_of(ckpt_vm_current_saved_state_path, vm), mem) == 0);
    CHECK(strcmp(text_of(ckpt_vm_hypervisor_json, vm), "{\"secure_boot\":true}") == 0);

    /* a name deleted and taken again: the ids tell the two apart */
    char r1[128], r2[128];
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "R", NULL));
    id_of(vm, "R", r1, sizeof r1);
    EXPECT_OK(ckpt_vm_checkpoint_delete_by_id(vm, r1, 0, NULL));
    EXPECT_STATUS(ckpt_vm_checkpoint_find_id(vm, r1, &found), CKPT_STATUS_NOT_FOUND);
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "R", NULL));
    id_of(vm, "R", r2, sizeof r2);
    CHECK(strcmp(r1, r2) != 0);
    EXPECT_STATUS(ckpt_vm_checkpoint_delete_by_id(vm, r1, 0, NULL), CKPT_STATUS_NOT_FOUND);

    /* a hidden branch point: P with two dependants (Q and the current
     * state), deleted; its name is free again, its id still finds it */
    char p1[128], p2[128], q[128];
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "P", NULL));
    id_of(vm, "P", p1, sizeof p1);
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "Q", NULL));
    id_of(vm, "Q", q, sizeof q);
    EXPECT_OK(ckpt_vm_checkpoint_apply_by_id(vm, p1, NULL, NULL));
    EXPECT_OK(ckpt_vm_checkpoint_delete_by_id(vm, p1, 0, NULL));
    EXPECT_OK(ckpt_vm_checkpoint_find_id(vm, p1, &found));
    ckpt_checkpoint_info pi = info_by_id(vm, p1);
    CHECK(pi.hidden);
    EXPECT_STATUS(ckpt_vm_checkpoint_find(vm, "P", &found), CKPT_STATUS_NOT_FOUND);
    EXPECT_STATUS(ckpt_vm_checkpoint_apply_by_id(vm, p1, NULL, NULL),
                  CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_vm_checkpoint_delete_by_id(vm, p1, 0, NULL),
                  CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_vm_checkpoint_rename_by_id(vm, p1, "P2"), CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "P", NULL));
    id_of(vm, "P", p2, sizeof p2);
    CHECK(strcmp(p1, p2) != 0);
    /* Q hangs under the hidden one: its parent index leads there */
    ckpt_checkpoint_info qi = info_by_id(vm, q);
    EXPECT_OK(ckpt_vm_checkpoint_find_id(vm, p1, &found));
    CHECK(qi.parent_index == (int64_t)found);

    /* export by id; the files are listed */
    char exp[4096], files[8192];
    snprintf(exp, sizeof exp, "%s/export-q", sub);
    EXPECT_OK(ckpt_vm_checkpoint_export_by_id(vm, q, exp, NULL));
    EXPECT_OK(ckpt_vm_export_files_json(vm, files, sizeof files, NULL));
    CHECK(strstr(files, "export-q/os.vhdx") != NULL && strstr(files, "export-q/data.vhdx") != NULL);
    snprintf(exp, sizeof exp, "%s/export-p", sub);
    EXPECT_STATUS(ckpt_vm_checkpoint_export_by_id(vm, p1, exp, NULL),
                  CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_vm_checkpoint_export_by_id(vm, NULL, exp, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_get_by_id(vm, q, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_hypervisor_json(NULL, buf, sizeof buf, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_OK(ckpt_vm_close(vm));
}

/* ---- the pending delete ---- */

static void pending_delete(const char *dir) {
    char sub[2048], disk[4096], vmdir[4096], cur[4096], x[128];
    snprintf(sub, sizeof sub, "%s/pending", dir);
    CHECK(mkdir(sub, 0755) == 0);
    snprintf(disk, sizeof disk, "%s/os.vhdx", sub);
    snprintf(vmdir, sizeof vmdir, "%s/vm", sub);
    make_disk(disk, SIZE);
    const char *disks[] = {disk};
    ckpt_vm_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.struct_size = sizeof spec;
    spec.name = "pending";
    spec.disks = disks;
    spec.disk_count = 1;
    spec.checkpoint_type = CKPT_CHECKPOINT_TYPE_STANDARD;
    ckpt_vm *vm = NULL;
    EXPECT_OK(ckpt_vm_create(vmdir, &spec, &vm));
    if (vm == NULL) {
        return;
    }
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "X", NULL));
    EXPECT_OK(ckpt_vm_current_disk_path(vm, 0, cur, sizeof cur, NULL));
    put(cur, 0x11, SIZE, 0);
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "Y", NULL));
    id_of(vm, "X", x, sizeof x);
    CHECK(!vm_info(vm).delete_pending);

    /* cancelled before anything changed: nothing pending */
    canceller c = {0, 1};
    ckpt_hooks h;
    memset(&h, 0, sizeof h);
    h.struct_size = sizeof h;
    h.progress = cancel_progress;
    h.user = &c;
    EXPECT_STATUS(ckpt_vm_checkpoint_delete_by_id(vm, x, 0, &h), CKPT_STATUS_CANCELLED);
    CHECK(!vm_info(vm).delete_pending && !info_by_id(vm, x).deleting);

    /* cancelled once the disks changed: pending, for X and for the VM */
    c.calls = 0;
    c.cancel_at = 2;
    EXPECT_STATUS(ckpt_vm_checkpoint_delete_by_id(vm, x, 0, &h), CKPT_STATUS_CANCELLED);
    CHECK(c.calls == 2);
    CHECK(vm_info(vm).delete_pending && info_by_id(vm, x).deleting);

    /* the delete again finishes it */
    EXPECT_OK(ckpt_vm_checkpoint_delete_by_id(vm, x, 0, NULL));
    CHECK(!vm_info(vm).delete_pending);
    size_t found = 0;
    EXPECT_STATUS(ckpt_vm_checkpoint_find_id(vm, x, &found), CKPT_STATUS_NOT_FOUND);

    /* pending again, then the VM is closed: the open finishes it */
    char y[128];
    id_of(vm, "Y", y, sizeof y);
    EXPECT_OK(ckpt_vm_current_disk_path(vm, 0, cur, sizeof cur, NULL));
    put(cur, 0x22, SIZE, 0);
    c.calls = 0;
    EXPECT_STATUS(ckpt_vm_checkpoint_delete_by_id(vm, y, 0, &h), CKPT_STATUS_CANCELLED);
    CHECK(vm_info(vm).delete_pending);
    EXPECT_OK(ckpt_vm_close(vm));
    vm = NULL;
    EXPECT_OK(ckpt_vm_open(vmdir, &vm));
    if (vm != NULL) {
        CHECK(!vm_info(vm).delete_pending);
        EXPECT_STATUS(ckpt_vm_checkpoint_find_id(vm, y, &found), CKPT_STATUS_NOT_FOUND);
        EXPECT_OK(ckpt_vm_current_disk_path(vm, 0, cur, sizeof cur, NULL));
        ckpt_disk *d = NULL;
        EXPECT_OK(ckpt_disk_open(cur, CKPT_OPEN_READ_ONLY, &d));
        CHECK(d != NULL && all_are(d, 0x22, SIZE, 0));
        ckpt_disk_close(d);
        EXPECT_OK(ckpt_vm_close(vm));
    }
}

/* ---- chain_path(0) after a relative open ---- */

static void relative_open(const char *dir) {
    char old[4096], sub[2048], text[4096 + 64], real[4096];
    CHECK(getcwd(old, sizeof old) != NULL);
    snprintf(sub, sizeof sub, "%s/relative", dir);
    CHECK(mkdir(sub, 0755) == 0);
    CHECK(chdir(sub) == 0);
    make_disk("base.vhdx", SIZE);
    ckpt_disk *child = NULL;
    EXPECT_OK(ckpt_disk_create_child("child.avhdx", "base.vhdx", NULL, &child));
    EXPECT_OK(ckpt_disk_close(child));
    ckpt_disk *disk = NULL;
    EXPECT_OK(ckpt_disk_open("./child.avhdx", CKPT_OPEN_READ_ONLY, &disk));
    CHECK(realpath("child.avhdx", real) != NULL);
    size_t len = 0;
    EXPECT_OK(ckpt_disk_chain_path(disk, 0, text, sizeof text, &len));
    CHECK(text[0] == '/' && strcmp(text, real) == 0 && len == strlen(real));
    CHECK(realpath("base.vhdx", real) != NULL);
    EXPECT_OK(ckpt_disk_chain_path(disk, 1, text, sizeof text, &len));
    CHECK(strcmp(text, real) == 0);
    EXPECT_OK(ckpt_disk_close(disk));
    CHECK(chdir(old) == 0);
}

/* ---- vectored I/O ---- */

static void vectored(const char *dir) {
    char base[4096], child[4096];
    snprintf(base, sizeof base, "%s/vec-base.vhdx", dir);
    snprintf(child, sizeof child, "%s/vec-child.avhdx", dir);
    make_disk(base, SIZE);
    put(base, 0x5a, 3 * MIB, 0);
    ckpt_disk *disk = NULL;
    EXPECT_OK(ckpt_disk_create_child(child, base, NULL, &disk));
    if (disk == NULL) {
        return;
    }
    /* three buffers (one empty, with a NULL base), unaligned */
    uint8_t a[100], c[5000], whole[6000], back[6000];
    for (size_t i = 0; i < sizeof a; i++) {
        a[i] = (uint8_t)(i * 7 + 1);
    }
    for (size_t i = 0; i < sizeof c; i++) {
        c[i] = (uint8_t)(i * 13 + 3);
    }
    ckpt_iovec w[3] = {{a, sizeof a}, {NULL, 0}, {c, sizeof c}};
    uint64_t at = MIB - 1000; /* across a block boundary */
    EXPECT_OK(ckpt_disk_writev(disk, w, 3, at));
    /* read back as one piece: the concatenation, the parent around it */
    EXPECT_OK(ckpt_disk_read(disk, whole, sizeof a + sizeof c, at));
    CHECK(memcmp(whole, a, sizeof a) == 0 && memcmp(whole + sizeof a, c, sizeof c) == 0);
    CHECK(all_are(disk, 0x5a, 512, at - 512) && all_are(disk, 0x5a, 512, at + 5100));
    /* readv with other cuts, through the chain */
    memset(back, 0, sizeof back);
    ckpt_iovec r[4] = {{back, 1}, {back + 1, 4099}, {NULL, 0}, {back + 4100, 1900}};
    EXPECT_OK(ckpt_disk_readv(disk, r, 4, at - 400));
    EXPECT_OK(ckpt_disk_read(disk, whole, 6000, at - 400));
    CHECK(memcmp(back, whole, 6000) == 0);
    CHECK(back[0] == 0x5a && back[400] == a[0]);

    /* all or nothing: past the end, nothing is written and no buffer touched */
    memset(back, 0xee, sizeof back);
    ckpt_iovec end[2] = {{a, sizeof a}, {c, sizeof c}};
    EXPECT_STATUS(ckpt_disk_writev(disk, end, 2, SIZE - 200), CKPT_STATUS_OUT_OF_RANGE);
    CHECK(all_are(disk, 0, 200, SIZE - 200));
    ckpt_iovec rend[2] = {{back, 100}, {back + 100, 200}};
    EXPECT_STATUS(ckpt_disk_readv(disk, rend, 2, SIZE - 200), CKPT_STATUS_OUT_OF_RANGE);
    CHECK(back[0] == 0xee && back[299] == 0xee);
    ckpt_iovec wrap[2] = {{a, sizeof a}, {c, SIZE_MAX}};
    EXPECT_STATUS(ckpt_disk_writev(disk, wrap, 2, 0), CKPT_STATUS_INVALID_ARGUMENT);
    ckpt_iovec bad[2] = {{a, sizeof a}, {NULL, 10}};
    EXPECT_STATUS(ckpt_disk_writev(disk, bad, 2, 0), CKPT_STATUS_NULL_POINTER);
    CHECK(all_are(disk, 0x5a, sizeof a, 0));
    EXPECT_STATUS(ckpt_disk_readv(disk, NULL, 1, 0), CKPT_STATUS_NULL_POINTER);
    EXPECT_OK(ckpt_disk_readv(disk, NULL, 0, 0));
    EXPECT_OK(ckpt_disk_writev(disk, NULL, 0, SIZE));
    EXPECT_STATUS(ckpt_disk_readv(disk, r, CKPT_IOV_MAX + 1, 0), CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_disk_readv(NULL, r, 1, 0), CKPT_STATUS_NULL_POINTER);
    EXPECT_OK(ckpt_disk_close(disk));

    /* read-only: refused, nothing written */
    EXPECT_OK(ckpt_disk_open(child, CKPT_OPEN_READ_ONLY, &disk));
    EXPECT_STATUS(ckpt_disk_writev(disk, w, 3, 0), CKPT_STATUS_READ_ONLY);
    CHECK(all_are(disk, 0x5a, sizeof a, 0));
    EXPECT_OK(ckpt_disk_close(disk));
}

/* Several threads on one handle at once: writers put their round number
 * into their own region with writev (three pieces per call), a reader
 * reads the whole range with readv meanwhile; every call succeeds and each
 * region ends with its writer's last round. */
#define WRITERS 3
#define REGION (64u * 1024u)
#define ROUNDS 40

typedef struct {
    ckpt_disk *disk;
    unsigned index;
    ckpt_status status;
} worker;

static atomic_int reader_stop;

static void *writer(void *arg) {
    worker *w = arg;
    static uint8_t bufs[WRITERS][REGION];
    uint8_t *b = bufs[w->index];
    for (unsigned round = 1; round <= ROUNDS && w->status == CKPT_STATUS_OK; round++) {
        memset(b, (int)(w->index * 64 + round), REGION);
        ckpt_iovec v[3] = {
            {b, 512}, {b + 512, REGION / 2}, {b + 512 + REGION / 2, REGION / 2 - 512}};
        w->status = ckpt_disk_writev(w->disk, v, 3, (uint64_t)w->index * MIB + 4096);
    }
    return NULL;
}

static void *reader(void *arg) {
    worker *w = arg;
    static uint8_t buf[WRITERS * MIB];
    while (!atomic_load(&reader_stop) && w->status == CKPT_STATUS_OK) {
        ckpt_iovec v[2] = {{buf, MIB + 7}, {buf + MIB + 7, 2 * MIB - 7}};
        w->status = ckpt_disk_readv(w->disk, v, 2, 0);
    }
    return NULL;
}

static void threaded(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/threads.vhdx", dir);
    make_disk(path, SIZE);
    ckpt_disk *disk = NULL;
    EXPECT_OK(ckpt_disk_open(path, CKPT_OPEN_READ_WRITE, &disk));
    if (disk == NULL) {
        return;
    }
    worker w[WRITERS + 1];
    pthread_t t[WRITERS + 1];
    atomic_store(&reader_stop, 0);
    memset(w, 0, sizeof w);
    for (unsigned i = 0; i <= WRITERS; i++) {
        w[i].disk = disk;
        w[i].index = i;
        w[i].status = CKPT_STATUS_OK;
    }
    CHECK(pthread_create(&t[WRITERS], NULL, reader, &w[WRITERS]) == 0);
    for (unsigned i = 0; i < WRITERS; i++) {
        CHECK(pthread_create(&t[i], NULL, writer, &w[i]) == 0);
    }
    for (unsigned i = 0; i < WRITERS; i++) {
        CHECK(pthread_join(t[i], NULL) == 0);
        EXPECT_OK(w[i].status);
    }
    atomic_store(&reader_stop, 1);
    CHECK(pthread_join(t[WRITERS], NULL) == 0);
    EXPECT_OK(w[WRITERS].status);
    EXPECT_OK(ckpt_disk_flush(disk));
    for (unsigned i = 0; i < WRITERS; i++) {
        uint64_t at = (uint64_t)i * MIB + 4096;
        CHECK(all_are(disk, (uint8_t)(i * 64 + ROUNDS), REGION, at));
        CHECK(all_are(disk, 0, 4096, at - 4096));
    }
    EXPECT_OK(ckpt_disk_close(disk));
}

/* ---- one file without its parents ---- */

static void single_file(const char *dir) {
    char base[4096], child[4096], moved[4096], text[4096];
    snprintf(base, sizeof base, "%s/one-base.vhdx", dir);
    snprintf(child, sizeof child, "%s/one-child.avhdx", dir);
    snprintf(moved, sizeof moved, "%s/one-base-moved.vhdx", dir);
    make_disk(base, SIZE);
    put(base, 0xaa, 2 * MIB, 0);
    ckpt_disk *disk = NULL;
    ckpt_child_options co = child_options(MIB);
    EXPECT_OK(ckpt_disk_create_child(child, base, &co, &disk));
    EXPECT_OK(ckpt_disk_close(disk));
    put(child, 0xbb, 512, MIB + 512);

    /* the parent gone: the chain does not open, the file alone does */
    CHECK(rename(base, moved) == 0);
    EXPECT_STATUS(ckpt_disk_open(child, CKPT_OPEN_READ_ONLY, &disk), CKPT_STATUS_NOT_FOUND);
    disk = NULL;
    EXPECT_OK(ckpt_disk_open_file(child, CKPT_OPEN_READ_ONLY, &disk));
    if (disk == NULL) {
        return;
    }
    size_t n = 0;
    EXPECT_OK(ckpt_disk_chain_length(disk, &n));
    CHECK(n == 1);
    ckpt_disk_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    EXPECT_OK(ckpt_disk_get_info(disk, &info));
    CHECK(info.has_parent && info.read_only && info.kind == CKPT_DISK_KIND_DIFFERENCING);
    EXPECT_STATUS(ckpt_disk_get_parent_path(disk, text, sizeof text, NULL),
                  CKPT_STATUS_INVALID_ARGUMENT);
    /* its own data; zeros where only the parent has data, told by the extents */
    CHECK(all_are(disk, 0xbb, 512, MIB + 512));
    CHECK(all_are(disk, 0, 512, MIB) && all_are(disk, 0, MIB, 0));
    ckpt_extent e[8];
    size_t count = 0;
    EXPECT_OK(ckpt_disk_extents(disk, 0, SIZE, e, 8, &count));
    CHECK(count == 3);
    if (count == 3) {
        CHECK(e[0].offset == 0 && e[0].length == MIB &&
              e[0].flags == (CKPT_EXTENT_HOLE | CKPT_EXTENT_ZERO));
        CHECK(e[1].offset == MIB && e[1].length == MIB && e[1].flags == 0);
        CHECK(e[2].offset == 2 * MIB && e[2].flags == (CKPT_EXTENT_HOLE | CKPT_EXTENT_ZERO));
    }
    uint8_t byte = 1;
    EXPECT_STATUS(ckpt_disk_write(disk, &byte, 1, 0), CKPT_STATUS_READ_ONLY);
    EXPECT_STATUS(ckpt_disk_trim(disk, 0, MIB), CKPT_STATUS_READ_ONLY);
    EXPECT_OK(ckpt_disk_close(disk));
    disk = NULL;
    EXPECT_STATUS(ckpt_disk_open_file(child, CKPT_OPEN_READ_WRITE, &disk),
                  CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(disk == NULL);
    EXPECT_STATUS(ckpt_disk_open_file(NULL, CKPT_OPEN_READ_ONLY, &disk), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_disk_open_file(child, CKPT_OPEN_READ_ONLY, NULL), CKPT_STATUS_NULL_POINTER);

    /* a base disk alone reads as ckpt_disk_open does */
    EXPECT_OK(ckpt_disk_open_file(moved, CKPT_OPEN_READ_ONLY, &disk));
    CHECK(disk != NULL && all_are(disk, 0xaa, 2 * MIB, 0) && all_are(disk, 0, MIB, 2 * MIB));
    EXPECT_OK(ckpt_disk_close(disk));
    /* put back, the chain opens again and the child was not changed */
    CHECK(rename(moved, base) == 0);
    EXPECT_OK(ckpt_disk_open(child, CKPT_OPEN_READ_ONLY, &disk));
    CHECK(disk != NULL && all_are(disk, 0xaa, 512, MIB) && all_are(disk, 0xbb, 512, MIB + 512));
    EXPECT_OK(ckpt_disk_close(disk));
}

/* ---- paths that are not UTF-8 ---- */

static void non_utf8(const char *dir) {
    char base[4096], child[4096], text[4096], vmdir[4096], sub[4096];
    /* "b\xff.vhdx": byte 0xff is never valid UTF-8 */
    char parent[4096], bad_child[4096];
    snprintf(base, sizeof base, "%s/b\xff.vhdx", dir);
    snprintf(parent, sizeof parent, "%s/parent.vhdx", dir);
    snprintf(child, sizeof child, "%s/c\xff\xfe.avhdx", dir);
    snprintf(bad_child, sizeof bad_child, "%s/child-of-b\xff.avhdx", dir);
    /* a base disk with such a name: create, write, reopen, its path back */
    make_disk(base, SIZE);
    CHECK(file_exists(base));
    put(base, 0x77, 4096, 0);
    ckpt_disk *disk = NULL;
    EXPECT_OK(ckpt_disk_open(base, CKPT_OPEN_READ_ONLY, &disk));
    if (disk == NULL) {
        return;
    }
    CHECK(all_are(disk, 0x77, 4096, 0));
    size_t len = 0;
    EXPECT_OK(ckpt_disk_chain_path(disk, 0, text, sizeof text, &len));
    CHECK(ends_with(text, "/b\xff.vhdx") && len == strlen(text) && text[0] == '/');
    size_t level = 9;
    EXPECT_OK(ckpt_disk_level_of(disk, base, &level));
    CHECK(level == 0);
    EXPECT_OK(ckpt_disk_close(disk));
    EXPECT_OK(ckpt_disk_open_file(base, CKPT_OPEN_READ_ONLY, &disk));
    EXPECT_OK(ckpt_disk_close(disk));
    /* a parent locator holds text: a parent named so is refused, nothing made */
    disk = DISK_SENTINEL;
    EXPECT_STATUS(ckpt_disk_create_child(bad_child, base, NULL, &disk),
                  CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(disk == DISK_SENTINEL && !file_exists(bad_child));
    CHECK(strstr(last_error_text(), "UTF-8") != NULL);
    /* a child named so, of a UTF-8 parent, is fine */
    make_disk(parent, SIZE);
    put(parent, 0x66, 4096, 0);
    disk = NULL;
    EXPECT_OK(ckpt_disk_create_child(child, parent, NULL, &disk));
    EXPECT_OK(ckpt_disk_close(disk));
    disk = NULL;
    EXPECT_OK(ckpt_disk_open(child, CKPT_OPEN_READ_WRITE, &disk));
    if (disk == NULL) {
        return;
    }
    CHECK(all_are(disk, 0x66, 4096, 0));
    EXPECT_OK(ckpt_disk_chain_path(disk, 0, text, sizeof text, &len));
    CHECK(ends_with(text, "/c\xff\xfe.avhdx") && len == strlen(text));
    EXPECT_OK(ckpt_disk_get_parent_path(disk, text, sizeof text, NULL));
    CHECK(ends_with(text, "/parent.vhdx"));
    EXPECT_OK(ckpt_disk_close(disk));

    /* a VM keeps its paths as JSON text: refused, with nothing made */
    snprintf(sub, sizeof sub, "%s/utf8-vm", dir);
    snprintf(vmdir, sizeof vmdir, "%s/vm\xff", dir);
    const char *disks[] = {base};
    ckpt_vm_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.struct_size = sizeof spec;
    spec.name = "bytes";
    spec.disks = disks;
    spec.disk_count = 1;
    ckpt_vm *vm = VM_SENTINEL;
    EXPECT_STATUS(ckpt_vm_create(sub, &spec, &vm), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(vm == VM_SENTINEL && !file_exists(sub));
    EXPECT_STATUS(ckpt_vm_open(vmdir, &vm), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(vm == VM_SENTINEL && !file_exists(vmdir));
    CHECK(strstr(last_error_text(), "UTF-8") != NULL);
    /* a UTF-8 VM: an export folder that is not UTF-8 is refused, not made */
    char ok_disk[4096], exp[4096];
    snprintf(ok_disk, sizeof ok_disk, "%s/utf8.vhdx", dir);
    make_disk(ok_disk, SIZE);
    disks[0] = ok_disk;
    vm = NULL;
    EXPECT_OK(ckpt_vm_create(sub, &spec, &vm));
    if (vm != NULL) {
        snprintf(exp, sizeof exp, "%s/exp\xff", dir);
        EXPECT_STATUS(ckpt_vm_checkpoint_export(vm, NULL, exp, NULL), CKPT_STATUS_INVALID_ARGUMENT);
        CHECK(!file_exists(exp));
        snprintf(exp, sizeof exp, "%s/exp-ok", dir);
        EXPECT_OK(ckpt_vm_checkpoint_export(vm, NULL, exp, NULL));
        EXPECT_OK(ckpt_vm_close(vm));
    }
}

/* ---- every new function refuses NULL where a pointer is needed ---- */

static void null_arguments(const char *dir) {
    char buf[64];
    size_t n = 77;
    EXPECT_STATUS(ckpt_vm_current_saved_state_path(NULL, buf, sizeof buf, &n),
                  CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_saved_state_path(NULL, 0, buf, sizeof buf, &n),
                  CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_hypervisor_json(NULL, buf, sizeof buf, &n), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_hypervisor_json(NULL, 0, buf, sizeof buf, &n),
                  CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_get_checkpoint_location(NULL, buf, sizeof buf, &n),
                  CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_passthrough(NULL, 0, buf, sizeof buf, &n), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_skipped_device(NULL, 0, 0, buf, sizeof buf, &n),
                  CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_find_id(NULL, "x", &n), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_get_by_id(NULL, "x", NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_apply_by_id(NULL, "x", NULL, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_delete_by_id(NULL, "x", 0, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_rename_by_id(NULL, "x", "y"), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_export_by_id(NULL, "x", dir, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_disk_writev(NULL, NULL, 0, 0), CKPT_STATUS_NULL_POINTER);
    CHECK(n == 77);

    /* on a live VM: NULL ids, names, outputs and buffers */
    char disk[4096], vmdir[4096];
    snprintf(disk, sizeof disk, "%s/null-args.vhdx", dir);
    snprintf(vmdir, sizeof vmdir, "%s/null-args-vm", dir);
    make_disk(disk, SIZE);
    const char *disks[] = {disk};
    ckpt_vm_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.struct_size = sizeof spec;
    spec.name = "nulls";
    spec.disks = disks;
    spec.disk_count = 1;
    ckpt_vm *vm = NULL;
    EXPECT_OK(ckpt_vm_create(vmdir, &spec, &vm));
    if (vm == NULL) {
        return;
    }
    EXPECT_OK(ckpt_vm_checkpoint_create(vm, "c", NULL));
    char id[128];
    id_of(vm, "c", id, sizeof id);
    EXPECT_STATUS(ckpt_vm_hypervisor_json(vm, NULL, 8, &n), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_get_checkpoint_location(vm, NULL, 8, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_find_id(vm, id, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_apply_by_id(vm, NULL, NULL, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_delete_by_id(vm, NULL, 0, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_rename_by_id(vm, id, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_checkpoint_rename_by_id(vm, id, " padded"),
                  CKPT_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(ckpt_vm_checkpoint_export_by_id(vm, id, NULL, NULL), CKPT_STATUS_NULL_POINTER);
    /* a too-small struct_size is refused and *info not written */
    ckpt_checkpoint_info info;
    memset(&info, 0x5c, sizeof info);
    info.struct_size = 8;
    EXPECT_STATUS(ckpt_vm_checkpoint_get_by_id(vm, id, &info), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(info.struct_size == 8 && info.created == 0x5c5c5c5c5c5c5c5cull);
    /* nothing of that changed the checkpoint */
    size_t found = 9;
    EXPECT_OK(ckpt_vm_checkpoint_find(vm, "c", &found));
    char id2[128];
    EXPECT_OK(ckpt_vm_checkpoint_id(vm, found, id2, sizeof id2, NULL));
    CHECK(strcmp(id, id2) == 0);
    EXPECT_OK(ckpt_vm_close(vm));
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    CHECK(CKPT_VERSION_MAJOR == 0 && CKPT_VERSION_MINOR == 2);
    EXPECT_OK(CKPT_VERSION_CHECK());
    getters_and_ids(argv[1]);
    pending_delete(argv[1]);
    relative_open(argv[1]);
    vectored(argv[1]);
    threaded(argv[1]);
    single_file(argv[1]);
    non_utf8(argv[1]);
    null_arguments(argv[1]);
    return check_finish("test_hypervisor");
}
