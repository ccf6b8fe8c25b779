/* Files out of a point from C: a real guest disk (GPT, FAT, ext4, XFS and
 * LVM, made by testkit/guest-disk.sh, named in $VMB_GUEST_DISK_SCRIPT)
 * backed up twice; its volumes, listings, file contents and extraction
 * match what the guest held; find names the point that held a deleted
 * file; two points' logical volumes (same UUIDs) open side by side; a
 * mounted vault reads as the disk and refuses writes. Needs root.
 *
 * Built with: cc -std=c11 -Wall -Wextra -Werror files.c $(pkg-config --cflags --libs vmbackup) */
#define _XOPEN_SOURCE 700
#define _DEFAULT_SOURCE

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "util.h"

static char *g_dir;
static char *g_vault_path;
static char g_first[128], g_second[128];

static int sh(const char *stage) {
    const char *script = getenv("VMB_GUEST_DISK_SCRIPT");
    if (script == NULL) return -1;
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' %s '%s'", script, stage, g_dir);
    return system(cmd);
}

static void backup(char *id_out) {
    vmb_vault *v = NULL;
    vmb_point *p = NULL;
    char *image = join(g_dir, "disk.img");
    const char *images[] = {image};
    REQUIRE_OK(vmb_vault_open(g_vault_path, &v));
    REQUIRE_OK(vmb_vault_backup_images(v, "g", images, 1, NULL, &p));
    const char *id = NULL;
    REQUIRE_OK(vmb_point_id(p, &id));
    snprintf(id_out, 128, "%s", id);
    vmb_point_free(p);
    vmb_vault_free(v);
    free(image);
}

static void setup(void) {
    REQUIRE(getenv("VMB_GUEST_DISK_SCRIPT") != NULL);
    REQUIRE(geteuid() == 0);
    g_vault_path = join(g_dir, "vault");
    REQUIRE(sh("create") == 0);
    vmb_vault *v = NULL;
    REQUIRE_OK(vmb_vault_init(g_vault_path, &v));
    vmb_vault_free(v);
    backup(g_first);
    REQUIRE(sh("change") == 0);
    backup(g_second);
}

/* A guest disk of point `id`. */
static vmb_status open_disk(vmb_vault *v, const char *id, vmb_guest_disk **out) {
    vmb_point *p = NULL;
    vmb_status s = vmb_vault_find_point(v, "g", id, &p);
    if (s != VMB_OK) return s;
    s = vmb_guest_disk_open(v, p, "disk.img", out);
    vmb_point_free(p);
    return s;
}

static void volumes_have_types_and_labels(void) {
    vmb_vault *v = NULL;
    vmb_guest_disk *gd = NULL;
    REQUIRE_OK(vmb_vault_open(g_vault_path, &v));
    REQUIRE_OK(open_disk(v, g_first, &gd));
    CHECK(vmb_guest_disk_volume_count(gd) == 6);
    const char *want[][3] = {{"p1", "vfat", "EFI"}, {"p2", "ext4", "root"}, {"p3", "xfs", "data"},
                             {"p4", "LVM2_member", NULL}, {"vgdata/home", "unknown", NULL},
                             {"vgdata/root", "ext4", "lvroot"}};
    for (size_t i = 0; i < 6; i++) {
        vmb_volume vol;
        REQUIRE_OK(vmb_guest_disk_volume(gd, i, &vol));
        CHECK(strcmp(vol.name, want[i][0]) == 0);
        CHECK(strcmp(vol.fs_type, want[i][1]) == 0);
        CHECK(want[i][2] == NULL ? vol.label == NULL || i == 3 : (vol.label && strcmp(vol.label, want[i][2]) == 0));
        CHECK(vol.has_files == (i != 3 && i != 4));
    }
    vmb_volume vol;
    REQUIRE_STATUS(vmb_guest_disk_volume(gd, 6, &vol), VMB_ERR_INVALID_ARGUMENT);
    vmb_guest_fs *fs = NULL;
    REQUIRE_STATUS(vmb_guest_fs_open(gd, "p9", &fs), VMB_ERR_NOT_FOUND);
    CHECK(LAST_ERROR_HAS("p9") && LAST_ERROR_HAS("vgdata/root"));
    REQUIRE_STATUS(vmb_guest_fs_open(gd, "p4", &fs), VMB_ERR_GUEST);
    CHECK(LAST_ERROR_HAS("LVM2_member"));
    REQUIRE_STATUS(vmb_guest_fs_open(NULL, "p1", &fs), VMB_ERR_NULL_ARGUMENT);
    vmb_guest_disk_close(gd);
    vmb_guest_disk_close(NULL);
    vmb_vault_free(v);
}

struct seen {
    int count;
    int found;
    vmb_file_entry fstab;
    int stop_after;
};

static int on_entry(const vmb_file_entry *e, void *ctx) {
    struct seen *s = (struct seen *)ctx;
    s->count++;
    if (strcmp(e->path, "/etc/fstab") == 0) {
        s->found = 1;
        s->fstab = *e;
        s->fstab.path = NULL; /* its strings die with the callback */
        s->fstab.target = NULL;
    }
    return s->stop_after > 0 && s->count >= s->stop_after;
}

static void a_listing_says_what_stat_says(void) {
    vmb_vault *v = NULL;
    vmb_guest_disk *gd = NULL;
    vmb_guest_fs *fs = NULL;
    REQUIRE_OK(vmb_vault_open(g_vault_path, &v));
    REQUIRE_OK(open_disk(v, g_first, &gd));
    REQUIRE_OK(vmb_guest_fs_open(gd, "p2", &fs));
    struct seen s = {0};
    REQUIRE_OK(vmb_guest_fs_list(fs, "/etc", false, on_entry, &s));
    CHECK(s.count == 3); /* fstab, fstab.link, ssh */
    REQUIRE(s.found);
    char *expected = join(g_dir, "expect-1/p2/etc/fstab");
    struct stat st;
    REQUIRE(lstat(expected, &st) == 0);
    CHECK(s.fstab.kind == VMB_FILE_REGULAR);
    CHECK(s.fstab.size == (uint64_t)st.st_size);
    CHECK(s.fstab.mode == (st.st_mode & 07777));
    CHECK(s.fstab.uid == st.st_uid && s.fstab.gid == st.st_gid);
    CHECK(s.fstab.mtime_sec == st.st_mtim.tv_sec && s.fstab.mtime_nsec == (uint32_t)st.st_mtim.tv_nsec);
    free(expected);
    /* Recursive, and stopped by the callback. */
    struct seen all = {0};
    REQUIRE_OK(vmb_guest_fs_list(fs, "/", true, on_entry, &all));
    CHECK(all.count >= 10);
    struct seen some = {.stop_after = 2};
    REQUIRE_STATUS(vmb_guest_fs_list(fs, "/", true, on_entry, &some), VMB_ERR_CANCELLED);
    CHECK(some.count == 2);
    REQUIRE_STATUS(vmb_guest_fs_list(fs, "/nope", false, on_entry, &s), VMB_ERR_NOT_FOUND);
    CHECK(LAST_ERROR_HAS("/nope") && LAST_ERROR_HAS("p2"));
    vmb_guest_fs_close(fs);
    vmb_guest_disk_close(gd);
    vmb_vault_free(v);
}

struct buffer {
    uint8_t *data;
    size_t len;
};

static int on_data(const uint8_t *data, size_t len, void *ctx) {
    struct buffer *b = (struct buffer *)ctx;
    uint8_t *grown = (uint8_t *)realloc(b->data, b->len + len + 1);
    if (grown == NULL) return 1;
    b->data = grown;
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = 0;
    return 0;
}

/* Whether guest file `path` of `fs` holds what file `expected` holds. */
static int same_content(vmb_guest_fs *fs, const char *path, const char *expected) {
    struct buffer b = {0};
    if (vmb_guest_fs_read(fs, path, on_data, &b) != VMB_OK) {
        fprintf(stderr, "read %s: %s\n", path, vmb_last_error());
        free(b.data);
        return 0;
    }
    size_t n = 0;
    uint8_t *want = read_file(expected, &n);
    int same = want != NULL && n == b.len && (n == 0 || memcmp(want, b.data, n) == 0);
    free(want);
    free(b.data);
    return same;
}

static void files_read_back_and_two_points_open_side_by_side(void) {
    vmb_vault *v = NULL;
    vmb_guest_disk *a = NULL, *b = NULL;
    vmb_guest_fs *la = NULL, *lb = NULL, *efi = NULL;
    REQUIRE_OK(vmb_vault_open(g_vault_path, &v));
    REQUIRE_OK(open_disk(v, g_first, &a));
    REQUIRE_OK(open_disk(v, g_second, &b));
    REQUIRE_OK(vmb_guest_fs_open(a, "vgdata/root", &la));
    REQUIRE_OK(vmb_guest_fs_open(b, "vgdata/root", &lb));
    char *e1 = join(g_dir, "expect-1/vgdata_root/var/lib/db/table");
    char *e2 = join(g_dir, "expect-2/vgdata_root/var/lib/db/table");
    CHECK(same_content(la, "/var/lib/db/table", e1));
    CHECK(same_content(lb, "/var/lib/db/table", e2));
    CHECK(!same_content(la, "/var/lib/db/table", e2));
    REQUIRE_OK(vmb_guest_fs_open(b, "p1", &efi));
    char *g = join(g_dir, "expect-2/p1/EFI/debian/grub.cfg");
    CHECK(same_content(efi, "/EFI/debian/grub.cfg", g));
    struct buffer buf = {0};
    REQUIRE_STATUS(vmb_guest_fs_read(la, "/var", on_data, &buf), VMB_ERR_GUEST);
    free(buf.data);
    free(e1);
    free(e2);
    free(g);
    vmb_guest_fs_close(efi);
    vmb_guest_fs_close(la);
    vmb_guest_fs_close(lb);
    vmb_guest_disk_close(a);
    vmb_guest_disk_close(b);
    vmb_vault_free(v);
}

static void extract_keeps_modes_owners_and_times(void) {
    vmb_vault *v = NULL;
    vmb_guest_disk *gd = NULL;
    vmb_guest_fs *fs = NULL;
    REQUIRE_OK(vmb_vault_open(g_vault_path, &v));
    REQUIRE_OK(open_disk(v, g_first, &gd));
    REQUIRE_OK(vmb_guest_fs_open(gd, "p2", &fs));
    char *to = join(g_dir, "extracted");
    vmb_extract_report r;
    REQUIRE_OK(vmb_guest_fs_extract(fs, "/home", to, &r));
    CHECK(r.files == 1 && r.links == 1 && r.dirs == 2 && r.bytes == 200000);
    char *got = join(to, "home/alice/photo.jpg");
    char *want = join(g_dir, "expect-1/p2/home/alice/photo.jpg");
    struct stat sg, sw;
    REQUIRE(stat(got, &sg) == 0 && stat(want, &sw) == 0);
    CHECK((sg.st_mode & 07777) == 04755 && (sw.st_mode & 07777) == 04755);
    CHECK(sg.st_uid == 1000 && sg.st_gid == 1000);
    CHECK(sg.st_mtim.tv_sec == sw.st_mtim.tv_sec && sg.st_mtim.tv_nsec == sw.st_mtim.tv_nsec);
    size_t n1 = 0, n2 = 0;
    uint8_t *d1 = read_file(got, &n1), *d2 = read_file(want, &n2);
    CHECK(d1 && d2 && n1 == n2 && memcmp(d1, d2, n1) == 0);
    free(d1);
    free(d2);
    /* Again: nothing is overwritten. */
    REQUIRE_STATUS(vmb_guest_fs_extract(fs, "/home", to, NULL), VMB_ERR_IO);
    CHECK(LAST_ERROR_HAS("exists"));
    free(got);
    free(want);
    free(to);
    vmb_guest_fs_close(fs);
    vmb_guest_disk_close(gd);
    vmb_vault_free(v);
}

struct hits {
    int count;
    char point[128];
    char volume[64];
};

static int on_found(const vmb_found_file *f, void *ctx) {
    struct hits *h = (struct hits *)ctx;
    h->count++;
    snprintf(h->point, sizeof h->point, "%s", f->point);
    snprintf(h->volume, sizeof h->volume, "%s", f->volume);
    return 0;
}

static void find_names_the_point_that_held_a_deleted_file(void) {
    vmb_vault *v = NULL;
    REQUIRE_OK(vmb_vault_open(g_vault_path, &v));
    struct hits h = {0};
    REQUIRE_OK(vmb_vault_find_files(v, "g", "old.log", on_found, &h));
    CHECK(h.count == 1 && strcmp(h.point, g_first) == 0 && strcmp(h.volume, "p3") == 0);
    struct hits n = {0};
    REQUIRE_OK(vmb_vault_find_files(v, "g", "/etc/*.conf", on_found, &n));
    CHECK(n.count == 1 && strcmp(n.point, g_second) == 0);
    REQUIRE_STATUS(vmb_vault_find_files(v, "g", "x", NULL, &n), VMB_ERR_NULL_ARGUMENT);
    vmb_vault_free(v);
}

static void a_mounted_vault_reads_as_the_disk_and_refuses_writes(void) {
    vmb_vault *v = NULL;
    vmb_mount *m = NULL;
    REQUIRE_OK(vmb_vault_open(g_vault_path, &v));
    char *at = join(g_dir, "mnt");
    REQUIRE(mkdir(at, 0700) == 0);
    REQUIRE_OK(vmb_vault_mount(v, at, "g", g_second, &m));
    CHECK(vmb_mount_is_mounted(m));
    char rel[300];
    snprintf(rel, sizeof rel, "g/%s/disk.img", g_second);
    char *mounted = join(at, rel);
    char *image = join(g_dir, "disk.img");
    int fm = open(mounted, O_RDONLY), fi = open(image, O_RDONLY);
    REQUIRE(fm >= 0 && fi >= 0);
    static uint8_t x[65536], y[65536];
    uint64_t seed = 12345;
    int same = 1;
    for (int i = 0; i < 40; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        off_t at_byte = (off_t)((seed >> 11) % ((500u << 20) - sizeof x));
        ssize_t a = pread(fm, x, sizeof x, at_byte), b = pread(fi, y, sizeof y, at_byte);
        if (a != (ssize_t)sizeof x || b != (ssize_t)sizeof y || memcmp(x, y, sizeof x) != 0) same = 0;
    }
    CHECK(same);
    close(fm);
    close(fi);
    int w = open(mounted, O_WRONLY);
    CHECK(w < 0 && errno == EROFS);
    if (w >= 0) close(w);
    REQUIRE_OK(vmb_mount_unmount(m));
    DIR *d = opendir(at);
    REQUIRE(d != NULL);
    int entries = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) entries += e->d_name[0] != '.';
    closedir(d);
    CHECK(entries == 0);
    REQUIRE_OK(vmb_mount_unmount(NULL));
    CHECK(!vmb_mount_is_mounted(NULL));
    free(mounted);
    free(image);
    free(at);
    vmb_vault_free(v);
}

/* The EFI partition (FAT, read in user space: no FUSE): listed, read and
 * extracted as the guest held it. */
static void the_efi_partition_reads_without_mounting(void) {
    vmb_vault *v = NULL;
    vmb_guest_disk *gd = NULL;
    vmb_guest_fs *fs = NULL;
    REQUIRE_OK(vmb_vault_open(g_vault_path, &v));
    REQUIRE_OK(open_disk(v, g_second, &gd));
    REQUIRE_OK(vmb_guest_fs_open(gd, "p1", &fs));
    struct seen all = {0};
    REQUIRE_OK(vmb_guest_fs_list(fs, "/", true, on_entry, &all));
    CHECK(all.count == 6); /* /, EFI, BOOT, BOOTX64.EFI, debian, grub.cfg */
    char *grub = join(g_dir, "expect-2/p1/EFI/debian/grub.cfg");
    CHECK(same_content(fs, "/EFI/debian/grub.cfg", grub));
    char *to = join(g_dir, "efi-out");
    vmb_extract_report r;
    REQUIRE_OK(vmb_guest_fs_extract(fs, "/EFI", to, &r));
    CHECK(r.files == 2 && r.dirs == 3);
    char *got = join(to, "EFI/debian/grub.cfg");
    size_t n1 = 0, n2 = 0;
    uint8_t *d1 = read_file(got, &n1), *d2 = read_file(grub, &n2);
    CHECK(d1 && d2 && n1 == n2 && memcmp(d1, d2, n1) == 0);
    CHECK(r.bytes == 100000 + n2);
    struct stat sg, sw;
    CHECK(stat(got, &sg) == 0 && stat(grub, &sw) == 0 && sg.st_mtim.tv_sec == sw.st_mtim.tv_sec);
    free(d1);
    free(d2);
    free(got);
    free(to);
    free(grub);
    vmb_guest_fs_close(fs);
    vmb_guest_disk_close(gd);
    vmb_vault_free(v);
}

int main(int argc, char **argv) {
    /* --no-fuse: only what needs no FUSE mount (valgrind runs that). */
    int no_fuse = argc > 1 && strcmp(argv[1], "--no-fuse") == 0;
    g_dir = make_temp_dir("files-c");
    if (g_dir == NULL) {
        perror("mkdtemp");
        return 2;
    }
    RUN(setup);
    RUN(volumes_have_types_and_labels);
    RUN(the_efi_partition_reads_without_mounting);
    if (!no_fuse) {
        RUN(a_listing_says_what_stat_says);
        RUN(files_read_back_and_two_points_open_side_by_side);
        RUN(extract_keeps_modes_owners_and_times);
        RUN(find_names_the_point_that_held_a_deleted_file);
        RUN(a_mounted_vault_reads_as_the_disk_and_refuses_writes);
    }
    remove_tree(g_dir);
    free(g_dir);
    free(g_vault_path);
    return SUMMARY("files.c");
}
