/*
 * Every pointer argument of the C API given NULL: a status, never a crash,
 * and out-parameters left alone.
 *
 * Usage: test_null_args DIR (a scratch directory)
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "check.h"

static ckpt_disk *const SENTINEL = (ckpt_disk *)(uintptr_t)0x5a5a;

static int file_exists(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f != NULL) {
        fclose(f);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    char path[4096];
    snprintf(path, sizeof path, "%s/never.vhdx", dir);

    ckpt_disk *disk = SENTINEL;
    uint8_t buf[16];
    memset(buf, 0xA5, sizeof buf);

    /* create */
    EXPECT_STATUS(ckpt_disk_create(NULL, 1 << 20, NULL, &disk), CKPT_STATUS_NULL_POINTER);
    CHECK(disk == SENTINEL);
    CHECK(strstr(last_error_text(), "path") != NULL);
    EXPECT_STATUS(ckpt_disk_create(path, 1 << 20, NULL, NULL), CKPT_STATUS_NULL_POINTER);
    CHECK(strstr(last_error_text(), "out") != NULL);
    CHECK(!file_exists(path)); /* nothing is done when an argument is bad */

    /* open */
    EXPECT_STATUS(ckpt_disk_open(NULL, CKPT_OPEN_READ_ONLY, &disk), CKPT_STATUS_NULL_POINTER);
    CHECK(disk == SENTINEL);
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

    return check_finish("test_null_args");
}
