/* Soft delete and copy from C: a deleted point is listed as deleted, its
 * data survives gc, it is undeleted and restores bit for bit; a gc
 * rehearsed fifteen days later removes it for good. A vault whose soft
 * delete is always on refuses to turn it off. Points copy into an
 * encrypted vault (a second site), moving only what it lacks. On S3 (the
 * server scripts/test starts, named in VMB_S3) an immutable vault locks
 * what it writes: a delete of a locked version fails.
 *
 * Built with: cc -std=c11 -Wall -Wextra -Werror protection.c $(pkg-config --cflags --libs vmbackup) */
#define _XOPEN_SOURCE 700

#include <time.h>
#include <strings.h>
#include <unistd.h>

#include "check.h"
#include "util.h"

#define MiB (1024u * 1024u)

static char *g_dir;

/* Backs up `image` (holding `data`) as VM "web": the new point. */
static vmb_point *back_up(vmb_vault *v, const char *image, const uint8_t *data, size_t size) {
    vmb_point *pt = NULL;
    if (write_file(image, data, size) != 0) return NULL;
    const char *images[] = {image};
    if (vmb_vault_backup_images(v, "web", images, 1, NULL, &pt) != VMB_OK) return NULL;
    return pt;
}

/* Whether disk 0 of `pt` restores to `want`. */
static int restores_to(vmb_vault *v, vmb_point *pt, const char *path, const uint8_t *want, size_t size) {
    const char *disk = NULL;
    if (vmb_point_disk_name(pt, 0, &disk) != VMB_OK) return 0;
    if (vmb_vault_restore_disk_to_file(v, pt, disk, path, NULL, NULL) != VMB_OK) return 0;
    size_t got_len = 0;
    uint8_t *got = read_file(path, &got_len);
    int same = got != NULL && got_len == size && memcmp(got, want, size) == 0;
    free(got);
    return same;
}

static void a_deleted_point_is_kept_undeleted_and_purged_after_its_days(void) {
    const size_t size = 2 * MiB;
    uint8_t *first = malloc(size), *second = malloc(size);
    REQUIRE(first != NULL && second != NULL);
    fill_pattern(first, size, 1);
    memcpy(second, first, size);
    fill_pattern(second + MiB, 256 * 1024, 2);
    char *image = join(g_dir, "root.img");
    char *vault_path = join(g_dir, "vault");
    char *out = join(g_dir, "restored.img");

    vmb_vault *v = NULL;
    REQUIRE_OK(vmb_vault_init(vault_path, &v));
    struct vmb_vault_settings settings = {.struct_size = sizeof settings};
    REQUIRE_OK(vmb_vault_get_settings(v, &settings));
    CHECK(settings.soft_delete_days == 14 && !settings.soft_delete_always_on);
    vmb_store_lock lock = 99;
    REQUIRE_OK(vmb_vault_store_lock(v, &lock));
    CHECK(lock == VMB_STORE_LOCK_UNAVAILABLE); /* a folder: the host's permissions protect it */

    vmb_point *p1 = back_up(v, image, first, size);
    REQUIRE(p1 != NULL);
    vmb_point *p2 = back_up(v, image, second, size);
    REQUIRE(p2 != NULL);
    const char *id1 = NULL;
    REQUIRE_OK(vmb_point_id(p1, &id1));

    vmb_point *gone = NULL;
    int64_t until = 0;
    REQUIRE_OK(vmb_vault_delete_point(v, "web", id1, &gone, &until));
    const char *gone_id = NULL;
    REQUIRE_OK(vmb_point_id(gone, &gone_id));
    CHECK(strcmp(gone_id, id1) == 0);
    int64_t days = (until - (int64_t)time(NULL)) / 86400;
    CHECK(days == 13 || days == 14);
    vmb_point_free(gone);

    vmb_deleted_list *list = NULL;
    size_t n = 0;
    REQUIRE_OK(vmb_vault_list_deleted(v, NULL, &list));
    REQUIRE_OK(vmb_deleted_list_len(list, &n));
    CHECK(n == 1);
    vmb_point *listed = NULL;
    int64_t deleted_at = 0, purge_after = 0;
    REQUIRE_OK(vmb_deleted_list_get(list, 0, &listed, &deleted_at, &purge_after));
    const char *listed_id = NULL;
    REQUIRE_OK(vmb_point_id(listed, &listed_id));
    CHECK(strcmp(listed_id, id1) == 0);
    CHECK(purge_after - deleted_at == 14 * 86400);
    CHECK(vmb_deleted_list_get(list, 1, &listed, NULL, NULL) == VMB_ERR_INVALID_ARGUMENT);
    vmb_point_free(listed);
    vmb_deleted_list_free(list);

    /* gc keeps the deleted point's data while its days last. */
    struct vmb_gc_stats gc = {.struct_size = sizeof gc};
    REQUIRE_OK(vmb_vault_gc_repack(v, 0, 0.0, false, &gc));
    CHECK(gc.deleted_points_kept == 1 && gc.deleted_points_purged == 0);
    CHECK(gc.chunks_removed == 0 && gc.segments_removed == 0);

    vmb_point *back = NULL;
    REQUIRE_OK(vmb_vault_undelete_point(v, "web", id1, &back));
    CHECK(restores_to(v, back, out, first, size));
    vmb_point_free(back);
    CHECK(vmb_vault_undelete_point(v, "web", id1, NULL) == VMB_ERR_NOT_FOUND);

    /* Deleted again; fifteen days on, gc removes it and what only it held. */
    REQUIRE_OK(vmb_vault_delete_point(v, "web", id1, NULL, NULL));
    int64_t later = (int64_t)time(NULL) + 15 * 86400;
    struct vmb_gc_stats purged = {.struct_size = sizeof purged};
    REQUIRE_OK(vmb_vault_gc_at(v, 0, 0.0, false, later, &purged));
    CHECK(purged.deleted_points_purged == 1 && purged.chunks_removed > 0);
    REQUIRE_OK(vmb_vault_list_deleted(v, "web", &list));
    REQUIRE_OK(vmb_deleted_list_len(list, &n));
    CHECK(n == 0);
    vmb_deleted_list_free(list);
    CHECK(vmb_vault_undelete_point(v, "web", id1, NULL) == VMB_ERR_NOT_FOUND);
    CHECK(restores_to(v, p2, out, second, size));

    /* Always on: it cannot be turned off, nor its days shortened. */
    REQUIRE_OK(vmb_vault_set_soft_delete(v, 7, true, &settings));
    CHECK(settings.soft_delete_days == 7 && settings.soft_delete_always_on);
    CHECK(vmb_vault_set_soft_delete(v, 0, false, NULL) == VMB_ERR_PROTECTED);
    CHECK(LAST_ERROR_HAS("always on"));
    CHECK(vmb_vault_set_soft_delete(v, 3, false, NULL) == VMB_ERR_PROTECTED);
    REQUIRE_OK(vmb_vault_get_settings(v, &settings));
    CHECK(settings.soft_delete_days == 7 && settings.soft_delete_always_on);
    CHECK(vmb_vault_get_settings(v, NULL) == VMB_ERR_NULL_ARGUMENT);

    /* Immutable: the newest point cannot be deleted; the days only grow. */
    REQUIRE_OK(vmb_vault_set_immutable_days(v, 30, &settings));
    CHECK(settings.immutable_days == 30);
    CHECK(vmb_vault_delete_point(v, "web", "latest", NULL, NULL) == VMB_ERR_PROTECTED);
    CHECK(LAST_ERROR_HAS("immutable for 30 days"));
    CHECK(vmb_vault_set_immutable_days(v, 29, NULL) == VMB_ERR_PROTECTED);
    /* A caller built against the first layout gets only what it knows. */
    struct vmb_vault_settings first_layout = {0};
    REQUIRE_OK(vmb_vault_get_settings(v, &first_layout));
    CHECK(first_layout.struct_size == 12 && first_layout.immutable_days == 0);

    vmb_point_free(p1);
    vmb_point_free(p2);
    vmb_vault_free(v);
    free(first);
    free(second);
    free(image);
    free(vault_path);
    free(out);
}

static void points_copy_into_an_encrypted_vault_moving_only_what_it_lacks(void) {
    const size_t size = 2 * MiB;
    uint8_t *first = malloc(size), *second = malloc(size);
    REQUIRE(first != NULL && second != NULL);
    fill_pattern(first, size, 3);
    memcpy(second, first, size);
    fill_pattern(second, 64 * 1024, 4);
    char *image = join(g_dir, "copy.img");
    char *here_path = join(g_dir, "here");
    char *there_path = join(g_dir, "there");
    char *out = join(g_dir, "copied.img");

    vmb_vault *here = NULL, *there = NULL;
    REQUIRE_OK(vmb_vault_init(here_path, &here));
    struct vmb_key key = {.struct_size = sizeof key, .passphrase = "second site", .kdf_memory_kib = 64,
                          .kdf_iterations = 1};
    REQUIRE_OK(vmb_vault_init_with_key(there_path, &key, &there));
    vmb_point *p1 = back_up(here, image, first, size);
    REQUIRE(p1 != NULL);
    vmb_point *p2 = back_up(here, image, second, size);
    REQUIRE(p2 != NULL);

    struct vmb_copy_stats st = {.struct_size = sizeof st};
    REQUIRE_OK(vmb_vault_copy(here, there, "web", VMB_POINTS_LATEST, 0, NULL, &st));
    CHECK(st.points_copied == 1 && st.points_already_there == 0);
    CHECK(st.bytes_lacked == size && st.bytes_added > 0);
    /* The VM's record (what preparing it found) comes along; no point booted. */
    CHECK(st.vm_records_copied == 1 && st.verdicts_copied == 0);
    /* The older point differs in one block: only that one moves. */
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    REQUIRE_OK(vmb_vault_copy(here, there, NULL, VMB_POINTS_ALL, 0, NULL, &st));
    CHECK(st.points_copied == 1 && st.points_already_there == 1);
    CHECK(st.bytes_lacked == 64 * 1024);
    CHECK(st.vm_records_copied == 0); /* the target's is as new */
    REQUIRE_OK(vmb_vault_copy(here, there, NULL, VMB_POINTS_SINCE, 0, NULL, &st));
    CHECK(st.points_copied == 0 && st.points_already_there == 2 && st.bytes_added == 0);

    const char *id1 = NULL;
    REQUIRE_OK(vmb_point_id(p1, &id1));
    vmb_point *copied = NULL;
    REQUIRE_OK(vmb_vault_find_point(there, "web", id1, &copied));
    CHECK(restores_to(there, copied, out, first, size));
    vmb_point_free(copied);

    /* A policy names the second site a host copies to after each backup. */
    vmb_policy *policy = NULL;
    const char *site = NULL;
#define RULES "timezone = \"UTC\"\n[schedule]\nfrequency = \"daily\"\ntimes = [\"02:00\"]\n[retention]\nkeep_last = 2\n"
    REQUIRE_OK(vmb_policy_parse(RULES "[copy]\nto = \"s3://offsite/vault\"\n",
                                &policy));
    REQUIRE_OK(vmb_policy_copy_to(policy, &site));
    CHECK(site != NULL && strcmp(site, "s3://offsite/vault") == 0);
    vmb_policy_free(policy);
    REQUIRE_OK(vmb_policy_parse(RULES, &policy));
    REQUIRE_OK(vmb_policy_copy_to(policy, &site));
    CHECK(site == NULL);
    vmb_policy_free(policy);
    CHECK(vmb_policy_parse(RULES "[copy]\nto = \"\"\n", &policy) == VMB_ERR_INVALID_ARGUMENT);
    CHECK(LAST_ERROR_HAS("copy.to"));

    CHECK(vmb_vault_copy(here, here, NULL, VMB_POINTS_ALL, 0, NULL, NULL) == VMB_ERR_INVALID_ARGUMENT);
    CHECK(LAST_ERROR_HAS("same vault"));
    CHECK(vmb_vault_copy(here, there, NULL, 7, 0, NULL, NULL) == VMB_ERR_INVALID_ARGUMENT);
    CHECK(vmb_vault_copy(here, there, "nope", VMB_POINTS_ALL, 0, NULL, NULL) == VMB_ERR_NOT_FOUND);
    CHECK(vmb_vault_copy(NULL, there, NULL, VMB_POINTS_ALL, 0, NULL, NULL) == VMB_ERR_NULL_ARGUMENT);

    vmb_point_free(p1);
    vmb_point_free(p2);
    vmb_vault_free(here);
    vmb_vault_free(there);
    free(first);
    free(second);
    free(image);
    free(here_path);
    free(there_path);
    free(out);
}

/* Runs `command` and returns the first line of its output that starts
 * with `prefix` (after it, without the line end), or an empty string. */
static void first_line(const char *command, const char *prefix, char *out, size_t size) {
    out[0] = 0;
    FILE *f = popen(command, "r");
    if (f == NULL) return;
    char line[512];
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncasecmp(line, prefix, strlen(prefix)) == 0 && out[0] == 0) {
            snprintf(out, size, "%s", line + strlen(prefix));
            out[strcspn(out, "\r\n")] = 0;
        }
    }
    pclose(f);
}

static void an_immutable_vault_on_s3_locks_what_it_writes(void) {
    SERVICE_OR_SKIP(endpoint, "VMB_S3");
    char plain[128], locked[128];
    snprintf(plain, sizeof plain, "s3://vmbackup/c-nolock-%ld-%ld", (long)getpid(), (long)time(NULL));
    snprintf(locked, sizeof locked, "s3://vmbackup-locked/c-%ld-%ld", (long)getpid(), (long)time(NULL));
    char *cache = join(g_dir, "s3-plain-cache");
    vmb_vault *v = NULL;
    vmb_store_lock lock = 99;
    /* A bucket without Object Lock cannot hold an immutable vault. */
    REQUIRE_OK(vmb_vault_init_url(plain, cache, endpoint, &v));
    REQUIRE_OK(vmb_vault_store_lock(v, &lock));
    CHECK(lock == VMB_STORE_LOCK_DISABLED);
    CHECK(vmb_vault_set_immutable_days(v, 3, NULL) == VMB_ERR_INVALID_ARGUMENT);
    CHECK(LAST_ERROR_HAS("no Object Lock"));
    struct vmb_vault_settings settings = {.struct_size = sizeof settings};
    REQUIRE_OK(vmb_vault_get_settings(v, &settings));
    CHECK(settings.immutable_days == 0);
    vmb_vault_free(v);
    free(cache);

    /* The bucket vmbackup-locked has Object Lock (scripts/s3server.sh). */
    cache = join(g_dir, "s3-locked-cache");
    REQUIRE_OK(vmb_vault_init_url(locked, cache, endpoint, &v));
    REQUIRE_OK(vmb_vault_store_lock(v, &lock));
    CHECK(lock == VMB_STORE_LOCK_ENABLED);
    REQUIRE_OK(vmb_vault_set_immutable_days(v, 3, &settings));
    CHECK(settings.immutable_days == 3);
    const size_t size = MiB;
    uint8_t *data = malloc(size);
    REQUIRE(data != NULL);
    fill_pattern(data, size, 5);
    char *image = join(g_dir, "s3.img");
    vmb_point *pt = back_up(v, image, data, size);
    REQUIRE(pt != NULL);
    const char *id = NULL;
    REQUIRE_OK(vmb_point_id(pt, &id));
    /* The point's manifest, as S3 itself describes it to curl signing
     * with the vault's own credentials: locked, in compliance mode; a
     * delete of that version fails. */
    char object[512], command[1024], mode[64], version[128], status[64];
    snprintf(object, sizeof object, "%s/vmbackup-locked/%s/points/web/%s", endpoint,
             locked + strlen("s3://vmbackup-locked/"), id);
#define SIGNED "curl -s --aws-sigv4 \"aws:amz:${AWS_REGION:-us-east-1}:s3\" " \
               "--user \"$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY\" "
    snprintf(command, sizeof command, SIGNED "-fI '%s'", object);
    first_line(command, "x-amz-object-lock-mode: ", mode, sizeof mode);
    CHECK(strcmp(mode, "COMPLIANCE") == 0);
    first_line(command, "x-amz-version-id: ", version, sizeof version);
    CHECK(version[0] != 0);
    snprintf(command, sizeof command, SIGNED "-o /dev/null -w 'status %%{http_code}\\n' -X DELETE '%s?versionId=%s'",
             object, version);
    first_line(command, "status ", status, sizeof status);
    CHECK(strcmp(status, "403") == 0);
    char *out = join(g_dir, "s3.out");
    CHECK(restores_to(v, pt, out, data, size));
    vmb_point_free(pt);
    vmb_vault_free(v);
    free(out);
    free(image);
    free(data);
    free(cache);
}

int main(void) {
    g_dir = make_temp_dir("protection-c");
    if (g_dir == NULL) {
        perror("mkdtemp");
        return 2;
    }
    RUN(a_deleted_point_is_kept_undeleted_and_purged_after_its_days);
    RUN(points_copy_into_an_encrypted_vault_moving_only_what_it_lacks);
    RUN(an_immutable_vault_on_s3_locks_what_it_writes);
    remove_tree(g_dir);
    free(g_dir);
    return SUMMARY("protection.c");
}
