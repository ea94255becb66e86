/*
 * Deleting checkpoints of a running VM through the C API (from the header
 * alone): two threads write self-describing units through the live
 * handles of ckpt_vm_disk and flush, while the main thread creates
 * checkpoints A, B and C, deletes B (a middle one: merged live) with a
 * progress callback, then C (the one the current state hangs under: each
 * handle switches to a fresh child, then the old top merges), cancelled
 * half way (left pending, as ckpt_vm_info.delete_pending says) and
 * retried. Afterwards A's disks, opened read-only, hold what they held at
 * its creation; the current state holds every write, through the handles
 * and reopened; no write or flush of a writer failed.
 *
 * Usage: test_vm_live_delete DIR (a scratch directory)
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

#define SIZE (8u * MIB)
#define STRIDE (SIZE / UNIT_COUNT)
#define DISKS 2

static struct unit_writer w[DISKS];

/* A progress callback that records what it saw and cancels at call
 * `cancel_at` (1 = the first; 0 = never). */
typedef struct {
    int calls;
    int cancel_at;
    int backwards; /* `done` went down */
    int past_total; /* `done` went past `total` */
    uint64_t last_done, last_total;
} progress;

static int on_progress(uint64_t done, uint64_t total, void *user) {
    progress *p = user;
    p->calls++;
    if (done < p->last_done) {
        p->backwards = 1;
    }
    if (done > total) {
        p->past_total = 1;
    }
    p->last_done = done;
    p->last_total = total;
    return p->cancel_at != 0 && p->calls >= p->cancel_at;
}

static ckpt_hooks hooks_for(progress *p, int cancel_at) {
    memset(p, 0, sizeof *p);
    p->cancel_at = cancel_at;
    ckpt_hooks h;
    memset(&h, 0, sizeof h);
    h.struct_size = sizeof h;
    h.progress = on_progress;
    h.user = p;
    return h;
}

/* Let both writers get `rounds` more rounds done. */
static void let_write(uint64_t rounds) {
    for (unsigned i = 0; i < DISKS; i++) {
        unit_writer_wait(&w[i], atomic_load(&w[i].done[UNIT_COUNT - 1]) + rounds);
    }
}

/* The checkpoint called `name`, into `*c`; its index, or -1 (no check
 * recorded: a missing checkpoint may be what the caller expects). */
static long find(ckpt_vm *vm, const char *name, ckpt_checkpoint_info *c) {
    size_t i = 0;
    if (ckpt_vm_checkpoint_find(vm, name, &i) != CKPT_STATUS_OK) {
        return -1;
    }
    memset(c, 0, sizeof *c);
    c->struct_size = sizeof *c;
    EXPECT_OK(ckpt_vm_checkpoint_get(vm, i, c));
    return (long)i;
}

/* The number of checkpoints that are not hidden. */
static size_t visible_checkpoints(ckpt_vm *vm) {
    size_t n = 0, visible = 0;
    EXPECT_OK(ckpt_vm_checkpoint_count(vm, &n));
    for (size_t i = 0; i < n; i++) {
        ckpt_checkpoint_info c;
        memset(&c, 0, sizeof c);
        c.struct_size = sizeof c;
        EXPECT_OK(ckpt_vm_checkpoint_get(vm, i, &c));
        visible += !c.hidden;
    }
    return visible;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    char d0[1024], d1[1024], vmdir[1024];
    snprintf(d0, sizeof d0, "%s/os.vhdx", argv[1]);
    snprintf(d1, sizeof d1, "%s/data.vhdx", argv[1]);
    snprintf(vmdir, sizeof vmdir, "%s/vm", argv[1]);
    make_disk(d0, SIZE);
    make_disk(d1, SIZE);
    const char *disks[DISKS] = {d0, d1};
    ckpt_vm_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.struct_size = sizeof spec;
    spec.name = "live-delete";
    spec.disks = disks;
    spec.disk_count = DISKS;
    spec.checkpoint_type = CKPT_CHECKPOINT_TYPE_STANDARD;
    ckpt_vm *vm = NULL;
    EXPECT_OK(ckpt_vm_create(vmdir, &spec, &vm));
    if (vm == NULL) {
        return check_finish("test_vm_live_delete");
    }
    ckpt_disk *live[DISKS] = {NULL, NULL};
    for (unsigned i = 0; i < DISKS; i++) {
        EXPECT_OK(ckpt_vm_disk(vm, i, &live[i]));
    }
    if (live[0] == NULL || live[1] == NULL) {
        ckpt_vm_close(vm);
        return check_finish("test_vm_live_delete");
    }
    EXPECT_OK(ckpt_vm_set_state(vm, CKPT_VM_STATE_RUNNING));

    pthread_t t[DISKS];
    for (unsigned i = 0; i < DISKS; i++) {
        unit_writer_init(&w[i], live[i], i, STRIDE);
        CHECK(pthread_create(&t[i], NULL, unit_write_loop, &w[i]) == 0);
    }

    /* A, B, C, each with the rounds it may hold per unit: from the last
     * write that returned before the create to the last one that started
     * before it returned. */
    static const char *names[3] = {"A", "B", "C"};
    static uint64_t lo[3][DISKS][UNIT_COUNT], hi[3][DISKS][UNIT_COUNT];
    for (int k = 0; k < 3; k++) {
        let_write(2);
        for (unsigned i = 0; i < DISKS; i++) {
            for (unsigned u = 0; u < UNIT_COUNT; u++) {
                lo[k][i][u] = atomic_load(&w[i].done[u]);
            }
        }
        EXPECT_OK(ckpt_vm_checkpoint_create(vm, names[k], NULL));
        for (unsigned i = 0; i < DISKS; i++) {
            for (unsigned u = 0; u < UNIT_COUNT; u++) {
                hi[k][i][u] = atomic_load(&w[i].started[u]);
            }
        }
    }
    let_write(2);
    CHECK(!vm_info(vm).delete_pending);

    /* B, a middle one: C's frozen disks merge into B's, live. */
    progress p;
    ckpt_hooks h = hooks_for(&p, 0);
    EXPECT_OK(ckpt_vm_checkpoint_delete(vm, "B", 0, &h));
    CHECK(p.calls > 1 && !p.backwards && !p.past_total && p.last_done == p.last_total);
    ckpt_checkpoint_info c;
    CHECK(find(vm, "B", &c) < 0);
    CHECK(find(vm, "C", &c) >= 0 && c.is_current_parent && !c.deleting);
    CHECK(!vm_info(vm).delete_pending);
    let_write(2);

    /* C, the current state's parent, cancelled half way (after the
     * switch): pending, for C and for the VM. */
    h = hooks_for(&p, 2);
    EXPECT_STATUS(ckpt_vm_checkpoint_delete(vm, "C", 0, &h), CKPT_STATUS_CANCELLED);
    CHECK(p.calls == 2);
    CHECK(vm_info(vm).delete_pending);
    CHECK(find(vm, "C", &c) >= 0 && c.deleting);
    /* the guest keeps writing meanwhile */
    let_write(2);
    /* the retry finishes it, live, with progress (not checked to be
     * monotonic: finishing a pending delete reports each disk's merge
     * from 0 against one total) */
    h = hooks_for(&p, 0);
    EXPECT_OK(ckpt_vm_checkpoint_delete(vm, "C", 0, &h));
    CHECK(p.calls > 1 && !p.past_total && p.last_done == p.last_total);
    CHECK(!vm_info(vm).delete_pending);
    CHECK(find(vm, "C", &c) < 0);
    CHECK(find(vm, "A", &c) >= 0 && !c.deleting && !c.hidden);
    CHECK(visible_checkpoints(vm) == 1);
    let_write(2);

    for (unsigned i = 0; i < DISKS; i++) {
        atomic_store(&w[i].stop, true);
        pthread_join(t[i], NULL);
        CHECK(!w[i].failed);
        CHECK(atomic_load(&w[i].flushed) > 0);
    }

    /* A's disks, opened read-only: what A held at its creation. */
    long a = find(vm, "A", &c);
    CHECK(a >= 0);
    for (unsigned i = 0; a >= 0 && i < DISKS; i++) {
        char path[1024];
        size_t len = 0;
        EXPECT_OK(ckpt_vm_checkpoint_disk_path(vm, (size_t)a, i, path, sizeof path, &len));
        check_units_at(path, i, STRIDE, lo[0][i], hi[0][i]);
    }
    /* The current state, through the same handles: every last write. */
    static uint64_t last[DISKS][UNIT_COUNT];
    for (unsigned i = 0; i < DISKS; i++) {
        for (unsigned u = 0; u < UNIT_COUNT; u++) {
            last[i][u] = atomic_load(&w[i].done[u]);
        }
        check_units(live[i], i, STRIDE, last[i], last[i]);
    }
    EXPECT_OK(ckpt_vm_close(vm));

    /* Reopened: A as it was, the current disks (read-only) every write. */
    vm = NULL;
    EXPECT_OK(ckpt_vm_open(vmdir, &vm));
    if (vm != NULL) {
        CHECK(!vm_info(vm).delete_pending);
        CHECK(visible_checkpoints(vm) == 1);
        a = find(vm, "A", &c);
        CHECK(a >= 0);
        for (unsigned i = 0; i < DISKS; i++) {
            char path[1024];
            size_t len = 0;
            if (a >= 0) {
                EXPECT_OK(
                    ckpt_vm_checkpoint_disk_path(vm, (size_t)a, i, path, sizeof path, &len));
                check_units_at(path, i, STRIDE, lo[0][i], hi[0][i]);
            }
            EXPECT_OK(ckpt_vm_current_disk_path(vm, i, path, sizeof path, &len));
            check_units_at(path, i, STRIDE, last[i], last[i]);
        }
        EXPECT_OK(ckpt_vm_close(vm));
    }
    return check_finish("test_vm_live_delete");
}
