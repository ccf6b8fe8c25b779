/* Instant-restore tiers from C on a real reflink file system: an XFS image,
 * loop-mounted (root), holds the VM's disk image. A backup whose job keeps
 * its snapshot for 2 days leaves the image's reflink clone beside it; the
 * point is in the snapshot and vault tiers, restores from the clone while
 * the VM writes on, is kept by a release before its expiry and released
 * at it, and then has the vault tier only.
 *
 * Built with: cc -std=c11 -Wall -Wextra -Werror tiers.c $(pkg-config --cflags --libs vmbackup) */
#define _XOPEN_SOURCE 700

#include <dirent.h>

#include "check.h"
#include "util.h"

#define MiB (1024u * 1024u)

static char *g_dir;
static char *g_xfs;
static int g_mounted;
static char g_cmd[4096];

static int sh(const char *fmt, const char *a, const char *b) {
    snprintf(g_cmd, sizeof g_cmd, fmt, a, b);
    return system(g_cmd);
}

static void mount_a_reflink_xfs(void) {
    if (geteuid() != 0) fprintf(stderr, "not root: a loop-mounted XFS needs it\n");
    REQUIRE(geteuid() == 0);
    char *image = join(g_dir, "xfs.img");
    g_xfs = join(g_dir, "xfs");
    REQUIRE(mkdir(g_xfs, 0755) == 0);
    REQUIRE(sh("truncate -s 300M %s && mkfs.xfs -q -f -m reflink=1 %s", image, image) == 0);
    REQUIRE(sh("mount -o loop %s %s", image, g_xfs) == 0);
    g_mounted = 1;
    free(image);
}

/* The number of files in the mount that are vmbackup's snapshot clones. */
static int clones(void) {
    DIR *d = opendir(g_xfs);
    if (d == NULL) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strstr(e->d_name, "vmbackup-snap") != NULL) n++;
    }
    closedir(d);
    return n;
}

static int file_equals(const char *path, const uint8_t *want, size_t len) {
    size_t got_len = 0;
    uint8_t *got = read_file(path, &got_len);
    int same = got != NULL && got_len == len && memcmp(got, want, len) == 0;
    free(got);
    return same;
}

static void a_kept_snapshot_is_a_tier_restored_from_and_released(void) {
    REQUIRE(g_mounted);
    const size_t size = 8 * MiB;
    uint8_t *first = malloc(size), *second = malloc(size);
    REQUIRE(first != NULL && second != NULL);
    fill_pattern(first, size, 1);
    fill_pattern(second, size, 2);
    char *disk = join(g_xfs, "root.img");
    char *vault_path = join(g_xfs, "vault");
    char *from_snapshot = join(g_xfs, "from-snapshot.img");
    char *again = join(g_xfs, "again.img");
    REQUIRE(write_file(disk, first, size) == 0);

    vmb_vault *v = NULL;
    vmb_job *job = NULL;
    vmb_point *pt = NULL;
    REQUIRE_OK(vmb_vault_init(vault_path, &v));
    REQUIRE_OK(vmb_job_new(&job));
    CHECK(vmb_job_set_instant_restore_days(job, 31) == VMB_ERR_INVALID_ARGUMENT);
    CHECK(LAST_ERROR_HAS("instant restore days"));
    REQUIRE_OK(vmb_job_set_instant_restore_days(job, 2));
    const char *images[] = {disk};
    REQUIRE_OK(vmb_vault_backup_images(v, "web", images, 1, job, &pt));
    uint32_t tiers = 0;
    REQUIRE_OK(vmb_vault_point_tiers(v, pt, &tiers));
    CHECK(tiers == (VMB_TIER_SNAPSHOT | VMB_TIER_VAULT));
    CHECK(clones() == 1);

    /* The VM writes on; the snapshot tier still holds the point. */
    REQUIRE(write_file(disk, second, size) == 0);
    bool restored = false;
    vmb_restore_stats st = {0};
    const char *name = NULL;
    REQUIRE_OK(vmb_point_disk_name(pt, 0, &name));
    REQUIRE_OK(vmb_vault_restore_disk_from_snapshot(v, pt, name, from_snapshot, NULL, &st, &restored));
    CHECK(restored);
    CHECK(st.size == size);
    CHECK(file_equals(from_snapshot, first, size));

    /* Before its expiry a release keeps it; at its expiry it goes. */
    int64_t taken = 0;
    REQUIRE_OK(vmb_point_time(pt, &taken));
    vmb_release_report *r = NULL;
    size_t n = 99;
    REQUIRE_OK(vmb_vault_release_expired_at(v, NULL, taken, &r));
    REQUIRE_OK(vmb_release_report_released_count(r, &n));
    CHECK(n == 0);
    REQUIRE_OK(vmb_release_report_kept_count(r, &n));
    CHECK(n == 1);
    const char *vm = NULL, *id = NULL, *why = NULL, *point_id = NULL;
    int64_t expires = 0;
    REQUIRE_OK(vmb_point_id(pt, &point_id));
    REQUIRE_OK(vmb_release_report_kept(r, 0, &vm, &id, &expires));
    CHECK(strcmp(vm, "web") == 0 && strcmp(id, point_id) == 0);
    CHECK(expires > taken + 2 * 86400 - 60 && expires < taken + 2 * 86400 + 60);
    CHECK(vmb_release_report_kept(r, 1, &vm, &id, &expires) == VMB_ERR_INVALID_ARGUMENT);
    vmb_release_report_free(r);

    /* The report's expiry is in whole seconds, the record's is finer. */
    REQUIRE_OK(vmb_vault_release_expired_at(v, "web", expires + 1, &r));
    REQUIRE_OK(vmb_release_report_released_count(r, &n));
    CHECK(n == 1);
    REQUIRE_OK(vmb_release_report_released(r, 0, &vm, &id, &why));
    CHECK(strcmp(id, point_id) == 0 && strcmp(why, "expired") == 0);
    REQUIRE_OK(vmb_release_report_problem_count(r, &n));
    CHECK(n == 0);
    vmb_release_report_free(r);
    CHECK(clones() == 0);
    REQUIRE_OK(vmb_vault_point_tiers(v, pt, &tiers));
    CHECK(tiers == VMB_TIER_VAULT);
    restored = true;
    REQUIRE_OK(vmb_vault_restore_disk_from_snapshot(v, pt, "root.img", again, NULL, NULL, &restored));
    CHECK(!restored);
    CHECK(access(again, F_OK) != 0);
    REQUIRE_OK(vmb_vault_restore_disk_to_file(v, pt, "root.img", again, NULL, NULL));
    CHECK(file_equals(again, first, size));

    CHECK(vmb_vault_release_expired(v, "bad/name", &r) == VMB_ERR_INVALID_ARGUMENT);
    CHECK(vmb_vault_release_expired(v, NULL, NULL) == VMB_ERR_NULL_ARGUMENT);
    vmb_point_free(pt);
    vmb_job_free(job);
    vmb_vault_free(v);
    free(first);
    free(second);
    free(disk);
    free(vault_path);
    free(from_snapshot);
    free(again);
}

int main(void) {
    g_dir = make_temp_dir("tiers-c");
    if (g_dir == NULL) {
        perror("mkdtemp");
        return 2;
    }
    RUN(mount_a_reflink_xfs);
    RUN(a_kept_snapshot_is_a_tier_restored_from_and_released);
    /* Lazily when a failed case left the vault open in it. */
    if (g_mounted) sh("umount -d %s 2>/dev/null || umount -l %s", g_xfs, g_xfs);
    remove_tree(g_dir);
    free(g_xfs);
    free(g_dir);
    return SUMMARY("tiers.c");
}
