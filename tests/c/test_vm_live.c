/*
 * A running VM through the C API: the live disk handles of ckpt_vm_disk
 * (borrowed from the VM, refused by ckpt_disk_close), two threads writing
 * through them while the main thread creates checkpoints, and the data
 * of every checkpoint and of the current state checked afterwards; the
 * current state is also exported (ckpt_vm_checkpoint_export with no name)
 * while the threads write, and the export holds one such instant.
 *
 * Every write is a 4 KiB unit holding its disk, unit and round; a thread
 * publishes the round it is about to write and the last one that returned.
 * A checkpoint must hold, for each unit, a round between the last one that
 * returned before the create began and the last one that started before
 * it returned.
 *
 * Usage: test_vm_live DIR (a scratch directory)
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
#define CHECKPOINTS 3

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    char d0[1024], d1[1024], vmdir[1024];
    snprintf(d0, sizeof d0, "%s/live0.vhdx", argv[1]);
    snprintf(d1, sizeof d1, "%s/live1.vhdx", argv[1]);
    snprintf(vmdir, sizeof vmdir, "%s/vm", argv[1]);
    make_disk(d0, SIZE);
    make_disk(d1, SIZE);

    const char *disks[2] = {d0, d1};
    ckpt_vm_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.struct_size = sizeof spec;
    spec.name = "live";
    spec.disks = disks;
    spec.disk_count = 2;
    spec.checkpoint_type = CKPT_CHECKPOINT_TYPE_STANDARD;
    ckpt_vm *vm = NULL;
    EXPECT_OK(ckpt_vm_create(vmdir, &spec, &vm));
    if (vm == NULL) {
        return check_finish("test_vm_live");
    }

    /* The borrowed handles: one per disk, the same on every call. */
    ckpt_disk *bad = DISK_SENTINEL;
    EXPECT_STATUS(ckpt_vm_disk(vm, 2, &bad), CKPT_STATUS_INVALID_ARGUMENT);
    CHECK(bad == DISK_SENTINEL);
    EXPECT_STATUS(ckpt_vm_disk(vm, 0, NULL), CKPT_STATUS_NULL_POINTER);
    EXPECT_STATUS(ckpt_vm_disk(NULL, 0, &bad), CKPT_STATUS_NULL_POINTER);
    static struct unit_writer w[2];
    EXPECT_OK(ckpt_vm_disk(vm, 0, &w[0].disk));
    EXPECT_OK(ckpt_vm_disk(vm, 1, &w[1].disk));
    ckpt_disk *again = NULL;
    EXPECT_OK(ckpt_vm_disk(vm, 0, &again));
    CHECK(again == w[0].disk);
    CHECK(w[0].disk != w[1].disk);
    EXPECT_STATUS(ckpt_disk_close(w[0].disk), CKPT_STATUS_INVALID_ARGUMENT);
    if (w[0].disk == NULL || w[1].disk == NULL) {
        ckpt_vm_close(vm);
        return check_finish("test_vm_live");
    }
    EXPECT_OK(ckpt_vm_set_state(vm, CKPT_VM_STATE_RUNNING));

    pthread_t t[2];
    for (unsigned i = 0; i < 2; i++) {
        unit_writer_init(&w[i], w[i].disk, i, STRIDE);
        CHECK(pthread_create(&t[i], NULL, unit_write_loop, &w[i]) == 0);
    }

    static uint64_t lo[CHECKPOINTS][2][UNIT_COUNT], hi[CHECKPOINTS][2][UNIT_COUNT];
    for (int k = 0; k < CHECKPOINTS; k++) {
        /* let the writers get through a few rounds */
        unit_writer_wait(&w[0], (uint64_t)(2 * k + 2));
        unit_writer_wait(&w[1], (uint64_t)(2 * k + 2));
        for (unsigned i = 0; i < 2; i++) {
            for (unsigned u = 0; u < UNIT_COUNT; u++) {
                lo[k][i][u] = atomic_load(&w[i].done[u]);
            }
        }
        char name[16];
        snprintf(name, sizeof name, "c%d", k);
        EXPECT_OK(ckpt_vm_checkpoint_create(vm, name, NULL));
        for (unsigned i = 0; i < 2; i++) {
            for (unsigned u = 0; u < UNIT_COUNT; u++) {
                hi[k][i][u] = atomic_load(&w[i].started[u]);
            }
        }
    }
    /* The current state exported while the writers write: one instant,
     * through a temporary checkpoint merged back afterwards. */
    static uint64_t elo[2][UNIT_COUNT], ehi[2][UNIT_COUNT];
    for (unsigned i = 0; i < 2; i++) {
        for (unsigned u = 0; u < UNIT_COUNT; u++) {
            elo[i][u] = atomic_load(&w[i].done[u]);
        }
    }
    char exportdir[1024];
    snprintf(exportdir, sizeof exportdir, "%s/export-now", argv[1]);
    EXPECT_OK(ckpt_vm_checkpoint_export(vm, NULL, exportdir, NULL));
    for (unsigned i = 0; i < 2; i++) {
        for (unsigned u = 0; u < UNIT_COUNT; u++) {
            ehi[i][u] = atomic_load(&w[i].started[u]);
        }
    }
    size_t count = 0;
    EXPECT_OK(ckpt_vm_checkpoint_count(vm, &count));
    size_t found = 99;
    EXPECT_OK(ckpt_vm_checkpoint_find(vm, "c2", &found));
    /* c0..c2 kept, in place (a hidden node may follow them). */
    CHECK(count >= CHECKPOINTS && found == CHECKPOINTS - 1);
    for (unsigned i = 0; i < 2; i++) {
        atomic_store(&w[i].stop, true);
        pthread_join(t[i], NULL);
        CHECK(!w[i].failed);
    }
    for (unsigned i = 0; i < 2; i++) {
        char path[1100];
        snprintf(path, sizeof path, "%s/live%u.vhdx", exportdir, i);
        check_units_at(path, i, STRIDE, elo[i], ehi[i]);
    }

    for (int k = 0; k < CHECKPOINTS; k++) {
        char name[16];
        snprintf(name, sizeof name, "c%d", k);
        size_t index = 99;
        EXPECT_OK(ckpt_vm_checkpoint_find(vm, name, &index));
        for (unsigned i = 0; i < 2; i++) {
            char path[1024];
            size_t len = 0;
            EXPECT_OK(ckpt_vm_checkpoint_disk_path(vm, index, i, path, sizeof path, &len));
            check_units_at(path, i, STRIDE, lo[k][i], hi[k][i]);
        }
    }
    /* The current state, through the same handles: every last write. */
    for (unsigned i = 0; i < 2; i++) {
        uint64_t last[UNIT_COUNT];
        for (unsigned u = 0; u < UNIT_COUNT; u++) {
            last[u] = atomic_load(&w[i].done[u]);
        }
        check_units(w[i].disk, i, STRIDE, last, last);
        ckpt_disk_info info;
        memset(&info, 0, sizeof info);
        info.struct_size = sizeof info;
        EXPECT_OK(ckpt_disk_get_info(w[i].disk, &info));
        CHECK(info.has_parent);
        CHECK(!info.read_only);
    }
    EXPECT_OK(ckpt_vm_close(vm));

    /* Reopened: the current disks hold the same data. */
    vm = NULL;
    EXPECT_OK(ckpt_vm_open(vmdir, &vm));
    if (vm != NULL) {
        for (unsigned i = 0; i < 2; i++) {
            ckpt_disk *d = NULL;
            EXPECT_OK(ckpt_vm_disk(vm, i, &d));
            if (d == NULL) {
                continue;
            }
            uint64_t last[UNIT_COUNT];
            for (unsigned u = 0; u < UNIT_COUNT; u++) {
                last[u] = atomic_load(&w[i].done[u]);
            }
            check_units(d, i, STRIDE, last, last);
        }
        EXPECT_OK(ckpt_vm_close(vm));
    }
    return check_finish("test_vm_live");
}
