/*
 * libckpt from C, as a hypervisor uses it: a VM on one disk, a production
 * checkpoint (the guest is quiesced through a callback), a standard one
 * (its memory state streamed through a callback), the tree walked without
 * JSON, the tree as JSON, and an apply that goes back in time.
 *
 * Build (from the repository root, after `cargo build --lib`):
 *
 *     cc -std=c11 -Wall -Wextra -pedantic -Iinclude examples/c/checkpoints.c \
 *        target/debug/libckpt.a -lpthread -ldl -lm -o checkpoints
 *     ./checkpoints /tmp/checkpoints-demo     (an empty or missing folder)
 */
#define _POSIX_C_SOURCE 200809L

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "libckpt.h"

static int fail(const char *what, ckpt_status status) {
    char msg[1024];
    if (ckpt_last_error(msg, sizeof msg, NULL) != CKPT_STATUS_OK) {
        msg[0] = '\0';
    }
    fprintf(stderr, "%s failed: %s: %s\n", what, ckpt_status_name(status), msg);
    return EXIT_FAILURE;
}

#define TRY(call)                                                                                  \
    do {                                                                                           \
        ckpt_status s_ = (call);                                                                   \
        if (s_ != CKPT_STATUS_OK) {                                                                \
            return fail(#call, s_);                                                                \
        }                                                                                          \
    } while (0)

/* The hypervisor's side: a guest agent and the VM's memory. */
static int quiesce(void *user) {
    printf("  quiesce: guest %s flushes and freezes its file systems\n", (const char *)user);
    return 0;
}

static void thaw(void *user) {
    printf("  thaw: guest %s runs on\n", (const char *)user);
}

static int save_memory(ckpt_writer *w, void *user) {
    static const char memory[] = "pretend this is 2 GiB of guest memory";
    (void)user;
    return ckpt_writer_write(w, (const uint8_t *)memory, sizeof memory) == CKPT_STATUS_OK ? 0 : 2;
}

/* Write `text` at the start of the disk file the VM writes to now. */
static ckpt_status guest_writes(ckpt_vm *vm, const char *text) {
    char path[4096];
    ckpt_status s = ckpt_vm_current_disk_path(vm, 0, path, sizeof path, NULL);
    ckpt_disk *disk = NULL;
    if (s == CKPT_STATUS_OK) {
        s = ckpt_disk_open(path, CKPT_OPEN_READ_WRITE, &disk);
    }
    if (s == CKPT_STATUS_OK) {
        s = ckpt_disk_write(disk, (const uint8_t *)text, strlen(text) + 1, 0);
        ckpt_status c = ckpt_disk_close(disk);
        s = s != CKPT_STATUS_OK ? s : c;
    }
    return s;
}

static ckpt_status guest_reads(ckpt_vm *vm, char *buf, size_t len) {
    char path[4096];
    ckpt_status s = ckpt_vm_current_disk_path(vm, 0, path, sizeof path, NULL);
    ckpt_disk *disk = NULL;
    if (s == CKPT_STATUS_OK) {
        s = ckpt_disk_open(path, CKPT_OPEN_READ_ONLY, &disk);
    }
    if (s == CKPT_STATUS_OK) {
        s = ckpt_disk_read(disk, (uint8_t *)buf, len, 0);
        ckpt_disk_close(disk);
        buf[len - 1] = '\0';
    }
    return s;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "checkpoints-demo";
    char disk_path[4096], vm_dir[4096];
    mkdir(dir, 0755);
    snprintf(disk_path, sizeof disk_path, "%s/os.vhdx", dir);
    snprintf(vm_dir, sizeof vm_dir, "%s/vm", dir);

    /* The VM's disk: a 64 MiB dynamic VHDX. */
    ckpt_disk *disk = NULL;
    TRY(ckpt_disk_create(disk_path, 64u << 20, NULL, &disk));
    TRY(ckpt_disk_close(disk));

    /* The VM: zero the spec, set its size, fill in what is not default. */
    const char *disks[] = {disk_path};
    ckpt_vm_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.struct_size = sizeof spec;
    spec.name = "demo";
    spec.disks = disks;
    spec.disk_count = 1;
    spec.memory_mib = 2048;
    spec.cpus = 2;
    ckpt_vm *vm = NULL;
    TRY(ckpt_vm_create(vm_dir, &spec, &vm));

    /* The callbacks, with the guest's name as user data. */
    char guest[] = "demo";
    ckpt_hooks hooks;
    memset(&hooks, 0, sizeof hooks);
    hooks.struct_size = sizeof hooks;
    hooks.quiesce = quiesce;
    hooks.thaw = thaw;
    hooks.save_memory = save_memory;
    hooks.user = guest;

    /* The guest runs (the hypervisor tells the library); an off VM would
     * have nothing to quiesce. */
    TRY(ckpt_vm_set_state(vm, CKPT_VM_STATE_RUNNING));
    TRY(guest_writes(vm, "installed"));
    printf("checkpoint \"clean install\" (production):\n");
    TRY(ckpt_vm_checkpoint_create(vm, "clean install", &hooks));

    TRY(guest_writes(vm, "upgraded"));
    TRY(ckpt_vm_set_checkpoint_type(vm, CKPT_CHECKPOINT_TYPE_STANDARD));
    printf("checkpoint \"after upgrade\" (standard):\n");
    TRY(ckpt_vm_checkpoint_create(vm, "after upgrade", &hooks));
    TRY(guest_writes(vm, "broken"));

    /* Walk the tree. */
    size_t count = 0;
    TRY(ckpt_vm_checkpoint_count(vm, &count));
    for (size_t i = 0; i < count; i++) {
        ckpt_checkpoint_info info;
        memset(&info, 0, sizeof info);
        info.struct_size = sizeof info;
        TRY(ckpt_vm_checkpoint_get(vm, i, &info));
        char name[256];
        TRY(ckpt_vm_checkpoint_name(vm, i, name, sizeof name, NULL));
        printf("checkpoint %zu: \"%s\", %s, parent %" PRId64 ", %s memory state%s\n", i, name,
               info.taken == CKPT_TAKEN_TYPE_PRODUCTION ? "production" : "standard",
               info.parent_index, info.has_saved_state ? "with" : "no",
               info.is_current_parent ? " (the VM runs on it)" : "");
    }

    /* The same as JSON: ask for the size, then fill. The library keeps the
     * text it measured for the next call, so the size suffices; the loop
     * also copes with a VM changed in between (grow and ask again). */
    size_t len = 0;
    char *json = NULL;
    ckpt_status s = ckpt_vm_checkpoints_json(vm, NULL, 0, &len);
    while (s == CKPT_STATUS_BUFFER_TOO_SMALL) {
        char *bigger = realloc(json, len + 1);
        if (bigger == NULL) {
            free(json);
            return EXIT_FAILURE;
        }
        json = bigger;
        s = ckpt_vm_checkpoints_json(vm, json, len + 1, &len);
    }
    if (s != CKPT_STATUS_OK) {
        free(json);
        return fail("ckpt_vm_checkpoints_json", s);
    }
    printf("as JSON: %zu bytes\n", len);
    free(json);

    /* Back to before the upgrade; the broken state is discarded. */
    /* A running VM's state cannot be replaced: stop it first. */
    TRY(ckpt_vm_set_state(vm, CKPT_VM_STATE_OFF));
    TRY(ckpt_vm_checkpoint_apply(vm, "clean install", NULL, &hooks));
    char content[32];
    TRY(guest_reads(vm, content, sizeof content));
    printf("after apply: the disk says \"%s\"\n", content);

    return ckpt_vm_close(vm) == CKPT_STATUS_OK ? EXIT_SUCCESS : EXIT_FAILURE;
}
