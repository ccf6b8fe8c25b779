/* Encrypted vaults through the C ABI: made with a passphrase or a key file,
 * opened with the right key only (VMB_ERR_KEY_REQUIRED without one,
 * VMB_ERR_WRONG_KEY with another), a round trip restored bit for bit, and
 * tampering (a changed manifest; a changed chunk with its crc32 forged)
 * reported as VMB_ERR_TAMPERED and by verify; vmb_vault_options and key
 * slots added and removed; packs in the page cache only with buffered_io.
 *
 * Built with: cc -std=c11 -Wall -Wextra -Werror encryption.c $(pkg-config --cflags --libs vmbackup) */
#define _XOPEN_SOURCE 700

#include <dirent.h>

#include "check.h"
#include "util.h"

#define MiB (1024u * 1024u)
#define IMG_SIZE (MiB + 4096u)

static char *g_dir;
static char *g_image;
static uint8_t *g_data;

/* Cheap Argon2id for tests (64 KiB, one pass): the default is 64 MiB. */
static vmb_key passphrase_key(const char *p) {
    vmb_key k;
    memset(&k, 0, sizeof k);
    k.passphrase = p;
    k.kdf_memory_kib = 64;
    k.kdf_iterations = 1;
    return k;
}

/* Writes a key file of 40 bytes from `seed` in the test folder; returns
 * its path (the caller frees it), or NULL. */
static char *make_key_file(const char *name, unsigned seed) {
    char *path = join(g_dir, name);
    uint8_t secret[40];
    fill_pattern(secret, sizeof secret, seed);
    if (path == NULL || write_file(path, secret, sizeof secret) != 0) {
        free(path);
        return NULL;
    }
    return path;
}

/* A vmb_key for a key file. */
static vmb_key file_key(const char *path) {
    vmb_key k;
    memset(&k, 0, sizeof k);
    k.key_file = path;
    return k;
}

/* CRC-32 (IEEE), as the pack format's frame checksum. */
static uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n) {
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int b = 0; b < 8; b++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

/* The path of the vault's one pack (the caller frees it), or NULL. */
static char *first_pack(const char *vault) {
    char *dir = join(vault, "packs");
    DIR *d = opendir(dir);
    char *found = NULL;
    struct dirent *e;
    while (d != NULL && found == NULL && (e = readdir(d)) != NULL) {
        if (strstr(e->d_name, ".pack") != NULL) found = join(dir, e->d_name);
    }
    if (d != NULL) closedir(d);
    free(dir);
    return found;
}

/* Restores the point's disk to `name` in the test folder and checks it is
 * the image, bit for bit. */
static void restores_the_image(vmb_vault *v, vmb_point *p, const char *name) {
    char *out = join(g_dir, name);
    REQUIRE_OK(vmb_vault_restore_disk_to_file(v, p, "root.img", out, NULL, NULL));
    size_t len = 0;
    uint8_t *back = read_file(out, &len);
    CHECK(back != NULL && len == IMG_SIZE && memcmp(back, g_data, IMG_SIZE) == 0);
    free(back);
    free(out);
}

static void setup(void) {
    g_image = join(g_dir, "root.img");
    g_data = (uint8_t *)malloc(IMG_SIZE);
    REQUIRE(g_image != NULL && g_data != NULL);
    fill_pattern(g_data, IMG_SIZE, 7);
    REQUIRE(write_file(g_image, g_data, IMG_SIZE) == 0);
}

static void passphrase_round_trip_and_wrong_keys(void) {
    char *path = join(g_dir, "vault");
    vmb_vault *v = NULL;
    vmb_point *p = NULL;
    vmb_key key = passphrase_key("open sesame");
    const char *images[] = {g_image};
    REQUIRE_OK(vmb_vault_init_with_key(path, &key, &v));
    REQUIRE_OK(vmb_vault_backup_images(v, "web", images, 1, NULL, &p));
    vmb_point_free(p);
    vmb_vault_free(v);

    vmb_vault *sentinel = (vmb_vault *)&g_passed;
    v = sentinel;
    REQUIRE_STATUS(vmb_vault_open(path, &v), VMB_ERR_KEY_REQUIRED);
    CHECK(v == sentinel);
    CHECK(LAST_ERROR_HAS("is encrypted"));
    vmb_key wrong = passphrase_key("open sesame!");
    REQUIRE_STATUS(vmb_vault_open_with_key(path, &wrong, &v), VMB_ERR_WRONG_KEY);
    CHECK(LAST_ERROR_HAS("wrong passphrase"));
    vmb_key neither;
    memset(&neither, 0, sizeof neither);
    REQUIRE_STATUS(vmb_vault_open_with_key(path, &neither, &v), VMB_ERR_INVALID_ARGUMENT);
    CHECK(v == sentinel);

    REQUIRE_OK(vmb_vault_open_with_key(path, &key, &v));
    REQUIRE_OK(vmb_vault_find_point(v, "web", "latest", &p));
    restores_the_image(v, p, "restored.img");
    vmb_verify_report *r = NULL;
    bool ok = false;
    REQUIRE_OK(vmb_vault_verify(v, NULL, NULL, NULL, &r));
    REQUIRE_OK(vmb_verify_report_ok(r, &ok));
    CHECK(ok);
    vmb_verify_report_free(r);

    /* A manifest with one byte changed is tampered. */
    const char *id = NULL;
    REQUIRE_OK(vmb_point_id(p, &id));
    char *points = join(path, "points/web");
    char *manifest = join(points, id);
    size_t mlen = 0;
    uint8_t *m = read_file(manifest, &mlen);
    REQUIRE(m != NULL && mlen > 100);
    m[mlen / 2] ^= 1;
    CHECK(write_file(manifest, m, mlen) == 0);
    vmb_point *q = NULL;
    CHECK(vmb_vault_find_point(v, "web", id, &q) == VMB_ERR_TAMPERED);
    CHECK(LAST_ERROR_HAS("tampered manifest"));
    m[mlen / 2] ^= 1;
    CHECK(write_file(manifest, m, mlen) == 0);
    free(m);
    free(manifest);
    free(points);

    /* A chunk with one byte changed and its frame's crc32 forged: verify
     * reports it as tampered. */
    char *pack = first_pack(path);
    REQUIRE(pack != NULL);
    size_t plen = 0;
    uint8_t *b = read_file(pack, &plen);
    REQUIRE(b != NULL && plen > 16 + 52 + 200);
    uint8_t *frame = b + 16; /* the first frame, after the pack header */
    uint32_t stored = (uint32_t)frame[12] | (uint32_t)frame[13] << 8 | (uint32_t)frame[14] << 16 |
                      (uint32_t)frame[15] << 24;
    REQUIRE(16u + 52u + stored <= plen);
    frame[52 + stored / 2] ^= 0x40;
    uint32_t crc = crc32_update(0, frame, 16);
    crc = crc32_update(crc, frame + 20, 32 + stored);
    for (int i = 0; i < 4; i++) frame[16 + i] = (uint8_t)(crc >> (8 * i));
    CHECK(write_file(pack, b, plen) == 0);
    free(b);
    free(pack);
    REQUIRE_OK(vmb_vault_verify(v, NULL, NULL, NULL, &r));
    REQUIRE_OK(vmb_verify_report_ok(r, &ok));
    CHECK(!ok);
    size_t n = 0, tampered = 0;
    REQUIRE_OK(vmb_verify_report_problem_count(r, &n));
    for (size_t i = 0; i < n; i++) {
        const char *what = NULL;
        if (vmb_verify_report_problem(r, i, &what) == VMB_OK && strstr(what, "fails authentication") != NULL)
            tampered++;
    }
    CHECK(tampered > 0);
    vmb_verify_report_free(r);
    vmb_point_free(p);
    vmb_vault_free(v);
    free(path);
}

static void key_file_vault(void) {
    char *path = join(g_dir, "vault-kf");
    char *kf = make_key_file("vault.key", 99);
    REQUIRE(kf != NULL);
    vmb_key key = file_key(kf);
    vmb_vault *v = NULL;
    const char *images[] = {g_image};
    REQUIRE_OK(vmb_vault_init_with_key(path, &key, &v));
    REQUIRE_OK(vmb_vault_backup_images(v, "web", images, 1, NULL, NULL));
    vmb_vault_free(v);
    v = NULL;
    REQUIRE_OK(vmb_vault_open_with_key(path, &key, &v));
    vmb_vault_free(v);
    v = NULL;
    vmb_key pass = passphrase_key("not the key file");
    REQUIRE_STATUS(vmb_vault_open_with_key(path, &pass, &v), VMB_ERR_WRONG_KEY);
    CHECK(LAST_ERROR_HAS("no passphrase key slot"));
    free(kf);
    free(path);
}

/* Bytes of a vault's packs in the page cache, from `fincore` (its own
 * process: valgrind reads the head of every file this process maps, so
 * mincore here would see valgrind's reads); (size_t)-1 on error. */
static size_t cached_pack_bytes(const char *vault) {
    char cmd[4096];
    int n = snprintf(cmd, sizeof cmd,
                     "find '%s/packs' -name '*.pack' -exec fincore --bytes --noheadings --raw --output RES {} +",
                     vault);
    if (n < 0 || (size_t)n >= sizeof cmd) return (size_t)-1;
    FILE *p = popen(cmd, "r");
    if (p == NULL) return (size_t)-1;
    size_t total = 0;
    unsigned long long res = 0;
    while (fscanf(p, "%llu", &res) == 1) total += (size_t)res;
    return pclose(p) == 0 ? total : (size_t)-1;
}

/* vmb_vault_options (key, lock timeout, page-cache use) and key slots
 * managed through the ABI: packs are written around the page cache unless
 * buffered_io; a key file added opens the vault, the passphrase's slot
 * removed no longer does, the last slot stays. */
static void options_and_key_slots(void) {
    char *path = join(g_dir, "vault-opts");
    char *kf = make_key_file("second.key", 5);
    REQUIRE(kf != NULL);
    vmb_key pass = passphrase_key("first key");
    vmb_vault_options o;
    memset(&o, 0, sizeof o);
    o.key = &pass;
    o.lock_timeout_seconds = 5;
    o.direct_io = true;
    vmb_vault *v = NULL;
    const char *images[] = {g_image};
    REQUIRE_OK(vmb_vault_init_with_options(path, &o, &v));
    REQUIRE_OK(vmb_vault_backup_images(v, "web", images, 1, NULL, NULL));
    CHECK(cached_pack_bytes(path) == 0);

    size_t n = 0;
    REQUIRE_OK(vmb_vault_key_slot_count(v, &n));
    CHECK(n == 1);
    char first[VMB_SLOT_ID_LEN], second[VMB_SLOT_ID_LEN], got[VMB_SLOT_ID_LEN];
    vmb_slot_kind kind = VMB_SLOT_KEY_FILE;
    REQUIRE_OK(vmb_vault_key_slot(v, 0, first, &kind));
    CHECK(strlen(first) == 8 && kind == VMB_SLOT_PASSPHRASE);
    CHECK(vmb_vault_key_slot(v, 1, got, NULL) == VMB_ERR_INVALID_ARGUMENT);
    vmb_key by_file = file_key(kf);
    REQUIRE_OK(vmb_vault_add_key(v, &by_file, second));
    REQUIRE_OK(vmb_vault_key_slot_count(v, &n));
    CHECK(n == 2);
    REQUIRE_OK(vmb_vault_key_slot(v, 1, got, &kind));
    CHECK(strcmp(got, second) == 0 && kind == VMB_SLOT_KEY_FILE);
    CHECK(vmb_vault_remove_key(v, "00000000") == VMB_ERR_NOT_FOUND);
    vmb_vault_free(v);

    /* The key file opens it; the passphrase's slot goes; the last stays.
     * This handle writes its packs through the page cache (a field
     * appended after 0.1, so the size is given). */
    o.struct_size = sizeof o;
    o.key = &by_file;
    o.direct_io = false;
    o.buffered_io = true;
    v = NULL;
    REQUIRE_OK(vmb_vault_open_with_options(path, &o, &v));
    fill_pattern(g_data, IMG_SIZE, 99);
    REQUIRE(write_file(g_image, g_data, IMG_SIZE) == 0);
    REQUIRE_OK(vmb_vault_backup_images(v, "web", images, 1, NULL, NULL));
    size_t cached = cached_pack_bytes(path);
    CHECK(cached > 0 && cached != (size_t)-1);
    vmb_point *p = NULL;
    REQUIRE_OK(vmb_vault_find_point(v, "web", "latest", &p));
    restores_the_image(v, p, "opts-restored.img");
    vmb_point_free(p);
    REQUIRE_OK(vmb_vault_remove_key(v, first));
    CHECK(vmb_vault_remove_key(v, second) == VMB_ERR_INVALID_ARGUMENT);
    CHECK(LAST_ERROR_HAS("last key slot"));
    vmb_vault_free(v);
    o.key = &pass;
    v = NULL;
    REQUIRE_STATUS(vmb_vault_open_with_options(path, &o, &v), VMB_ERR_WRONG_KEY);
    o.lock_timeout_seconds = -1;
    REQUIRE_STATUS(vmb_vault_open_with_options(path, &o, &v), VMB_ERR_INVALID_ARGUMENT);
    free(kf);
    free(path);
}

int main(void) {
    g_dir = make_temp_dir("encryption-c");
    if (g_dir == NULL) {
        perror("mkdtemp");
        return 2;
    }
    RUN(setup);
    RUN(passphrase_round_trip_and_wrong_keys);
    RUN(key_file_vault);
    RUN(options_and_key_slots);
    remove_tree(g_dir);
    free(g_dir);
    free(g_image);
    free(g_data);
    return SUMMARY("encryption.c");
}
