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
#define UNIT 4096u
#define UNITS 32u
#define STRIDE (SIZE / UNITS)
#define CHECKPOINTS 3

static void make_disk(const char *path) {
    ckpt_create_options o;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.block_size = MIB;
    ckpt_disk *disk = NULL;
    EXPECT_OK(ckpt_disk_create(path, SIZE, &o, &disk));
    EXPECT_OK(ckpt_disk_close(disk));
}

static void fill_unit(uint8_t *buf, unsigned disk, unsigned unit, uint64_t round) {
    for (unsigned i = 0; i < UNIT; i++) {
        buf[i] = (uint8_t)((disk * 31u + unit * 7u + (unsigned)round + i) | 1u);
    }
    memcpy(buf, &round, sizeof round);
}

/* The round a unit holds (0: never written); -1 for anything else. */
static int64_t unit_round(const uint8_t *buf, unsigned disk, unsigned unit) {
    int zero = 1;
    for (unsigned i = 0; i < UNIT; i++) {
        if (buf[i] != 0) {
            zero = 0;
            break;
        }
    }
    if (zero) {
        return 0;
    }
    uint64_t round;
    memcpy(&round, buf, sizeof round);
    uint8_t want[UNIT];
    fill_unit(want, disk, unit, round);
    return memcmp(want, buf, UNIT) == 0 ? (int64_t)round : -1;
}

struct writer {
    ckpt_disk *disk;
    unsigned index;
    atomic_bool stop;
    /* per unit: the round being written, and the last one that returned */
    _Atomic uint64_t started[UNITS];
    _Atomic uint64_t done[UNITS];
    int failed;
};

static void *write_loop(void *arg) {
    struct writer *w = arg;
    uint8_t buf[UNIT];
    uint64_t round = 0;
    while (!atomic_load(&w->stop)) {
        round++;
        for (unsigned u = 0; u < UNITS && !atomic_load(&w->stop); u++) {
            atomic_store(&w->started[u], round);
            fill_unit(buf, w->index, u, round);
            if (ckpt_disk_write(w->disk, buf, UNIT, (uint64_t)u * STRIDE) != CKPT_STATUS_OK) {
                w->failed = 1;
                return NULL;
            }
            atomic_store(&w->done[u], round);
        }
        if (ckpt_disk_flush(w->disk) != CKPT_STATUS_OK) {
            w->failed = 1;
            return NULL;
        }
    }
    return NULL;
}

/* Check the disk at `path` (a checkpoint's) against [lo, hi] per unit. */
static void check_frozen(const char *path, unsigned disk, const uint64_t *lo, const uint64_t *hi) {
    ckpt_disk *d = NULL;
    EXPECT_OK(ckpt_disk_open(path, CKPT_OPEN_READ_ONLY, &d));
    if (d == NULL) {
        return;
    }
    uint8_t buf[UNIT];
    for (unsigned u = 0; u < UNITS; u++) {
        EXPECT_OK(ckpt_disk_read(d, buf, UNIT, (uint64_t)u * STRIDE));
        int64_t r = unit_round(buf, disk, u);
        CHECK(r >= 0 && (uint64_t)r >= lo[u] && (uint64_t)r <= hi[u]);
    }
    EXPECT_OK(ckpt_disk_close(d));
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    char d0[1024], d1[1024], vmdir[1024];
    snprintf(d0, sizeof d0, "%s/live0.vhdx", argv[1]);
    snprintf(d1, sizeof d1, "%s/live1.vhdx", argv[1]);
    snprintf(vmdir, sizeof vmdir, "%s/vm", argv[1]);
    make_disk(d0);
    make_disk(d1);

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
    static struct writer w[2];
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
        w[i].index = i;
        atomic_init(&w[i].stop, false);
        for (unsigned u = 0; u < UNITS; u++) {
            atomic_init(&w[i].started[u], 0);
            atomic_init(&w[i].done[u], 0);
        }
        CHECK(pthread_create(&t[i], NULL, write_loop, &w[i]) == 0);
    }

    static uint64_t lo[CHECKPOINTS][2][UNITS], hi[CHECKPOINTS][2][UNITS];
    for (int k = 0; k < CHECKPOINTS; k++) {
        /* let the writers get through a few rounds */
        while (atomic_load(&w[0].done[UNITS - 1]) < (uint64_t)(2 * k + 2) ||
               atomic_load(&w[1].done[UNITS - 1]) < (uint64_t)(2 * k + 2)) {
            if (w[0].failed || w[1].failed) {
                break;
            }
        }
        for (unsigned i = 0; i < 2; i++) {
            for (unsigned u = 0; u < UNITS; u++) {
                lo[k][i][u] = atomic_load(&w[i].done[u]);
            }
        }
        char name[16];
        snprintf(name, sizeof name, "c%d", k);
        EXPECT_OK(ckpt_vm_checkpoint_create(vm, name, NULL));
        for (unsigned i = 0; i < 2; i++) {
            for (unsigned u = 0; u < UNITS; u++) {
                hi[k][i][u] = atomic_load(&w[i].started[u]);
            }
        }
    }
    /* The current state exported while the writers write: one instant,
     * through a temporary checkpoint merged back afterwards. */
    static uint64_t elo[2][UNITS], ehi[2][UNITS];
    for (unsigned i = 0; i < 2; i++) {
        for (unsigned u = 0; u < UNITS; u++) {
            elo[i][u] = atomic_load(&w[i].done[u]);
        }
    }
    char exportdir[1024];
    snprintf(exportdir, sizeof exportdir, "%s/export-now", argv[1]);
    EXPECT_OK(ckpt_vm_checkpoint_export(vm, NULL, exportdir, NULL));
    for (unsigned i = 0; i < 2; i++) {
        for (unsigned u = 0; u < UNITS; u++) {
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
        check_frozen(path, i, elo[i], ehi[i]);
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
            check_frozen(path, i, lo[k][i], hi[k][i]);
        }
    }
    /* The current state, through the same handles: every last write. */
    for (unsigned i = 0; i < 2; i++) {
        uint8_t buf[UNIT];
        for (unsigned u = 0; u < UNITS; u++) {
            EXPECT_OK(ckpt_disk_read(w[i].disk, buf, UNIT, (uint64_t)u * STRIDE));
            int64_t r = unit_round(buf, i, u);
            CHECK(r >= 0 && (uint64_t)r == atomic_load(&w[i].done[u]));
        }
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
            uint8_t buf[UNIT];
            for (unsigned u = 0; u < UNITS; u++) {
                EXPECT_OK(ckpt_disk_read(d, buf, UNIT, (uint64_t)u * STRIDE));
                int64_t r = unit_round(buf, i, u);
                CHECK(r >= 0 && (uint64_t)r == atomic_load(&w[i].done[u]));
            }
        }
        EXPECT_OK(ckpt_vm_close(vm));
    }
    return check_finish("test_vm_live");
}
