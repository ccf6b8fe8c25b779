/* A C host embedding vmbackup: image-file VMs, a VM whose snapshots and
 * disks the host serves through callbacks (one disk from memory with
 * allocation maps and changed block tracking, one from a file), two
 * backups with a change in between, a cancelled job that leaves the vault
 * as it was, restores compared with the source bytes, verify; one disk
 * list mixing named image files and a callback disk.
 *
 * Built with: cc -std=c11 -Wall -Wextra -Werror host.c $(pkg-config --cflags --libs vmbackup) */
#define _XOPEN_SOURCE 700

#include <stdatomic.h>

#include "check.h"
#include "util.h"

#define MiB (1024u * 1024u)
#define GRAIN (64u * 1024u) /* the host's change-tracking granularity */

static char *g_dir;     /* the test's temporary folder */
static vmb_vault *g_vault;

/* ---------------------------------------------------------------- host VM */

/* The live "memory" disk of the host VM, and what its tracking knows. */
#define MEM_SIZE (4u * MiB)
static uint8_t g_mem[MEM_SIZE];
static uint8_t g_dirty[MEM_SIZE / GRAIN];  /* written since the last snapshot */
static unsigned g_generation = 0;          /* snapshots taken */

/* The live "file" disk: a file the host serves with pread. */
static char *g_file_disk;
#define FILE_SIZE (3u * MiB + 12345u)

/* What the provider saw. */
static atomic_int g_prepares, g_snapshots, g_releases, g_destroys;
static atomic_int g_reads, g_changed_calls, g_allocated_calls;

static void mem_write(size_t offset, const void *data, size_t len) {
    memcpy(g_mem + offset, data, len);
    for (size_t g = offset / GRAIN; g <= (offset + len - 1) / GRAIN; g++) g_dirty[g] = 1;
}

/* A frozen copy of the memory disk, owned by the library once added. */
typedef struct {
    uint8_t *data;
    uint64_t size;
    uint8_t changed[MEM_SIZE / GRAIN]; /* since the previous snapshot */
    char prev_token[32];               /* the token those changes chain from */
} mem_snap;

static int mem_size(void *ud, uint64_t *size) {
    *size = ((mem_snap *)ud)->size;
    return 0;
}

static int mem_read(void *ud, uint64_t offset, uint8_t *buf, size_t len) {
    mem_snap *s = (mem_snap *)ud;
    atomic_fetch_add(&g_reads, 1);
    if (offset + len > s->size) return EINVAL;
    memcpy(buf, s->data + offset, len);
    return 0;
}

/* Data lives only where a grain holds a non-zero byte; reported grain by
 * grain, and deliberately out of order: the library sorts and merges. */
static int mem_allocated(void *ud, uint64_t start, uint64_t end, vmb_ranges *ranges) {
    mem_snap *s = (mem_snap *)ud;
    atomic_fetch_add(&g_allocated_calls, 1);
    for (uint64_t g = end / GRAIN + 1; g-- > start / GRAIN;) {
        uint64_t at = g * GRAIN;
        if (at >= s->size) continue;
        uint64_t n = s->size - at < GRAIN ? s->size - at : GRAIN;
        for (uint64_t i = 0; i < n; i++) {
            if (s->data[at + i] != 0) {
                if (vmb_ranges_add(ranges, at, n) != VMB_OK) return EINVAL;
                break;
            }
        }
    }
    return 0;
}

static int mem_changed(void *ud, const char *token, uint64_t start, uint64_t end,
                       vmb_ranges *ranges) {
    mem_snap *s = (mem_snap *)ud;
    atomic_fetch_add(&g_changed_calls, 1);
    if (strcmp(token, s->prev_token) != 0) return VMB_MAP_UNKNOWN;
    for (uint64_t g = start / GRAIN; g * GRAIN < end; g++)
        if (s->changed[g] && vmb_ranges_add(ranges, g * GRAIN, GRAIN) != VMB_OK) return EINVAL;
    return 0;
}

static void mem_destroy(void *ud) {
    mem_snap *s = (mem_snap *)ud;
    free(s->data);
    free(s);
    atomic_fetch_add(&g_destroys, 1);
}

/* The file disk: read in place (the test changes it only between jobs). */
typedef struct {
    int fd;
} file_dev;

static int file_size(void *ud, uint64_t *size) {
    struct stat st;
    if (fstat(((file_dev *)ud)->fd, &st) != 0) return errno;
    *size = (uint64_t)st.st_size;
    return 0;
}

static int file_read(void *ud, uint64_t offset, uint8_t *buf, size_t len) {
    atomic_fetch_add(&g_reads, 1);
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(((file_dev *)ud)->fd, buf + done, len - done, (off_t)(offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno;
        if (n == 0) {
            vmb_callback_error("short read: the file ended");
            return EIO;
        }
        done += (size_t)n;
    }
    return 0;
}

static void file_destroy(void *ud) {
    close(((file_dev *)ud)->fd);
    free(ud);
    atomic_fetch_add(&g_destroys, 1);
}

static int host_prepare(void *ud, const char *vm) {
    (void)ud;
    if (strcmp(vm, "hostvm") != 0) return EINVAL;
    atomic_fetch_add(&g_prepares, 1);
    return 0;
}

/* Freezes the VM: copies the memory disk with the changes since the last
 * snapshot, opens the file disk. Asked for application consistency, it
 * achieves file-system consistency and says why. */
static int host_snapshot(void *ud, const char *vm, vmb_consistency wanted,
                         vmb_consistency *achieved, vmb_snapshot *snap) {
    (void)ud;
    (void)vm;
    mem_snap *m = (mem_snap *)calloc(1, sizeof *m);
    file_dev *f = (file_dev *)malloc(sizeof *f);
    if (m == NULL || f == NULL || (m->data = (uint8_t *)malloc(MEM_SIZE)) == NULL) {
        free(m);
        free(f);
        return ENOMEM;
    }
    memcpy(m->data, g_mem, MEM_SIZE);
    m->size = MEM_SIZE;
    memcpy(m->changed, g_dirty, sizeof g_dirty);
    memset(g_dirty, 0, sizeof g_dirty);
    snprintf(m->prev_token, sizeof m->prev_token, "gen-%u", g_generation);
    g_generation++;
    char token[32];
    snprintf(token, sizeof token, "gen-%u", g_generation);

    vmb_disk_ops mem_ops = {0, m, mem_size, mem_read, mem_allocated, mem_changed, mem_destroy};
    /* From here the library owns m, whatever the result. */
    if (vmb_snapshot_add_disk(snap, "mem", &mem_ops, token) != VMB_OK) {
        free(f);
        return EINVAL;
    }
    f->fd = open(g_file_disk, O_RDONLY);
    if (f->fd < 0) {
        free(f);
        return errno;
    }
    vmb_disk_ops file_ops = {0, f, file_size, file_read, NULL, NULL, file_destroy};
    if (vmb_snapshot_add_disk(snap, "file", &file_ops, NULL) != VMB_OK) return EINVAL;

    if (wanted == VMB_CONSISTENCY_APPLICATION) {
        *achieved = VMB_CONSISTENCY_FILESYSTEM;
        vmb_snapshot_warn(snap, "the application writer timed out: file-system-consistent");
    } else {
        *achieved = wanted;
    }
    atomic_fetch_add(&g_snapshots, 1);
    return 0;
}

static int host_release(void *ud, const char *vm) {
    (void)ud;
    (void)vm;
    atomic_fetch_add(&g_releases, 1);
    return 0;
}

static const char *const HOST_DISKS[] = {"mem", "file"};

static vmb_provider host_provider(void) {
    vmb_provider p = {0, NULL, "c-host-test 1", host_prepare, host_snapshot, host_release};
    return p;
}

/* Progress: several worker threads at once, so atomics only. */
typedef struct {
    atomic_ullong max_done, total, calls;
    unsigned long long cancel_after; /* cancel once done > this; 0: never */
} progress;

static int on_progress(void *ud, uint64_t done, uint64_t total) {
    progress *p = (progress *)ud;
    atomic_fetch_add(&p->calls, 1);
    atomic_store(&p->total, total);
    unsigned long long m = atomic_load(&p->max_done);
    while (done > m && !atomic_compare_exchange_weak(&p->max_done, &m, done)) {
    }
    return (p->cancel_after != 0 && done > p->cancel_after) ? 1 : 0;
}

/* A restore target in memory; worker threads write disjoint ranges. */
typedef struct {
    uint8_t *buf;
    uint64_t size;
    atomic_int finished;
} mem_target;

static int target_write(void *ud, uint64_t offset, const uint8_t *data, size_t len) {
    mem_target *t = (mem_target *)ud;
    if (offset + len > t->size) return EINVAL;
    memcpy(t->buf + offset, data, len);
    return 0;
}

static int target_zeros(void *ud, uint64_t offset, uint64_t len) {
    mem_target *t = (mem_target *)ud;
    if (offset + len > t->size) return EINVAL;
    memset(t->buf + offset, 0, (size_t)len);
    return 0;
}

static int target_finish(void *ud) {
    atomic_fetch_add(&((mem_target *)ud)->finished, 1);
    return 0;
}

/* Restores a disk of a point into a fresh buffer (0xAA everywhere first,
 * so that zeros must really be written) and compares it with `want`. */
static int restore_matches(const vmb_point *point, const char *disk, const uint8_t *want,
                           uint64_t size) {
    mem_target t;
    t.size = size;
    t.buf = (uint8_t *)malloc(size);
    atomic_init(&t.finished, 0);
    if (t.buf == NULL) return 0;
    memset(t.buf, 0xAA, size);
    vmb_write_target target = {0, &t, target_write, target_zeros, target_finish};
    vmb_restore_stats stats = {0};
    memset(&stats, 0, sizeof stats);
    vmb_status s = vmb_vault_restore_disk(g_vault, point, disk, &target, NULL, &stats);
    int ok = s == VMB_OK && memcmp(t.buf, want, size) == 0 && stats.size == size &&
             atomic_load(&t.finished) == 1;
    if (!ok)
        fprintf(stderr, "restore of %s: status %d (%s), stats.size %llu, finished %d\n", disk,
                (int)s, vmb_last_error(), (unsigned long long)stats.size,
                atomic_load(&t.finished));
    free(t.buf);
    return ok;
}

static int file_restore_matches(const vmb_point *point, const char *disk, const uint8_t *want,
                                size_t size) {
    char *out = join(g_dir, "restored.img");
    vmb_status s = vmb_vault_restore_disk_to_file(g_vault, point, disk, out, NULL, NULL);
    size_t len = 0;
    uint8_t *got = s == VMB_OK ? read_file(out, &len) : NULL;
    int ok = got != NULL && len == size && memcmp(got, want, size) == 0;
    if (!ok) fprintf(stderr, "restore of %s to a file: %d (%s)\n", disk, (int)s, vmb_last_error());
    free(got);
    remove(out);
    free(out);
    return ok;
}

/* ------------------------------------------------------------------ cases */

static void version_and_vault(void) {
    const char *v = vmb_version();
    CHECK(v != NULL && strlen(v) >= 5);
    char *path = join(g_dir, "vault");
    REQUIRE_OK(vmb_vault_init(path, &g_vault));
    CHECK(strcmp(vmb_last_error(), "") == 0);
    /* A second handle on the same vault opens and closes. */
    vmb_vault *again = NULL;
    REQUIRE_OK(vmb_vault_open(path, &again));
    vmb_vault_free(again);
    free(path);
}

/* A two-disk VM from image files, backed up twice with a change between. */
static void image_vm_twice(void) {
    REQUIRE(g_vault != NULL);
    size_t a_len = 2 * MiB, b_len = 1 * MiB + 100;
    uint8_t *a = (uint8_t *)calloc(1, a_len), *b = (uint8_t *)malloc(b_len);
    uint8_t *a0 = (uint8_t *)malloc(a_len);
    REQUIRE(a != NULL && b != NULL && a0 != NULL);
    fill_pattern(a, MiB, 1); /* second MiB stays zero */
    fill_pattern(b, b_len, 2);
    char *pa = join(g_dir, "a.img"), *pb = join(g_dir, "b.img");
    REQUIRE(write_file(pa, a, a_len) == 0 && write_file(pb, b, b_len) == 0);
    memcpy(a0, a, a_len);
    const char *images[] = {pa, pb};

    vmb_point *p1 = NULL, *p2 = NULL;
    REQUIRE_OK(vmb_vault_backup_images(g_vault, "imagevm", images, 2, NULL, &p1));
    a[1536 * 1024] = 42; /* one 64 KiB block changes */
    REQUIRE(write_file(pa, a, a_len) == 0);
    REQUIRE_OK(vmb_vault_backup_images(g_vault, "imagevm", images, 2, NULL, &p2));

    vmb_backup_stats st = {0};
    REQUIRE_OK(vmb_point_stats(p2, &st));
    CHECK(st.bytes_new == 64 * 1024);
    CHECK(st.bytes_scanned == a_len + b_len);
    CHECK(st.change_detection != NULL && strcmp(st.change_detection, "compare") == 0);
    CHECK(st.bytes_added > st.bytes_stored && st.bytes_stored > 0);
    size_t n = 0;
    const char *name = NULL;
    REQUIRE_OK(vmb_point_disk_count(p2, &n));
    CHECK(n == 2);
    REQUIRE_OK(vmb_point_disk_name(p2, 1, &name));
    CHECK(strcmp(name, "b.img") == 0);
    uint32_t block_size = 0;
    REQUIRE_OK(vmb_point_disk_block_size(p2, 1, &block_size));
    CHECK(block_size == 64 * 1024);
    const char *method = NULL;
    REQUIRE_OK(vmb_point_disk_snapshot_method(p2, 0, &method));
    CHECK(method != NULL && (strcmp(method, "reflink") == 0 || strcmp(method, "in-place") == 0));
    CHECK(vmb_point_disk_snapshot_method(p2, 2, &method) == VMB_ERR_INVALID_ARGUMENT);
    vmb_backup_stats ds = {0};
    REQUIRE_OK(vmb_point_disk_stats(p2, 0, &ds));
    CHECK(strcmp(ds.change_detection, "compare") == 0 && ds.bytes_added == 0);

    /* The whole VM into a folder, one file per disk. */
    char *vmdir = join(g_dir, "imagevm-restored");
    vmb_restore_stats rs = {0};
    REQUIRE_OK(vmb_vault_restore_vm(g_vault, p2, vmdir, NULL, &rs));
    CHECK(rs.size == a_len + b_len);
    char *ra = join(vmdir, "a.img"), *rb = join(vmdir, "b.img");
    size_t la = 0, lb = 0;
    uint8_t *ga = read_file(ra, &la), *gb = read_file(rb, &lb);
    CHECK(ga != NULL && la == a_len && memcmp(ga, a, a_len) == 0);
    CHECK(gb != NULL && lb == b_len && memcmp(gb, b, b_len) == 0);
    free(ga);
    free(gb);
    free(ra);
    free(rb);
    free(vmdir);

    CHECK(file_restore_matches(p2, "a.img", a, a_len));
    CHECK(file_restore_matches(p2, "b.img", b, b_len));
    CHECK(file_restore_matches(p1, "a.img", a0, a_len));
    /* A disk is restored by name; disk N's name comes from the point. */
    const char *first_name = NULL;
    REQUIRE_OK(vmb_point_disk_name(p1, 0, &first_name));
    CHECK(restore_matches(p1, first_name, a0, a_len));
    char *nowhere = join(g_dir, "nowhere.img");
    CHECK(vmb_vault_restore_disk_to_file(g_vault, p1, "0", nowhere, NULL, NULL) == VMB_ERR_NOT_FOUND);
    CHECK(LAST_ERROR_HAS("vmb_point_disk_name gives the name of disk N"));
    free(nowhere);

    vmb_point_free(p1);
    vmb_point_free(p2);
    free(a);
    free(a0);
    free(b);
    free(pa);
    free(pb);
}

static void host_vm_twice(void) {
    REQUIRE(g_vault != NULL);
    fill_pattern(g_mem, MiB, 3); /* 1 MiB of data, then zeros... */
    fill_pattern(g_mem + 3 * MiB, 512 * 1024, 4); /* ...and data again */
    memset(g_dirty, 0, sizeof g_dirty);
    uint8_t *fbuf = (uint8_t *)malloc(FILE_SIZE);
    REQUIRE(fbuf != NULL);
    fill_pattern(fbuf, FILE_SIZE, 5);
    g_file_disk = join(g_dir, "file-disk.raw");
    REQUIRE(write_file(g_file_disk, fbuf, FILE_SIZE) == 0);
    uint8_t *mem1 = (uint8_t *)malloc(MEM_SIZE);
    REQUIRE(mem1 != NULL);
    memcpy(mem1, g_mem, MEM_SIZE);

    vmb_provider provider = host_provider();
    vmb_job *job = NULL;
    REQUIRE_OK(vmb_job_new(&job));
    REQUIRE_OK(vmb_job_set_consistency(job, VMB_CONSISTENCY_APPLICATION));
    progress prog;
    memset(&prog, 0, sizeof prog);
    REQUIRE_OK(vmb_job_set_progress(job, on_progress, &prog));

    vmb_point *p1 = NULL, *p2 = NULL;
    REQUIRE_OK(vmb_vault_backup_host(g_vault, "hostvm", HOST_DISKS, 2, &provider, job, &p1));
    CHECK(atomic_load(&g_prepares) == 1);
    CHECK(atomic_load(&g_snapshots) == 1 && atomic_load(&g_releases) == 1);
    CHECK(atomic_load(&g_destroys) == 2);
    CHECK(atomic_load(&g_allocated_calls) > 0);
    CHECK(atomic_load(&prog.total) == MEM_SIZE + FILE_SIZE);
    CHECK(atomic_load(&prog.max_done) == MEM_SIZE + FILE_SIZE);
    CHECK(atomic_load(&prog.calls) >= 2);

    vmb_consistency got = 99, wanted = 99;
    REQUIRE_OK(vmb_point_consistency(p1, &got));
    REQUIRE_OK(vmb_point_wanted_consistency(p1, &wanted));
    CHECK(got == VMB_CONSISTENCY_FILESYSTEM && wanted == VMB_CONSISTENCY_APPLICATION);
    size_t warnings = 0;
    const char *warning = NULL;
    REQUIRE_OK(vmb_point_warning_count(p1, &warnings));
    REQUIRE(warnings >= 1);
    REQUIRE_OK(vmb_point_warning(p1, 0, &warning));
    CHECK(strstr(warning, "application writer") != NULL);

    /* The VM runs on: one grain of the memory disk and the file change. */
    mem_write(2 * MiB + 100, "changed by the guest", 20);
    fbuf[FILE_SIZE - 1] ^= 0xFF;
    REQUIRE(write_file(g_file_disk, fbuf, FILE_SIZE) == 0);
    int reads_before = atomic_load(&g_reads);

    REQUIRE_OK(vmb_vault_backup_host(g_vault, "hostvm", HOST_DISKS, 2, &provider, job, &p2));
    CHECK(atomic_load(&g_prepares) == 1); /* prepared once only */
    CHECK(atomic_load(&g_releases) == 2 && atomic_load(&g_destroys) == 4);
    CHECK(atomic_load(&g_changed_calls) > 0);
    (void)reads_before;

    const char *id1 = NULL, *parent = NULL, *first_parent = "unset";
    REQUIRE_OK(vmb_point_id(p1, &id1));
    REQUIRE_OK(vmb_point_parent(p2, &parent));
    REQUIRE_OK(vmb_point_parent(p1, &first_parent));
    CHECK(parent != NULL && strcmp(parent, id1) == 0);
    CHECK(first_parent == NULL);

    vmb_backup_stats mem_stats = {0}, total = {0};
    REQUIRE_OK(vmb_point_disk_stats(p2, 0, &mem_stats));
    REQUIRE_OK(vmb_point_stats(p2, &total));
    /* Change tracking: only the changed grain (and a small audit sample)
     * of the memory disk is read. */
    CHECK(mem_stats.bytes_read >= GRAIN && mem_stats.bytes_read <= 8 * GRAIN);
    CHECK(total.bytes_new == GRAIN + FILE_SIZE % GRAIN); /* the file's last block is short */
    CHECK(total.bytes_added > 0 && total.bytes_added < MiB);
    CHECK(total.seconds >= 0.0);

    /* Restores: point 1 gives the old bytes, point 2 the new ones. */
    CHECK(restore_matches(p1, "mem", mem1, MEM_SIZE));
    CHECK(restore_matches(p2, "mem", g_mem, MEM_SIZE));
    CHECK(file_restore_matches(p2, "file", fbuf, FILE_SIZE));
    uint64_t size = 0;
    REQUIRE_OK(vmb_point_disk_size(p2, 1, &size));
    CHECK(size == FILE_SIZE);

    vmb_point_free(p1);
    vmb_point_free(p2);
    vmb_job_free(job);
    free(mem1);
    free(fbuf);
}

/* A job cancelled by its progress callback commits nothing: the same
 * points, the same files; the snapshot is still released. */
static void cancelled_job_leaves_vault_as_it_was(void) {
    REQUIRE(g_vault != NULL && g_file_disk != NULL);
    char *vault_dir = join(g_dir, "vault");
    vmb_point_list *before = NULL, *after = NULL;
    REQUIRE_OK(vmb_vault_list_points(g_vault, "hostvm", &before));
    char *files_before = list_tree(vault_dir);
    REQUIRE(files_before != NULL);

    mem_write(0, "more changes", 12);
    vmb_provider provider = host_provider();
    vmb_job *job = NULL;
    REQUIRE_OK(vmb_job_new(&job));
    progress prog;
    memset(&prog, 0, sizeof prog);
    prog.cancel_after = 1; /* cancel at the first bytes done */
    REQUIRE_OK(vmb_job_set_progress(job, on_progress, &prog));
    int releases = atomic_load(&g_releases), destroys = atomic_load(&g_destroys);
    vmb_point *sentinel = (vmb_point *)&prog; /* must stay untouched */
    vmb_point *out = sentinel;
    REQUIRE_STATUS(vmb_vault_backup_host(g_vault, "hostvm", HOST_DISKS, 2, &provider, job, &out),
                   VMB_ERR_CANCELLED);
    CHECK(out == sentinel);
    CHECK(LAST_ERROR_HAS("cancelled"));
    bool cancelled = false;
    REQUIRE_OK(vmb_job_is_cancelled(job, &cancelled));
    CHECK(cancelled);
    CHECK(atomic_load(&g_releases) == releases + 1);
    CHECK(atomic_load(&g_destroys) == destroys + 2);

    REQUIRE_OK(vmb_vault_list_points(g_vault, "hostvm", &after));
    size_t nb = 0, na = 0;
    REQUIRE_OK(vmb_point_list_len(before, &nb));
    REQUIRE_OK(vmb_point_list_len(after, &na));
    CHECK(nb == 2 && na == nb);
    for (size_t i = 0; i < nb && i < na; i++) {
        vmb_point *pb = NULL, *pa = NULL;
        const char *ib = NULL, *ia = NULL;
        REQUIRE_OK(vmb_point_list_get(before, i, &pb));
        REQUIRE_OK(vmb_point_list_get(after, i, &pa));
        CHECK(vmb_point_id(pb, &ib) == VMB_OK && vmb_point_id(pa, &ia) == VMB_OK);
        CHECK(ib != NULL && ia != NULL && strcmp(ib, ia) == 0);
        vmb_point_free(pb);
        vmb_point_free(pa);
    }
    char *files_after = list_tree(vault_dir);
    CHECK(files_after != NULL && strcmp(files_before, files_after) == 0);
    if (files_after != NULL && strcmp(files_before, files_after) != 0)
        fprintf(stderr, "before:\n%s\nafter:\n%s\n", files_before, files_after);

    /* A cancelled job stays cancelled: the next call with it stops before
     * its snapshot. */
    CHECK(vmb_vault_backup_images(g_vault, "imagevm", HOST_DISKS, 2, job, NULL) == VMB_ERR_CANCELLED);
    free(files_before);
    free(files_after);
    free(vault_dir);
    vmb_point_list_free(before);
    vmb_point_list_free(after);
    vmb_job_free(job);
}

/* Listing, finding and the point's accessors. */
static void list_and_find_points(void) {
    REQUIRE(g_vault != NULL);
    vmb_point_list *list = NULL;
    REQUIRE_OK(vmb_vault_list_points(g_vault, "hostvm", &list));
    size_t n = 0;
    REQUIRE_OK(vmb_point_list_len(list, &n));
    CHECK(n == 2);
    vmb_point *last = NULL, *found = NULL;
    REQUIRE_OK(vmb_point_list_get(list, n - 1, &last));
    vmb_point_list_free(list); /* points outlive their list */
    REQUIRE_OK(vmb_vault_find_point(g_vault, "hostvm", "latest", &found));
    const char *id1 = NULL, *id2 = NULL, *vm = NULL, *when = NULL;
    int64_t t = 0;
    REQUIRE_OK(vmb_point_id(last, &id1));
    REQUIRE_OK(vmb_point_id(found, &id2));
    CHECK(strcmp(id1, id2) == 0);
    REQUIRE_OK(vmb_point_vm(last, &vm));
    CHECK(strcmp(vm, "hostvm") == 0);
    REQUIRE_OK(vmb_point_time(last, &t));
    CHECK(t > 1700000000);
    REQUIRE_OK(vmb_point_time_text(last, &when));
    CHECK(strlen(when) >= 20 && when[4] == '-');
    vmb_point_free(last);
    vmb_point_free(found);

    /* The VMs the vault holds points of, sorted. */
    vmb_vm_list *vms = NULL;
    REQUIRE_OK(vmb_vault_list_vms(g_vault, &vms));
    size_t nvms = 0;
    REQUIRE_OK(vmb_vm_list_len(vms, &nvms));
    CHECK(nvms == 2);
    const char *vm0 = NULL, *vm1 = NULL;
    REQUIRE_OK(vmb_vm_list_get(vms, 0, &vm0));
    REQUIRE_OK(vmb_vm_list_get(vms, 1, &vm1));
    CHECK(strcmp(vm0, "hostvm") == 0 && strcmp(vm1, "imagevm") == 0);
    CHECK(vmb_vm_list_get(vms, 2, &vm0) == VMB_ERR_INVALID_ARGUMENT);
    vmb_vm_list_free(vms);
    vmb_vm_list_free(NULL);
    /* A typo in a VM's name is an error, not an empty list. */
    vmb_point_list *none = NULL;
    CHECK(vmb_vault_list_points(g_vault, "no-such-vm", &none) == VMB_ERR_NOT_FOUND);
    CHECK(none == NULL);
    CHECK(LAST_ERROR_HAS("points of vm no-such-vm not found"));
}

static void verify_vault(void) {
    REQUIRE(g_vault != NULL);
    vmb_verify_report *r = NULL;
    REQUIRE_OK(vmb_vault_verify(g_vault, NULL, NULL, NULL, &r));
    bool ok = false;
    size_t problems = 99;
    uint64_t points = 0;
    REQUIRE_OK(vmb_verify_report_ok(r, &ok));
    REQUIRE_OK(vmb_verify_report_problem_count(r, &problems));
    REQUIRE_OK(vmb_verify_report_points(r, &points));
    CHECK(ok && problems == 0 && points == 4);
    vmb_verify_report_free(r);

    REQUIRE_OK(vmb_vault_verify(g_vault, "hostvm", "latest", NULL, &r));
    REQUIRE_OK(vmb_verify_report_points(r, &points));
    CHECK(points == 1);
    vmb_verify_report_free(r);
}

/* Restore and verify report progress through a job too, and a cancelled
 * restore leaves no file behind. */
static void restore_and_verify_progress(void) {
    REQUIRE(g_vault != NULL);
    vmb_point *p = NULL;
    REQUIRE_OK(vmb_vault_find_point(g_vault, "hostvm", "latest", &p));
    vmb_job *job = NULL;
    REQUIRE_OK(vmb_job_new(&job));
    progress prog;
    memset(&prog, 0, sizeof prog);
    REQUIRE_OK(vmb_job_set_progress(job, on_progress, &prog));
    char *out = join(g_dir, "progress.img");
    vmb_restore_stats st = {0};
    REQUIRE_OK(vmb_vault_restore_disk_to_file(g_vault, p, "file", out, job, &st));
    CHECK(st.size == FILE_SIZE && st.bytes_written + st.bytes_zero == FILE_SIZE);
    CHECK(atomic_load(&prog.total) == FILE_SIZE && atomic_load(&prog.max_done) == FILE_SIZE);
    remove(out);

    memset(&prog, 0, sizeof prog);
    vmb_verify_report *r = NULL;
    REQUIRE_OK(vmb_vault_verify(g_vault, "hostvm", NULL, job, &r));
    CHECK(atomic_load(&prog.total) == 2 * ((uint64_t)MEM_SIZE + FILE_SIZE));
    CHECK(atomic_load(&prog.max_done) == atomic_load(&prog.total));
    vmb_verify_report_free(r);

    REQUIRE_OK(vmb_job_cancel(job));
    REQUIRE_STATUS(vmb_vault_restore_disk_to_file(g_vault, p, "file", out, job, NULL),
                   VMB_ERR_CANCELLED);
    CHECK(access(out, F_OK) != 0);
    free(out);
    vmb_job_free(job);
    vmb_point_free(p);
}

/* Damage is reported by verify, with its place, not returned as data. */
static void verify_reports_damage(void) {
    REQUIRE(g_vault != NULL);
    char *packs = join(g_dir, "vault/packs");
    /* Flip a byte in the middle of every pack file. */
    char *listing = list_tree(packs);
    REQUIRE(listing != NULL);
    int damaged = 0;
    for (char *line = strtok(listing, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        char *space = strrchr(line, ' ');
        if (space == NULL || strstr(line, ".pack") == NULL) continue;
        *space = '\0';
        long long size = atoll(space + 1);
        char *path = (char *)malloc(strlen(packs) + strlen(line) + 1);
        sprintf(path, "%s%s", packs, line);
        FILE *f = fopen(path, "r+b");
        if (f != NULL) {
            fseek(f, (long)(size / 2), SEEK_SET);
            int c = fgetc(f);
            fseek(f, (long)(size / 2), SEEK_SET);
            fputc(c ^ 0x5A, f);
            fclose(f);
            damaged++;
        }
        free(path);
    }
    free(listing);
    free(packs);
    REQUIRE(damaged > 0);
    vmb_verify_report *r = NULL;
    REQUIRE_OK(vmb_vault_verify(g_vault, NULL, NULL, NULL, &r));
    bool ok = true;
    size_t problems = 0;
    const char *text = NULL;
    REQUIRE_OK(vmb_verify_report_ok(r, &ok));
    REQUIRE_OK(vmb_verify_report_problem_count(r, &problems));
    CHECK(!ok && problems > 0);
    if (problems > 0) {
        REQUIRE_OK(vmb_verify_report_problem(r, 0, &text));
        CHECK(text != NULL && strlen(text) > 0);
    }
    CHECK(vmb_verify_report_problem(r, problems, &text) == VMB_ERR_INVALID_ARGUMENT);
    /* The same problems as fields: a damaged block names its VM, point,
     * disk and byte range. */
    size_t located = 0;
    for (size_t i = 0; i < problems; i++) {
        vmb_verify_problem d = {0};
        REQUIRE_OK(vmb_verify_report_problem_detail(r, i, &d));
        CHECK(d.what != NULL && strlen(d.what) > 0 && !d.tampered);
        if (d.vm != NULL && d.point != NULL && d.disk != NULL && d.has_range) {
            CHECK(d.start < d.end);
            CHECK(strstr(d.what, "crc32") != NULL || strlen(d.what) > 0);
            located++;
        }
    }
    CHECK(located > 0);
    vmb_verify_problem none = {0};
    CHECK(vmb_verify_report_problem_detail(r, problems, &none) == VMB_ERR_INVALID_ARGUMENT);
    vmb_verify_report_free(r);
}

/* Prune by a policy's retention rules, then gc, on a vault of its own. */
static void prune_and_gc(void) {
    char *path = join(g_dir, "prune-vault");
    vmb_vault *v = NULL;
    REQUIRE_OK(vmb_vault_init(path, &v));
    size_t len = 512 * 1024;
    uint8_t *data = (uint8_t *)malloc(len);
    REQUIRE(data != NULL);
    char *img = join(g_dir, "prune.img");
    const char *images[] = {img};
    for (unsigned round = 0; round < 3; round++) {
        fill_pattern(data, len, 10 + round); /* every block new each round */
        REQUIRE(write_file(img, data, len) == 0);
        vmb_point *p = NULL;
        REQUIRE_OK(vmb_vault_backup_images(v, "prunevm", images, 1, NULL, &p));
        vmb_point_free(p);
    }
    const char *policy = "timezone = \"UTC\"\n"
                         "[schedule]\nfrequency = \"daily\"\ntimes = [\"02:00\"]\n"
                         "[retention]\nkeep_last = 1\n";

    /* A dry run names what would go and removes nothing. */
    vmb_prune_report *r = NULL;
    size_t removed = 0, kept = 0, logs = 99;
    REQUIRE_OK(vmb_vault_prune(v, policy, NULL, true, &r));
    REQUIRE_OK(vmb_prune_report_removed_count(r, &removed));
    REQUIRE_OK(vmb_prune_report_kept_count(r, &kept));
    CHECK(removed == 2 && kept == 1);
    vmb_prune_report_free(r);
    /* A prune needs only the retention rules: no [schedule] table. */
    r = NULL;
    removed = 0;
    REQUIRE_OK(vmb_vault_prune(v, "timezone = \"UTC\"\n[retention]\nkeep_last = 1\n", NULL, true, &r));
    REQUIRE_OK(vmb_prune_report_removed_count(r, &removed));
    CHECK(removed == 2);
    vmb_prune_report_free(r);
    /* The same through a parsed policy object. */
    vmb_policy *parsed = NULL;
    REQUIRE_OK(vmb_policy_parse(policy, &parsed));
    REQUIRE_OK(vmb_vault_prune_by(v, parsed, NULL, true, &r));
    REQUIRE_OK(vmb_prune_report_removed_count(r, &removed));
    CHECK(removed == 2);
    vmb_prune_report_free(r);
    r = NULL;
    CHECK(vmb_vault_prune_by(v, NULL, NULL, true, &r) == VMB_ERR_NULL_ARGUMENT);
    vmb_policy_free(parsed);
    vmb_policy_free(NULL);
    vmb_policy *none = NULL;
    CHECK(vmb_policy_parse("[retention]\nkeep_last = -1\n", &none) == VMB_ERR_INVALID_ARGUMENT && none == NULL);
    char *missing = join(g_dir, "no-such-policy.toml");
    CHECK(vmb_policy_load(missing, &none) == VMB_ERR_IO && none == NULL);
    free(missing);
    vmb_point_list *list = NULL;
    size_t n = 0;
    REQUIRE_OK(vmb_vault_list_points(v, "prunevm", &list));
    REQUIRE_OK(vmb_point_list_len(list, &n));
    CHECK(n == 3);
    vmb_point_list_free(list);

    REQUIRE_OK(vmb_vault_prune(v, policy, "prunevm", false, &r));
    REQUIRE_OK(vmb_prune_report_removed_count(r, &removed));
    REQUIRE_OK(vmb_prune_report_job_logs_removed(r, &logs));
    CHECK(removed == 2 && logs == 0); /* job logs outlive their points by 90 days */
    const char *vm = NULL, *id = NULL;
    REQUIRE_OK(vmb_prune_report_removed(r, 0, &vm, &id));
    CHECK(vm != NULL && strcmp(vm, "prunevm") == 0 && id != NULL && strlen(id) > 16);
    CHECK(vmb_prune_report_removed(r, 2, &vm, &id) == VMB_ERR_INVALID_ARGUMENT);
    vmb_prune_report_free(r);
    REQUIRE_OK(vmb_vault_list_points(v, "prunevm", &list));
    REQUIRE_OK(vmb_point_list_len(list, &n));
    CHECK(n == 1);
    vmb_point_list_free(list);

    /* Pruned points are soft-deleted for 14 days: gc with no grace keeps
       their data. Fifteen days on (a rehearsal), a dry run with a repack
       threshold of 1 rewrites nothing, and gc reclaims the two removed
       points' data. The first layout (struct_size 0) still works. */
    vmb_gc_stats gc = {.struct_size = sizeof gc};
    REQUIRE_OK(vmb_vault_gc(v, 0, false, &gc));
    CHECK(gc.struct_size == sizeof gc && gc.deleted_points_kept == 2 && gc.points == 3 && gc.packs_removed == 0);
    int64_t later = (int64_t)time(NULL) + 15 * 86400;
    memset(&gc, 0, sizeof gc);
    REQUIRE_OK(vmb_vault_gc_at(v, 0, 1.0, true, later, &gc));
    CHECK(gc.packs_repacked == 0 && gc.packs_removed > 0);
    memset(&gc, 0, sizeof gc);
    REQUIRE_OK(vmb_vault_gc_at(v, 0, 0.5, false, later, &gc));
    CHECK(gc.points == 1);
    CHECK(gc.bytes_removed > len); /* two points' worth of blocks, hardly compressible */
    vmb_verify_report *vr = NULL;
    bool ok = false;
    REQUIRE_OK(vmb_vault_verify(v, NULL, NULL, NULL, &vr));
    REQUIRE_OK(vmb_verify_report_ok(vr, &ok));
    CHECK(ok);
    vmb_verify_report_free(vr);

    /* A bad policy: an error naming the field, nothing removed. */
    r = NULL;
    char bad[256];
    snprintf(bad, sizeof bad, "%.*skeep_last = 0\n", (int)(strlen(policy) - strlen("keep_last = 1\n")), policy);
    CHECK(vmb_vault_prune(v, bad, NULL, false, &r) == VMB_ERR_INVALID_ARGUMENT);
    CHECK(r == NULL && strstr(vmb_last_error(), "retention.keep_last") != NULL);
    CHECK(vmb_vault_prune(v, NULL, NULL, false, &r) == VMB_ERR_NULL_ARGUMENT);
    CHECK(vmb_vault_gc(NULL, 0, false, NULL) == VMB_ERR_NULL_ARGUMENT);

    vmb_vault_free(v);
    free(data);
    free(img);
    free(path);
}

/* After the damage above: repair rebuilds the damaged packs' index files
   without their damaged chunks and counts what is lost; a restore that
   allows damage writes zeros where chunks are lost, a plain one fails. */
static void repair_and_allow_damaged_restore(void) {
    REQUIRE(g_vault != NULL);
    vmb_repair_stats st = {0};
    memset(&st, 0, sizeof st);
    REQUIRE_OK(vmb_vault_repair(g_vault, false, &st));
    CHECK(st.packs > 0 && st.rebuilt > 0 && st.dropped > 0);
    CHECK(!st.nothing_lost && st.lost_ranges > 0);
    vmb_point *p = NULL;
    REQUIRE_OK(vmb_vault_find_point(g_vault, "hostvm", "latest", &p));
    char *out = join(g_dir, "damaged.img");
    uint64_t total = 0;
    const char *disks[] = {"mem", "file"};
    for (int i = 0; i < 2; i++) {
        uint64_t damaged = 0;
        vmb_restore_stats rs = {0};
        memset(&rs, 0, sizeof rs);
        REQUIRE_OK(vmb_vault_restore_disk_to_file_allow_damaged(g_vault, p, disks[i], out, NULL, &rs, &damaged));
        CHECK(damaged < rs.size && access(out, F_OK) == 0);
        if (damaged > 0) {
            CHECK(vmb_vault_restore_disk_to_file(g_vault, p, disks[i], out, NULL, NULL) == VMB_ERR_CORRUPT);
        }
        total += damaged;
    }
    CHECK(total > 0);
    CHECK(vmb_vault_repair(NULL, false, NULL) == VMB_ERR_NULL_ARGUMENT);
    free(out);
    vmb_point_free(p);
}

/* ------------------------------------------------------- a mixed disk list */

static atomic_int g_list_destroys;

static void list_file_destroy(void *ud) {
    close(((file_dev *)ud)->fd);
    free(ud);
    atomic_fetch_add(&g_list_destroys, 1);
}

/* One VM, one call: two image files that are both "disk.img" (in different
 * folders), named once each, and a disk the host serves by callbacks. */
static void mixed_named_disks_in_one_list(void) {
    REQUIRE(g_vault != NULL);
    atomic_init(&g_list_destroys, 0);
    size_t img_len = 1 * MiB, host_len = 2 * MiB;
    uint8_t *boot = (uint8_t *)malloc(img_len), *extra = (uint8_t *)malloc(img_len);
    uint8_t *data = (uint8_t *)malloc(host_len);
    REQUIRE(boot != NULL && extra != NULL && data != NULL);
    fill_pattern(boot, img_len, 11);
    fill_pattern(extra, img_len, 12);
    fill_pattern(data, host_len, 13);
    char *d1 = join(g_dir, "one"), *d2 = join(g_dir, "two");
    REQUIRE(mkdir(d1, 0700) == 0 && mkdir(d2, 0700) == 0);
    char *p1 = join(d1, "disk.img"), *p2 = join(d2, "disk.img"), *ph = join(g_dir, "data.raw");
    REQUIRE(write_file(p1, boot, img_len) == 0 && write_file(p2, extra, img_len) == 0);
    REQUIRE(write_file(ph, data, host_len) == 0);

    vmb_disks *disks = NULL;
    REQUIRE_OK(vmb_disks_new(&disks));
    REQUIRE_OK(vmb_disks_add_image(disks, "boot", p1));
    REQUIRE_OK(vmb_disks_add_image(disks, NULL, p2)); /* named after its file: disk.img */
    /* A second unnamed disk.img would be a second disk of that name. */
    CHECK(vmb_disks_add_image(disks, NULL, p1) == VMB_ERR_INVALID_ARGUMENT);
    CHECK(LAST_ERROR_HAS("already has a disk named disk.img"));
    CHECK(vmb_disks_add_image(disks, "../up", p1) == VMB_ERR_INVALID_ARGUMENT);
    CHECK(vmb_disks_add_image(disks, "x", NULL) == VMB_ERR_NULL_ARGUMENT);

    file_dev *dev = (file_dev *)malloc(sizeof *dev);
    REQUIRE(dev != NULL);
    dev->fd = open(ph, O_RDONLY);
    REQUIRE(dev->fd >= 0);
    vmb_disk_ops ops = {.userdata = dev, .size = file_size, .read_at = file_read,
                        .destroy = list_file_destroy};
    REQUIRE_OK(vmb_disks_add_host(disks, "data", &ops, NULL));
    CHECK(atomic_load(&g_list_destroys) == 0);
    /* A refused host disk is given back at once: its destroy runs. */
    file_dev *dup = (file_dev *)malloc(sizeof *dup);
    REQUIRE(dup != NULL);
    dup->fd = open(ph, O_RDONLY);
    vmb_disk_ops dup_ops = ops;
    dup_ops.userdata = dup;
    CHECK(vmb_disks_add_host(disks, "boot", &dup_ops, NULL) == VMB_ERR_INVALID_ARGUMENT);
    CHECK(atomic_load(&g_list_destroys) == 1);

    /* Asking for application consistency of disks read as they are: the
     * point says what it got, and a warning says why. */
    vmb_job *job = NULL;
    REQUIRE_OK(vmb_job_new(&job));
    REQUIRE_OK(vmb_job_set_consistency(job, VMB_CONSISTENCY_APPLICATION));
    vmb_point *first = NULL, *second = NULL;
    REQUIRE_OK(vmb_vault_backup_disks(g_vault, "mixedvm", disks, job, &first));
    vmb_consistency got = 99, wanted = 99;
    REQUIRE_OK(vmb_point_consistency(first, &got));
    REQUIRE_OK(vmb_point_wanted_consistency(first, &wanted));
    CHECK(got == VMB_CONSISTENCY_CRASH && wanted == VMB_CONSISTENCY_APPLICATION);
    size_t nw = 0, found = 0;
    REQUIRE_OK(vmb_point_warning_count(first, &nw));
    for (size_t i = 0; i < nw; i++) {
        const char *w = NULL;
        REQUIRE_OK(vmb_point_warning(first, i, &w));
        if (strstr(w, "asked for application consistency, got crash") != NULL) found++;
    }
    CHECK(found == 1);
    size_t n = 0;
    const char *name = NULL;
    REQUIRE_OK(vmb_point_disk_count(first, &n));
    CHECK(n == 3);
    const char *want_names[] = {"boot", "disk.img", "data"};
    for (size_t i = 0; i < n && i < 3; i++) {
        REQUIRE_OK(vmb_point_disk_name(first, i, &name));
        CHECK(strcmp(name, want_names[i]) == 0);
    }

    /* Under a minimum it cannot meet, nothing is committed. */
    REQUIRE_OK(vmb_job_set_min_consistency(job, VMB_CONSISTENCY_FILESYSTEM));
    CHECK(vmb_vault_backup_disks(g_vault, "mixedvm", disks, job, NULL) == VMB_ERR_PROVIDER);
    CHECK(LAST_ERROR_HAS("at least filesystem consistency is required"));
    CHECK(vmb_job_set_min_consistency(job, 7) == VMB_ERR_INVALID_ARGUMENT);
    vmb_job_free(job);

    /* The list is reused: one block of the host disk changes. */
    data[host_len / 2] ^= 0xff;
    REQUIRE(write_file(ph, data, host_len) == 0);
    REQUIRE_OK(vmb_vault_backup_disks(g_vault, "mixedvm", disks, NULL, &second));
    vmb_backup_stats st = {0};
    REQUIRE_OK(vmb_point_stats(second, &st));
    CHECK(st.bytes_new == 64 * 1024);
    vmb_point_list *list = NULL;
    REQUIRE_OK(vmb_vault_list_points(g_vault, "mixedvm", &list));
    size_t count = 0;
    REQUIRE_OK(vmb_point_list_len(list, &count));
    CHECK(count == 2);
    vmb_point_list_free(list);

    CHECK(file_restore_matches(second, "boot", boot, img_len));
    CHECK(file_restore_matches(second, "disk.img", extra, img_len));
    CHECK(file_restore_matches(second, "data", data, host_len));

    /* Names that look like indexes are names: disk "1" is index 0 here. */
    vmb_disks *numbered = NULL;
    vmb_point *third = NULL;
    REQUIRE_OK(vmb_disks_new(&numbered));
    REQUIRE_OK(vmb_disks_add_image(numbered, "1", p2));
    REQUIRE_OK(vmb_disks_add_image(numbered, "0", p1));
    REQUIRE_OK(vmb_vault_backup_disks(g_vault, "numbered", numbered, NULL, &third));
    vmb_disks_free(numbered);
    CHECK(file_restore_matches(third, "1", extra, img_len));
    CHECK(file_restore_matches(third, "0", boot, img_len));
    vmb_point_free(third);

    CHECK(atomic_load(&g_list_destroys) == 1);
    vmb_disks_free(disks); /* gives the host disk back */
    CHECK(atomic_load(&g_list_destroys) == 2);
    vmb_disks_free(NULL);
    vmb_point_free(first);
    vmb_point_free(second);
    free(boot);
    free(extra);
    free(data);
    free(p1);
    free(p2);
    free(ph);
    free(d1);
    free(d2);
}

int main(void) {
    g_dir = make_temp_dir("host-c");
    if (g_dir == NULL) {
        perror("mkdtemp");
        return 2;
    }
    atomic_init(&g_prepares, 0);
    RUN(version_and_vault);
    RUN(image_vm_twice);
    RUN(host_vm_twice);
    RUN(cancelled_job_leaves_vault_as_it_was);
    RUN(list_and_find_points);
    RUN(verify_vault);
    RUN(restore_and_verify_progress);
    RUN(prune_and_gc);
    RUN(verify_reports_damage);
    RUN(repair_and_allow_damaged_restore);
    RUN(mixed_named_disks_in_one_list);
    vmb_vault_free(g_vault);
    free(g_file_disk);
    remove_tree(g_dir);
    free(g_dir);
    return SUMMARY("host.c");
}
