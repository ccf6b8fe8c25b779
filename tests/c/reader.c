/* Random access to a point from C: vmb_disk_reader_open, _size, _pread and
 * _close read what a restore of the same point writes, at random offsets
 * and lengths (across blocks, holes and the end of the disk); the reader
 * outlives the vault handle; bad arguments and damaged data are errors
 * naming what and where, never data.
 *
 * Built with: cc -std=c11 -Wall -Wextra -Werror reader.c $(pkg-config --cflags --libs vmbackup) */
#define _XOPEN_SOURCE 700

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>

#include "check.h"
#include "util.h"

#define KiB 1024u
#define MiB (1024u * KiB)
/* Not a multiple of the block size: the last block is short. */
#define IMG_SIZE (3 * MiB + 12345u)

static char *g_dir;
static char *g_image;
static char *g_vault_path;
static uint8_t *g_data;

/* A small deterministic generator, so that a failure can be replayed. */
static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static uint64_t next_random(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}

static void setup(void) {
    g_image = join(g_dir, "root.img");
    g_vault_path = join(g_dir, "vault");
    g_data = (uint8_t *)calloc(1, IMG_SIZE);
    REQUIRE(g_image != NULL && g_vault_path != NULL && g_data != NULL);
    /* Data, then a MiB of zeros (holes), then data to the end. */
    fill_pattern(g_data, MiB, 1);
    fill_pattern(g_data + 2 * MiB, IMG_SIZE - 2 * MiB, 2);
    REQUIRE(write_file(g_image, g_data, IMG_SIZE) == 0);
    vmb_vault *v = NULL;
    vmb_point *p = NULL;
    const char *images[] = {g_image};
    REQUIRE_OK(vmb_vault_init(g_vault_path, &v));
    REQUIRE_OK(vmb_vault_backup_images(v, "web", images, 1, NULL, &p));
    vmb_point_free(p);
    /* A second point, with a change across a block boundary. */
    fill_pattern(g_data + MiB - 1000, 5000, 3);
    REQUIRE(write_file(g_image, g_data, IMG_SIZE) == 0);
    REQUIRE_OK(vmb_vault_backup_images(v, "web", images, 1, NULL, &p));
    vmb_point_free(p);
    vmb_vault_free(v);
}

static void random_reads_match_the_restore(void) {
    vmb_vault *v = NULL;
    vmb_point *p = NULL;
    vmb_disk_reader *r = NULL;
    REQUIRE_OK(vmb_vault_open(g_vault_path, &v));
    REQUIRE_OK(vmb_vault_find_point(v, "web", "latest", &p));
    char *restored = join(g_dir, "restored.img");
    REQUIRE_OK(vmb_vault_restore_disk_to_file(v, p, "root.img", restored, NULL, NULL));
    size_t len = 0;
    uint8_t *want = read_file(restored, &len);
    REQUIRE(want != NULL && len == IMG_SIZE);
    CHECK(memcmp(want, g_data, IMG_SIZE) == 0);

    REQUIRE_OK(vmb_disk_reader_open(v, p, "root.img", &r));
    /* The reader keeps the vault open: the handles may go first. */
    vmb_point_free(p);
    vmb_vault_free(v);
    CHECK(vmb_disk_reader_size(r) == IMG_SIZE);
    uint8_t *buf = (uint8_t *)malloc(MiB);
    REQUIRE(buf != NULL);
    int mismatches = 0;
    for (int i = 0; i < 300; i++) {
        uint64_t off = next_random() % IMG_SIZE;
        size_t n = 1 + (size_t)(next_random() % (i % 3 == 0 ? MiB : 9000u));
        size_t got = 0;
        REQUIRE_OK(vmb_disk_reader_pread(r, buf, n, off, &got));
        size_t expect = off + n > IMG_SIZE ? (size_t)(IMG_SIZE - off) : n;
        if (got != expect || memcmp(buf, want + off, got) != 0) {
            if (mismatches++ < 3) fprintf(stderr, "  read of %zu at %llu differs\n", n, (unsigned long long)off);
        }
    }
    CHECK(mismatches == 0);
    /* At the end: short, then nothing. */
    size_t got = 99;
    REQUIRE_OK(vmb_disk_reader_pread(r, buf, 4096, IMG_SIZE - 100, &got));
    CHECK(got == 100 && memcmp(buf, want + IMG_SIZE - 100, 100) == 0);
    REQUIRE_OK(vmb_disk_reader_pread(r, buf, 4096, IMG_SIZE, &got));
    CHECK(got == 0);
    REQUIRE_OK(vmb_disk_reader_pread(r, buf, 4096, UINT64_MAX, &got));
    CHECK(got == 0);
    REQUIRE_OK(vmb_disk_reader_pread(r, NULL, 0, 0, &got));
    CHECK(got == 0);
    REQUIRE_STATUS(vmb_disk_reader_pread(r, NULL, 10, 0, &got), VMB_ERR_NULL_ARGUMENT);
    REQUIRE_STATUS(vmb_disk_reader_pread(r, buf, 10, 0, NULL), VMB_ERR_NULL_ARGUMENT);
    REQUIRE_STATUS(vmb_disk_reader_pread(NULL, buf, 10, 0, &got), VMB_ERR_NULL_ARGUMENT);
    CHECK(vmb_disk_reader_size(NULL) == 0);
    vmb_disk_reader_close(r);
    vmb_disk_reader_close(NULL);
    free(buf);
    free(want);
    free(restored);
}

static void unknown_disks_and_damage(void) {
    vmb_vault *v = NULL;
    vmb_point *p = NULL;
    vmb_disk_reader *r = NULL;
    REQUIRE_OK(vmb_vault_open(g_vault_path, &v));
    REQUIRE_OK(vmb_vault_find_point(v, "web", "latest", &p));
    REQUIRE_STATUS(vmb_disk_reader_open(v, p, "swap.img", &r), VMB_ERR_NOT_FOUND);
    CHECK(LAST_ERROR_HAS("swap.img"));
    CHECK(r == NULL);
    REQUIRE_STATUS(vmb_disk_reader_open(v, p, "0", &r), VMB_ERR_NOT_FOUND);
    REQUIRE_STATUS(vmb_disk_reader_open(v, p, "root.img", NULL), VMB_ERR_NULL_ARGUMENT);
    REQUIRE_STATUS(vmb_disk_reader_open(NULL, p, "root.img", &r), VMB_ERR_NULL_ARGUMENT);

    /* Damage the middle of every pack: some read of the whole disk fails,
     * as corrupt, naming the disk and the bytes. */
    char *packs = join(g_vault_path, "packs");
    DIR *d = opendir(packs);
    REQUIRE(d != NULL);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strstr(e->d_name, ".pack") == NULL) continue;
        char *pack = join(packs, e->d_name);
        size_t plen = 0;
        uint8_t *bytes = read_file(pack, &plen);
        if (bytes != NULL && plen > 0) {
            for (size_t i = plen / 2; i < plen / 2 + 16 && i < plen; i++) bytes[i] ^= 0x5a;
            CHECK(write_file(pack, bytes, plen) == 0);
        }
        free(bytes);
        free(pack);
    }
    closedir(d);
    free(packs);
    REQUIRE_OK(vmb_disk_reader_open(v, p, "root.img", &r));
    uint8_t *buf = (uint8_t *)malloc(MiB);
    REQUIRE(buf != NULL);
    vmb_status worst = VMB_OK;
    for (uint64_t off = 0; off < IMG_SIZE && worst == VMB_OK; off += MiB) {
        size_t got = 0;
        worst = vmb_disk_reader_pread(r, buf, MiB, off, &got);
    }
    CHECK(worst == VMB_ERR_CORRUPT);
    CHECK(LAST_ERROR_HAS("disk root.img of point") && LAST_ERROR_HAS("bytes "));
    vmb_disk_reader_close(r);
    free(buf);
    vmb_point_free(p);
    vmb_vault_free(v);
}

int main(void) {
    g_dir = make_temp_dir("reader-c");
    if (g_dir == NULL) {
        perror("mkdtemp");
        return 2;
    }
    RUN(setup);
    RUN(random_reads_match_the_restore);
    RUN(unknown_disks_and_damage);
    remove_tree(g_dir);
    free(g_dir);
    free(g_image);
    free(g_vault_path);
    free(g_data);
    return SUMMARY("reader.c");
}
