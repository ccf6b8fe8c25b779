/* The C ABI's error paths: NULL pointers, bad paths, non-UTF-8 strings,
 * bad names and values, host callbacks that fail (the message names the
 * disk and offset), a slow callback that still completes, and out-params
 * left untouched on failure; a vault on object storage (Azurite).
 *
 * Built with: cc -std=c11 -Wall -Wextra -Werror errors.c $(pkg-config --cflags --libs vmbackup) */
#define _XOPEN_SOURCE 700

#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "util.h"

#define MiB (1024u * 1024u)

static char *g_dir;
static vmb_vault *g_vault;
static atomic_int g_destroys, g_releases;

/* ------------------------------------------------------- a host disk */

typedef struct {
    uint8_t *data;
    uint64_t size;
    uint64_t fail_at;  /* a read covering this offset fails; UINT64_MAX: none */
    int fail_code;     /* what that read returns: 0 for EIO and an explanation */
    long sleep_ms;     /* each read sleeps this long */
    int bad_ranges;    /* allocated() answers with messy ranges */
    atomic_int reads;
} buf_disk;

static buf_disk *buf_disk_new(uint64_t size, uint32_t seed) {
    buf_disk *d = (buf_disk *)calloc(1, sizeof *d);
    if (d == NULL) return NULL;
    d->data = (uint8_t *)malloc(size);
    if (d->data == NULL) {
        free(d);
        return NULL;
    }
    fill_pattern(d->data, size, seed);
    d->size = size;
    d->fail_at = UINT64_MAX;
    atomic_init(&d->reads, 0);
    return d;
}

static int bd_size(void *ud, uint64_t *size) {
    *size = ((buf_disk *)ud)->size;
    return 0;
}

static int bd_read(void *ud, uint64_t offset, uint8_t *buf, size_t len) {
    buf_disk *d = (buf_disk *)ud;
    atomic_fetch_add(&d->reads, 1);
    if (d->sleep_ms > 0) sleep_ms(d->sleep_ms);
    if (d->fail_at >= offset && d->fail_at < offset + len) {
        if (d->fail_code != 0) return d->fail_code;
        char msg[96];
        snprintf(msg, sizeof msg, "sector %llu is unreadable",
                 (unsigned long long)(d->fail_at / 512));
        vmb_callback_error(msg);
        return EIO;
    }
    memcpy(buf, d->data + offset, len);
    return 0;
}

/* For the first window: ranges out of order, overlapping, and reaching
 * past the window; the library sorts, merges and clips them. The hole
 * [350000, 600000) holds whole blocks [393216, 589824) that read as zeros. */
static int bd_allocated(void *ud, uint64_t start, uint64_t end, vmb_ranges *ranges) {
    buf_disk *d = (buf_disk *)ud;
    (void)end;
    if (!d->bad_ranges || start != 0) return VMB_MAP_UNKNOWN;
    if (vmb_ranges_add(ranges, 600000, 100000000) != VMB_OK || vmb_ranges_add(ranges, 0, 300000) != VMB_OK ||
        vmb_ranges_add(ranges, 200000, 150000) != VMB_OK)
        return EINVAL;
    if (vmb_ranges_add(ranges, UINT64_MAX, 2) != VMB_ERR_INVALID_ARGUMENT) return EINVAL;
    return 0;
}

static void bd_destroy(void *ud) {
    buf_disk *d = (buf_disk *)ud;
    free(d->data);
    free(d);
    atomic_fetch_add(&g_destroys, 1);
}

/* ------------------------------------------------------- a provider */

typedef struct {
    buf_disk *disk;      /* handed over at the snapshot */
    const char *disk_name;
    int fail_snapshot;   /* the snapshot fails after adding its disk */
    int skip_disk;       /* the snapshot adds no disk */
    int bad_achieved;    /* the snapshot claims consistency 9 */
    int snapshots;
} prov;

static int p_snapshot(void *ud, const char *vm, vmb_consistency wanted, vmb_consistency *achieved,
                      vmb_snapshot *snap) {
    prov *p = (prov *)ud;
    (void)vm;
    p->snapshots++;
    if (!p->skip_disk) {
        vmb_disk_ops ops = {0, p->disk, bd_size, bd_read, bd_allocated, NULL, bd_destroy};
        p->disk = NULL; /* the library owns it now */
        if (vmb_snapshot_add_disk(snap, p->disk_name, &ops, NULL) != VMB_OK) return EINVAL;
    }
    if (p->fail_snapshot) {
        vmb_callback_error("the hypervisor refused the snapshot");
        return EBUSY;
    }
    *achieved = p->bad_achieved ? 9 : wanted;
    return 0;
}

static int p_release(void *ud, const char *vm) {
    (void)ud;
    (void)vm;
    atomic_fetch_add(&g_releases, 1);
    return 0;
}

static vmb_provider provider_of(prov *p) {
    vmb_provider t = {0, p, NULL, NULL, p_snapshot, p_release};
    return t;
}

/* ------------------------------------------------------------ cases */

static void setup(void) {
    char *path = join(g_dir, "vault");
    REQUIRE_OK(vmb_vault_init(path, &g_vault));
    free(path);
}

static void status_texts_and_version(void) {
    for (int code = 0; code <= 22; code++) {
        const char *s = vmb_status_str(code);
        CHECK(s != NULL && strlen(s) > 0 && strcmp(s, "unknown status code") != 0);
    }
    CHECK(strcmp(vmb_status_str(23), "unknown status code") == 0);
    CHECK(strcmp(vmb_status_str(-1), "unknown status code") == 0);
    CHECK(strcmp(vmb_status_str(VMB_ERR_CANCELLED), vmb_status_str(15)) == 0);
    const char *v = vmb_version();
    CHECK(v != NULL && v[0] >= '0' && v[0] <= '9' && strchr(v, '.') != NULL);
    /* The header's compile-time version is the library's. */
    char built[32];
    snprintf(built, sizeof built, "%d.%d.%d", VMB_VERSION_MAJOR, VMB_VERSION_MINOR, VMB_VERSION_PATCH);
    CHECK(strcmp(v, built) == 0);
#if VMB_VERSION_MAJOR > 0 || VMB_VERSION_MINOR >= 1
    CHECK(1); /* usable in #if */
#else
    CHECK(0);
#endif
}

/* The last error survives the calls the header says leave it intact, so
 * that printing it beside its status text, after freeing, is safe. */
static void last_error_lifetime(void) {
    vmb_job *job = NULL;
    REQUIRE_OK(vmb_job_new(&job));
    vmb_status st = vmb_vault_open("/nonexistent/vault", NULL);
    CHECK(st == VMB_ERR_NULL_ARGUMENT);
    const char *e = vmb_last_error();
    char copy[256];
    snprintf(copy, sizeof copy, "%s", e);
    CHECK(strlen(copy) > 0);
    (void)vmb_status_str(st);
    (void)vmb_version();
    vmb_job_free(job);
    vmb_point_free(NULL);
    vmb_disks_free(NULL);
    CHECK(vmb_last_error() == e);
    CHECK(strcmp(e, copy) == 0);
    char line[512];
    snprintf(line, sizeof line, "%s: %s", vmb_status_str(st), vmb_last_error());
    CHECK(strstr(line, copy) != NULL);
    /* A call that returns a status replaces it. */
    vmb_job *other = NULL;
    REQUIRE_OK(vmb_job_new(&other));
    CHECK(strcmp(vmb_last_error(), "") == 0);
    vmb_job_free(other);
}

static void null_pointers(void) {
    vmb_vault *sentinel = (vmb_vault *)&g_destroys, *v = sentinel;
    REQUIRE_STATUS(vmb_vault_open(NULL, &v), VMB_ERR_NULL_ARGUMENT);
    CHECK(v == sentinel); /* out-params are written only on success */
    CHECK(LAST_ERROR_HAS("path is NULL"));
    REQUIRE_STATUS(vmb_vault_init(NULL, &v), VMB_ERR_NULL_ARGUMENT);
    REQUIRE_STATUS(vmb_vault_open("/", NULL), VMB_ERR_NULL_ARGUMENT);
    CHECK(LAST_ERROR_HAS("out is NULL"));

    const char *images[] = {"/nonexistent/x.img", NULL};
    vmb_point *pt = NULL;
    REQUIRE_STATUS(vmb_vault_backup_images(NULL, "vm", images, 1, NULL, &pt), VMB_ERR_NULL_ARGUMENT);
    REQUIRE_STATUS(vmb_vault_backup_images(g_vault, NULL, images, 1, NULL, &pt), VMB_ERR_NULL_ARGUMENT);
    REQUIRE_STATUS(vmb_vault_backup_images(g_vault, "vm", NULL, 1, NULL, &pt), VMB_ERR_NULL_ARGUMENT);
    REQUIRE_STATUS(vmb_vault_backup_images(g_vault, "vm", images, 2, NULL, &pt), VMB_ERR_NULL_ARGUMENT);
    CHECK(LAST_ERROR_HAS("images[1]"));
    REQUIRE_STATUS(vmb_vault_backup_images(g_vault, "vm", images, 0, NULL, &pt),
                   VMB_ERR_INVALID_ARGUMENT);
    CHECK(pt == NULL);
    REQUIRE_STATUS(vmb_vault_backup_host(g_vault, "vm", images, 1, NULL, NULL, NULL),
                   VMB_ERR_NULL_ARGUMENT);
    REQUIRE_STATUS(vmb_vault_list_points(g_vault, NULL, NULL), VMB_ERR_NULL_ARGUMENT);
    REQUIRE_STATUS(vmb_vault_find_point(g_vault, "vm", NULL, &pt), VMB_ERR_NULL_ARGUMENT);
    REQUIRE_STATUS(vmb_vault_restore_disk_to_file(g_vault, NULL, "d", "/tmp/x", NULL, NULL),
                   VMB_ERR_NULL_ARGUMENT);
    REQUIRE_STATUS(vmb_vault_restore_disk(g_vault, NULL, "d", NULL, NULL, NULL), VMB_ERR_NULL_ARGUMENT);
    REQUIRE_STATUS(vmb_vault_verify(NULL, NULL, NULL, NULL, NULL), VMB_ERR_NULL_ARGUMENT);
    REQUIRE_STATUS(vmb_vault_verify(g_vault, NULL, NULL, NULL, NULL), VMB_ERR_NULL_ARGUMENT);

    const char *s = NULL;
    size_t n = 0;
    bool b = false;
    REQUIRE_STATUS(vmb_point_id(NULL, &s), VMB_ERR_NULL_ARGUMENT);
    REQUIRE_STATUS(vmb_point_disk_count(NULL, &n), VMB_ERR_NULL_ARGUMENT);
    REQUIRE_STATUS(vmb_point_list_len(NULL, &n), VMB_ERR_NULL_ARGUMENT);
    REQUIRE_STATUS(vmb_verify_report_ok(NULL, &b), VMB_ERR_NULL_ARGUMENT);
    REQUIRE_STATUS(vmb_job_new(NULL), VMB_ERR_NULL_ARGUMENT);
    REQUIRE_STATUS(vmb_job_cancel(NULL), VMB_ERR_NULL_ARGUMENT);
    REQUIRE_STATUS(vmb_job_set_progress(NULL, NULL, NULL), VMB_ERR_NULL_ARGUMENT);
    REQUIRE_STATUS(vmb_ranges_add(NULL, 0, 1), VMB_ERR_NULL_ARGUMENT);
    REQUIRE_STATUS(vmb_callback_error(NULL), VMB_ERR_NULL_ARGUMENT);
    /* Outside a callback there is no failure to explain: refused, not
     * silently kept for whatever fails next. */
    REQUIRE_STATUS(vmb_callback_error("too early"), VMB_ERR_INVALID_ARGUMENT);
    CHECK(LAST_ERROR_HAS("no callback of this library runs on this thread"));
    REQUIRE_STATUS(vmb_snapshot_warn(NULL, "w"), VMB_ERR_NULL_ARGUMENT);

    /* A disk added to no snapshot: refused, and its userdata destroyed. */
    buf_disk *d = buf_disk_new(4096, 1);
    REQUIRE(d != NULL);
    vmb_disk_ops ops = {0, d, bd_size, bd_read, NULL, NULL, bd_destroy};
    int destroys = atomic_load(&g_destroys);
    REQUIRE_STATUS(vmb_snapshot_add_disk(NULL, "d", &ops, NULL), VMB_ERR_NULL_ARGUMENT);
    CHECK(atomic_load(&g_destroys) == destroys + 1);

    /* Freeing NULL does nothing. */
    vmb_vault_free(NULL);
    vmb_point_free(NULL);
    vmb_point_list_free(NULL);
    vmb_verify_report_free(NULL);
    vmb_job_free(NULL);
    /* A success clears the last error. */
    vmb_job *job = NULL;
    REQUIRE_OK(vmb_job_new(&job));
    CHECK(strcmp(vmb_last_error(), "") == 0);
    vmb_job_free(job);
}

static void bad_paths(void) {
    vmb_vault *v = NULL;
    REQUIRE_STATUS(vmb_vault_open("/nonexistent/vault", &v), VMB_ERR_NOT_A_VAULT);
    CHECK(LAST_ERROR_HAS("/nonexistent/vault"));
    CHECK(v == NULL);
    char *vault = join(g_dir, "vault");
    REQUIRE_STATUS(vmb_vault_init(vault, &v), VMB_ERR_ALREADY_EXISTS);
    free(vault);
    REQUIRE_STATUS(vmb_vault_init("/proc/version/vault", &v), VMB_ERR_IO);
    CHECK(v == NULL);

    const char *missing[] = {"/nonexistent/disk.img"};
    REQUIRE_STATUS(vmb_vault_backup_images(g_vault, "vm", missing, 1, NULL, NULL), VMB_ERR_IO);
    CHECK(LAST_ERROR_HAS("/nonexistent/disk.img"));
    const char *dir_only[] = {"/"};
    CHECK(vmb_vault_backup_images(g_vault, "vm", dir_only, 1, NULL, NULL) != VMB_OK);

    /* A real point, then restores to impossible places. */
    uint8_t data[100000];
    fill_pattern(data, sizeof data, 7);
    char *img = join(g_dir, "small.img");
    REQUIRE(write_file(img, data, sizeof data) == 0);
    const char *images[] = {img};
    vmb_point *p = NULL;
    REQUIRE_OK(vmb_vault_backup_images(g_vault, "small", images, 1, NULL, &p));
    REQUIRE_STATUS(vmb_vault_restore_disk_to_file(g_vault, p, "small.img", "/nonexistent/dir/out.img",
                                            NULL, NULL),
                   VMB_ERR_IO);
    CHECK(LAST_ERROR_HAS("/nonexistent/dir"));
    REQUIRE_STATUS(vmb_vault_restore_disk_to_file(g_vault, p, "nope", "/tmp/never", NULL, NULL),
                   VMB_ERR_NOT_FOUND);
    CHECK(LAST_ERROR_HAS("disk nope"));
    vmb_point *q = NULL;
    REQUIRE_STATUS(vmb_vault_find_point(g_vault, "small", "zzzz", &q), VMB_ERR_NOT_FOUND);
    CHECK(q == NULL);
    REQUIRE_STATUS(vmb_vault_find_point(g_vault, "nobody", "latest", &q), VMB_ERR_NOT_FOUND);
    /* A typo in a VM's name: an error, not an empty list or a clean bill. */
    vmb_point_list *none = NULL;
    REQUIRE_STATUS(vmb_vault_list_points(g_vault, "nobody", &none), VMB_ERR_NOT_FOUND);
    CHECK(none == NULL);
    CHECK(LAST_ERROR_HAS("points of vm nobody not found"));
    vmb_verify_report *vr = NULL;
    REQUIRE_STATUS(vmb_vault_verify(g_vault, "nobody", NULL, NULL, &vr), VMB_ERR_NOT_FOUND);
    CHECK(vr == NULL);
    vmb_point_free(p);
    free(img);
}

static void non_utf8_strings(void) {
    vmb_vault *v = NULL;
    REQUIRE_STATUS(vmb_vault_open("/tmp/\xff\xfe", &v), VMB_ERR_INVALID_UTF8);
    CHECK(LAST_ERROR_HAS("UTF-8"));
    const char *images[] = {"/tmp/a.img"};
    REQUIRE_STATUS(vmb_vault_backup_images(g_vault, "web\xc3\x28", images, 1, NULL, NULL),
                   VMB_ERR_INVALID_UTF8);
    CHECK(LAST_ERROR_HAS("vm name"));
    const char *bad_images[] = {"/tmp/\x80.img"};
    REQUIRE_STATUS(vmb_vault_backup_images(g_vault, "web", bad_images, 1, NULL, NULL),
                   VMB_ERR_INVALID_UTF8);
    CHECK(LAST_ERROR_HAS("images[0]"));
    const char *bad_disks[] = {"disk\xe2\x82"};
    prov p;
    memset(&p, 0, sizeof p);
    vmb_provider t = provider_of(&p);
    REQUIRE_STATUS(vmb_vault_backup_host(g_vault, "web", bad_disks, 1, &t, NULL, NULL),
                   VMB_ERR_INVALID_UTF8);
    REQUIRE_STATUS(vmb_callback_error("\xff"), VMB_ERR_INVALID_UTF8);
    vmb_point_list *l = NULL;
    REQUIRE_STATUS(vmb_vault_list_points(g_vault, "\xc0\xaf", &l), VMB_ERR_INVALID_UTF8);
    CHECK(l == NULL);

    /* A snapshot that names its disk in bad UTF-8 fails the job; the
     * disk's userdata is still destroyed. */
    const char *disks[] = {"d0"};
    p.disk = buf_disk_new(MiB, 3);
    p.disk_name = "d\xff";
    REQUIRE(p.disk != NULL);
    int destroys = atomic_load(&g_destroys);
    REQUIRE_STATUS(vmb_vault_backup_host(g_vault, "web", disks, 1, &t, NULL, NULL), VMB_ERR_PROVIDER);
    CHECK(atomic_load(&g_destroys) == destroys + 1);
}

static void bad_names_and_values(void) {
    const char *images[] = {"/tmp/a.img"};
    REQUIRE_STATUS(vmb_vault_backup_images(g_vault, "../etc", images, 1, NULL, NULL),
                   VMB_ERR_INVALID_ARGUMENT);
    CHECK(LAST_ERROR_HAS("vm name"));
    REQUIRE_STATUS(vmb_vault_backup_images(g_vault, "", images, 1, NULL, NULL),
                   VMB_ERR_INVALID_ARGUMENT);
    const char *twice[] = {"a", "a"};
    prov p;
    memset(&p, 0, sizeof p);
    vmb_provider t = provider_of(&p);
    REQUIRE_STATUS(vmb_vault_backup_host(g_vault, "vm", twice, 2, &t, NULL, NULL),
                   VMB_ERR_INVALID_ARGUMENT);
    CHECK(p.snapshots == 0);
    vmb_provider no_snapshot = {0, NULL, NULL, NULL, NULL, NULL};
    REQUIRE_STATUS(vmb_vault_backup_host(g_vault, "vm", images, 1, &no_snapshot, NULL, NULL),
                   VMB_ERR_INVALID_ARGUMENT);
    CHECK(LAST_ERROR_HAS("snapshot callback"));

    vmb_job *job = NULL;
    REQUIRE_OK(vmb_job_new(&job));
    REQUIRE_STATUS(vmb_job_set_consistency(job, 7), VMB_ERR_INVALID_ARGUMENT);
    REQUIRE_STATUS(vmb_job_set_block_size(job, 1000), VMB_ERR_INVALID_ARGUMENT);
    REQUIRE_STATUS(vmb_job_set_block_size(job, 8u << 20), VMB_ERR_INVALID_ARGUMENT);
    REQUIRE_OK(vmb_job_set_block_size(job, 16 * 1024));
    REQUIRE_OK(vmb_job_set_consistency(job, VMB_CONSISTENCY_CRASH));
    vmb_job_free(job);

    vmb_point *pt = NULL;
    REQUIRE_OK(vmb_vault_find_point(g_vault, "small", "latest", &pt));
    const char *s = NULL;
    uint64_t size = 0;
    REQUIRE_STATUS(vmb_point_disk_name(pt, 1, &s), VMB_ERR_INVALID_ARGUMENT);
    CHECK(s == NULL);
    REQUIRE_STATUS(vmb_point_disk_size(pt, (size_t)-1, &size), VMB_ERR_INVALID_ARGUMENT);
    REQUIRE_STATUS(vmb_point_warning(pt, 99, &s), VMB_ERR_INVALID_ARGUMENT);
    vmb_point_list *l = NULL;
    REQUIRE_OK(vmb_vault_list_points(g_vault, "small", &l));
    vmb_point *none = NULL;
    REQUIRE_STATUS(vmb_point_list_get(l, 5, &none), VMB_ERR_INVALID_ARGUMENT);
    CHECK(none == NULL);
    vmb_point_list_free(l);
    vmb_write_target no_write = {0, NULL, NULL, NULL, NULL};
    REQUIRE_STATUS(vmb_vault_restore_disk(g_vault, pt, "small.img", &no_write, NULL, NULL),
                   VMB_ERR_INVALID_ARGUMENT);
    vmb_point_free(pt);
}

/* A host read that fails: the status says so, the message names the VM,
 * the disk, the offset and what the host said; nothing is committed and
 * the snapshot is released. */
static void read_callback_error(void) {
    prov p;
    memset(&p, 0, sizeof p);
    p.disk = buf_disk_new(2 * MiB, 4);
    REQUIRE(p.disk != NULL);
    p.disk->fail_at = MiB + 1000; /* inside the block at byte 1048576 */
    p.disk_name = "bad";
    vmb_provider t = provider_of(&p);
    const char *disks[] = {"bad"};
    int releases = atomic_load(&g_releases), destroys = atomic_load(&g_destroys);
    vmb_point *out = NULL;
    REQUIRE_STATUS(vmb_vault_backup_host(g_vault, "failing", disks, 1, &t, NULL, &out),
                   VMB_ERR_DEVICE_READ);
    const char *m = vmb_last_error();
    CHECK(strstr(m, "disk bad") != NULL);
    CHECK(strstr(m, "vm failing") != NULL);
    CHECK(strstr(m, "at byte 1048576") != NULL);
    CHECK(strstr(m, "sector 2049 is unreadable") != NULL);
    CHECK(strstr(m, "read_at") != NULL);
    /* A positive code is named as the errno it is read as. */
    CHECK(strstr(m, "errno 5 (Input/output error)") != NULL);
    CHECK(strstr(m, "os error") == NULL);
    if (strstr(m, "at byte 1048576") == NULL) fprintf(stderr, "message: %s\n", m);
    CHECK(out == NULL);
    CHECK(atomic_load(&g_releases) == releases + 1);
    CHECK(atomic_load(&g_destroys) == destroys + 1);
    /* Nothing was committed: the vault holds no point of the VM. */
    vmb_point_list *l = NULL;
    CHECK(vmb_vault_list_points(g_vault, "failing", &l) == VMB_ERR_NOT_FOUND);
    CHECK(l == NULL);

    /* A negative code is the host's own, shown as it is, not as an errno;
     * the explanation of the failure before does not linger. */
    p.disk = buf_disk_new(2 * MiB, 4);
    REQUIRE(p.disk != NULL);
    p.disk->fail_at = MiB + 1000;
    p.disk->fail_code = -42;
    REQUIRE_STATUS(vmb_vault_backup_host(g_vault, "failing", disks, 1, &t, NULL, NULL),
                   VMB_ERR_DEVICE_READ);
    CHECK(LAST_ERROR_HAS("read_at callback failed with code -42"));
    CHECK(!LAST_ERROR_HAS("errno"));
    CHECK(!LAST_ERROR_HAS("unreadable"));
}

/* Provider failures: a failed snapshot (no release, disks destroyed), a
 * snapshot missing a disk, an impossible consistency (both released). */
static void provider_errors(void) {
    const char *disks[] = {"d0"};
    prov p;
    memset(&p, 0, sizeof p);
    vmb_provider t = provider_of(&p);
    int releases = atomic_load(&g_releases), destroys = atomic_load(&g_destroys);

    p.disk = buf_disk_new(MiB, 5);
    p.disk_name = "d0";
    p.fail_snapshot = 1;
    REQUIRE_STATUS(vmb_vault_backup_host(g_vault, "pvm", disks, 1, &t, NULL, NULL), VMB_ERR_PROVIDER);
    CHECK(LAST_ERROR_HAS("snapshot of vm pvm failed"));
    CHECK(LAST_ERROR_HAS("the hypervisor refused the snapshot"));
    CHECK(atomic_load(&g_releases) == releases);
    CHECK(atomic_load(&g_destroys) == destroys + 1);

    p.fail_snapshot = 0;
    p.skip_disk = 1;
    REQUIRE_STATUS(vmb_vault_backup_host(g_vault, "pvm", disks, 1, &t, NULL, NULL), VMB_ERR_PROVIDER);
    CHECK(LAST_ERROR_HAS("no device for disk d0"));
    CHECK(atomic_load(&g_releases) == releases + 1);

    p.skip_disk = 0;
    p.bad_achieved = 1;
    p.disk = buf_disk_new(MiB, 5);
    REQUIRE_STATUS(vmb_vault_backup_host(g_vault, "pvm", disks, 1, &t, NULL, NULL), VMB_ERR_PROVIDER);
    CHECK(LAST_ERROR_HAS("consistency 9"));
    CHECK(atomic_load(&g_releases) == releases + 2);
    CHECK(atomic_load(&g_destroys) == destroys + 2);

    /* A disk added under a name the VM does not have. */
    p.bad_achieved = 0;
    p.disk = buf_disk_new(MiB, 5);
    p.disk_name = "other";
    REQUIRE_STATUS(vmb_vault_backup_host(g_vault, "pvm", disks, 1, &t, NULL, NULL), VMB_ERR_PROVIDER);
    CHECK(atomic_load(&g_destroys) == destroys + 3);
}

/* A slow host (every read sleeps) still completes; messy allocation maps
 * are cleaned up by the library; the restore matches. */
static void slow_callback_completes(void) {
    prov p;
    memset(&p, 0, sizeof p);
    p.disk = buf_disk_new(2 * MiB, 6);
    REQUIRE(p.disk != NULL);
    p.disk->sleep_ms = 15;
    p.disk->bad_ranges = 1;
    p.disk_name = "slow";
    uint8_t *copy = (uint8_t *)malloc(2 * MiB);
    REQUIRE(copy != NULL);
    memcpy(copy, p.disk->data, 2 * MiB);
    vmb_provider t = provider_of(&p);
    const char *disks[] = {"slow"};
    vmb_point *pt = NULL;
    REQUIRE_OK(vmb_vault_backup_host(g_vault, "slowvm", disks, 1, &t, NULL, &pt));
    vmb_backup_stats st = {0};
    REQUIRE_OK(vmb_point_stats(pt, &st));
    CHECK(st.bytes_scanned == 2 * MiB);
    /* Whole blocks outside every range read as zeros, as the map said. */
    memset(copy + 393216, 0, 589824 - 393216);
    char *out = join(g_dir, "slow.img");
    REQUIRE_OK(vmb_vault_restore_disk_to_file(g_vault, pt, "slow", out, NULL, NULL));
    size_t len = 0;
    uint8_t *got = read_file(out, &len);
    CHECK(got != NULL && len == 2 * MiB);
    CHECK(got != NULL && memcmp(got, copy, 2 * MiB) == 0);
    CHECK(st.bytes_read == 2 * MiB - (589824 - 393216));
    free(got);
    free(out);
    free(copy);
    vmb_point_free(pt);
}

/* A restore target that fails: the message names the disk and offset. */
static int failing_write(void *ud, uint64_t offset, const uint8_t *data, size_t len) {
    (void)ud;
    (void)data;
    (void)len;
    if (offset >= 65536) {
        vmb_callback_error("the target disk is full");
        return ENOSPC;
    }
    return 0;
}

static void write_callback_error(void) {
    vmb_point *pt = NULL;
    REQUIRE_OK(vmb_vault_find_point(g_vault, "small", "latest", &pt));
    vmb_write_target t = {0, NULL, failing_write, NULL, NULL};
    vmb_restore_stats st = {0};
    memset(&st, 0x55, sizeof st);
    st.struct_size = sizeof st;
    REQUIRE_STATUS(vmb_vault_restore_disk(g_vault, pt, "small.img", &t, NULL, &st),
                   VMB_ERR_RESTORE_WRITE);
    CHECK(LAST_ERROR_HAS("disk small.img"));
    CHECK(LAST_ERROR_HAS("at byte 65536"));
    CHECK(LAST_ERROR_HAS("the target disk is full"));
    CHECK(st.size == 0x5555555555555555ull); /* untouched on failure */
    CHECK(st.struct_size == sizeof st);
    vmb_point_free(pt);
}

/* A vault on object storage (Azurite, which scripts/test starts and names
 * in VMB_AZURITE): init, backup, restore bit for bit, verify, reopen; a bad
 * URL is refused naming it. */
static void remote_vault(void) {
    vmb_vault *v = NULL;
    REQUIRE_STATUS(vmb_vault_open("gs://bucket/prefix", &v), VMB_ERR_NOT_A_VAULT);
    REQUIRE_STATUS(vmb_vault_open_url("gs://bucket/prefix", NULL, NULL, &v), VMB_ERR_INVALID_ARGUMENT);
    CHECK(LAST_ERROR_HAS("gs://bucket/prefix"));
    CHECK(v == NULL);
    SERVICE_OR_SKIP(endpoint, "VMB_AZURITE");
    char url[128];
    snprintf(url, sizeof url, "az://vmbackup/c-%ld-%ld", (long)getpid(), (long)time(NULL));
    char *cache = join(g_dir, "remote-cache");
    REQUIRE_OK(vmb_vault_init_url(url, cache, endpoint, &v));
    REQUIRE_STATUS(vmb_vault_init_url(url, cache, endpoint, &v), VMB_ERR_ALREADY_EXISTS);
    CHECK(LAST_ERROR_HAS(url));
    uint8_t data[300000];
    fill_pattern(data, sizeof data, 11);
    char *img = join(g_dir, "remote.img");
    REQUIRE(write_file(img, data, sizeof data) == 0);
    const char *images[] = {img};
    vmb_point *p = NULL;
    REQUIRE_OK(vmb_vault_backup_images(v, "remote", images, 1, NULL, &p));
    vmb_vault_free(v);
    v = NULL;
    /* Another host: a cache of its own. */
    char *cache2 = join(g_dir, "remote-cache-2");
    REQUIRE_OK(vmb_vault_open_url(url, cache2, endpoint, &v));
    char *out = join(g_dir, "remote.out");
    REQUIRE_OK(vmb_vault_restore_disk_to_file(v, p, "remote.img", out, NULL, NULL));
    size_t len = 0;
    uint8_t *back = read_file(out, &len);
    CHECK(back != NULL && len == sizeof data && memcmp(back, data, len) == 0);
    free(back);
    vmb_verify_report *r = NULL;
    REQUIRE_OK(vmb_vault_verify(v, NULL, NULL, NULL, &r));
    bool ok = false;
    REQUIRE_OK(vmb_verify_report_ok(r, &ok));
    CHECK(ok);
    vmb_verify_report_free(r);
    vmb_point_free(p);
    vmb_vault_free(v);
    free(out);
    free(img);
    free(cache);
    free(cache2);
}

/* Extensible structs: a program built against a newer header (a larger
 * struct_size) is served when what it adds is zero, refused when it asks
 * for more; a size below the first layout is refused; an output struct
 * says how much was written. */
static void extensible_structs(void) {
    struct newer_ops {
        vmb_disk_ops ops;
        uint64_t added_by_a_later_version;
    } n;
    memset(&n, 0, sizeof n);
    n.ops.struct_size = sizeof n;
    n.ops.size = bd_size;
    n.ops.read_at = bd_read;
    n.ops.destroy = bd_destroy;
    vmb_disks *disks = NULL;
    REQUIRE_OK(vmb_disks_new(&disks));
    n.ops.userdata = buf_disk_new(MiB, 9);
    n.added_by_a_later_version = 1;
    CHECK(vmb_disks_add_host(disks, "newer", &n.ops, NULL) == VMB_ERR_INVALID_ARGUMENT);
    CHECK(LAST_ERROR_HAS("newer vmbackup.h"));
    /* A table the library cannot read is not taken: it stays the caller's. */
    bd_destroy(n.ops.userdata);
    n.ops.userdata = buf_disk_new(MiB, 9);
    n.added_by_a_later_version = 0;
    REQUIRE_OK(vmb_disks_add_host(disks, "newer", &n.ops, NULL));
    vmb_disk_ops older = n.ops;
    older.struct_size = 8; /* below the first layout */
    older.userdata = NULL;
    CHECK(vmb_disks_add_host(disks, "older", &older, NULL) == VMB_ERR_INVALID_ARGUMENT);
    CHECK(LAST_ERROR_HAS("smaller than its first layout"));
    vmb_point *pt = NULL;
    REQUIRE_OK(vmb_vault_backup_disks(g_vault, "extensible", disks, NULL, &pt));
    vmb_disks_free(disks);

    vmb_backup_stats st = {0};
    REQUIRE_OK(vmb_point_stats(pt, &st));
    CHECK(st.struct_size == sizeof st && st.bytes_scanned == MiB);
    vmb_backup_stats tiny = {0};
    tiny.struct_size = 8;
    CHECK(vmb_point_stats(pt, &tiny) == VMB_ERR_INVALID_ARGUMENT);
    CHECK(tiny.bytes_scanned == 0); /* nothing written */
    vmb_point_free(pt);
}

int main(void) {
    g_dir = make_temp_dir("errors-c");
    if (g_dir == NULL) {
        perror("mkdtemp");
        return 2;
    }
    atomic_init(&g_destroys, 0);
    atomic_init(&g_releases, 0);
    RUN(setup);
    if (g_vault == NULL) return SUMMARY("errors.c");
    RUN(status_texts_and_version);
    RUN(last_error_lifetime);
    RUN(null_pointers);
    RUN(bad_paths);
    RUN(non_utf8_strings);
    RUN(bad_names_and_values);
    RUN(extensible_structs);
    RUN(read_callback_error);
    RUN(provider_errors);
    RUN(slow_callback_completes);
    RUN(write_callback_error);
    RUN(remote_vault);
    vmb_vault_free(g_vault);
    remove_tree(g_dir);
    free(g_dir);
    return SUMMARY("errors.c");
}
