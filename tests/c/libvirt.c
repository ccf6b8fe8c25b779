/* libvirt domains from C: a provider handle for a real domain of the real
 * libvirtd that scripts/test starts (VMB_LIBVIRT_URI), defined and shut
 * off, so no guest has to boot here (the Rust tests boot one and cover the
 * running case): its disk read in place, the point crash-consistent with
 * the domain's XML stored, a second backup continuing the chain; errors
 * that name the domain and the setting at fault. Then the point brought
 * back: restored as a new domain, recovered instantly (the domain has no
 * OS, so it runs SeaBIOS while its disk moves), and boot-verified, which
 * fails because no guest agent ever answers.
 *
 * Built with: cc -std=c11 -Wall -Wextra -Werror libvirt.c $(pkg-config --cflags --libs vmbackup) */
#define _XOPEN_SOURCE 700

#include <sys/stat.h>

#include "check.h"
#include "util.h"

static char *g_dir;
static const char *g_uri;
static char g_domain[64];
static char g_cmd[4096];

static int sh(const char *fmt, const char *a, const char *b) {
    snprintf(g_cmd, sizeof g_cmd, fmt, a, b);
    return system(g_cmd);
}

/* Whether libvirt.so is mapped into this process. */
static int libvirt_mapped(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (f == NULL) return -1;
    char line[4096];
    int found = 0;
    while (!found && fgets(line, sizeof line, f) != NULL) found = strstr(line, "/libvirt.so") != NULL;
    fclose(f);
    return found;
}

/* The library does not link libvirt: nothing maps it until a domain is
 * asked for (the first backup below). */
static void libvirt_is_not_loaded_before_a_domain_is_asked_for(void) {
    char *path = join(g_dir, "plain");
    vmb_vault *v = NULL;
    REQUIRE_OK(vmb_vault_init(path, &v));
    CHECK(libvirt_mapped() == 0);
    vmb_vault_free(v);
    free(path);
}

static void setup(void) {
    g_uri = getenv("VMB_LIBVIRT_URI");
    if (g_uri == NULL) fprintf(stderr, "VMB_LIBVIRT_URI is not set (scripts/test starts libvirtd and sets it)\n");
    REQUIRE(g_uri != NULL);
    snprintf(g_domain, sizeof g_domain, "vmb-c-%ld", (long)getpid());
    char *disk = join(g_dir, "disk.qcow2");
    REQUIRE(sh("qemu-img create -q -f qcow2 %s 32M && qemu-io -f qcow2 -c 'write -P 0x5a 0 4M' %s >/dev/null",
               disk, disk) == 0);
    char xml[2048];
    snprintf(xml, sizeof xml,
             "<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os>"
             "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/>"
             "<target dev='vda' bus='virtio'/></disk>"
             "<disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk></devices></domain>",
             g_domain, disk);
    char *xml_path = join(g_dir, "domain.xml");
    REQUIRE(write_file(xml_path, (const uint8_t *)xml, strlen(xml)) == 0);
    REQUIRE(sh("virsh -q -c %s define %s >/dev/null", g_uri, xml_path) == 0);
    free(disk);
    free(xml_path);
}

static void a_shut_off_domain_is_read_in_place_with_its_xml(void) {
    char *path = join(g_dir, "vault");
    char *work = join(g_dir, "work");
    vmb_vault *v = NULL;
    vmb_provider_libvirt *p = NULL;
    vmb_job *job = NULL;
    vmb_point *first = NULL, *second = NULL;
    REQUIRE_OK(vmb_vault_init(path, &v));
    REQUIRE_OK(vmb_provider_libvirt_new(g_domain, g_uri, &p));
    REQUIRE_OK(vmb_provider_libvirt_set_work_dir(p, work));
    REQUIRE_OK(vmb_job_new(&job));
    REQUIRE_OK(vmb_job_set_consistency(job, VMB_CONSISTENCY_APPLICATION));
    REQUIRE_OK(vmb_vault_backup_libvirt(v, p, "c-vm", job, &first));
    CHECK(libvirt_mapped() == 1);

    const char *s = NULL;
    REQUIRE_OK(vmb_point_vm(first, &s));
    CHECK(strcmp(s, "c-vm") == 0);
    vmb_consistency c = VMB_CONSISTENCY_APPLICATION;
    REQUIRE_OK(vmb_point_consistency(first, &c));
    CHECK(c == VMB_CONSISTENCY_CRASH);
    size_t n = 0;
    REQUIRE_OK(vmb_point_disk_count(first, &n));
    CHECK(n == 1);
    REQUIRE_OK(vmb_point_disk_name(first, 0, &s));
    CHECK(strcmp(s, "vda") == 0);
    vmb_backup_stats st = {0};
    REQUIRE_OK(vmb_point_stats(first, &st));
    CHECK(st.bytes_scanned == 32u * 1024 * 1024);
    CHECK(st.bytes_read >= 4u * 1024 * 1024);
    const char *kind = NULL, *text = NULL;
    REQUIRE_OK(vmb_point_configuration(first, &kind, &text));
    REQUIRE(kind != NULL && text != NULL);
    CHECK(strcmp(kind, "libvirt-domain-xml") == 0);
    CHECK(strstr(text, g_domain) != NULL);
    int said = 0;
    REQUIRE_OK(vmb_point_warning_count(first, &n));
    for (size_t i = 0; i < n; i++) {
        REQUIRE_OK(vmb_point_warning(first, i, &s));
        if (strstr(s, "is shut off") != NULL) said = 1;
    }
    CHECK(said);

    /* Only vda: the CD-ROM is skipped; the next point follows the first. */
    REQUIRE_OK(vmb_provider_libvirt_include(p, "vda"));
    REQUIRE_OK(vmb_vault_backup_libvirt(v, p, NULL, job, &second));
    REQUIRE_OK(vmb_point_vm(second, &s));
    CHECK(strcmp(s, g_domain) == 0);
    vmb_point_free(first);
    vmb_point_free(second);
    vmb_job_free(job);
    vmb_provider_libvirt_free(p);
    vmb_vault_free(v);
    free(path);
    free(work);
}

static void errors_name_the_domain_and_the_setting(void) {
    char *path = join(g_dir, "vault-errors");
    vmb_vault *v = NULL;
    vmb_provider_libvirt *p = NULL;
    vmb_point *pt = (vmb_point *)&pt; /* untouched on failure */
    REQUIRE_OK(vmb_vault_init(path, &v));
    CHECK(vmb_provider_libvirt_new(NULL, g_uri, &p) == VMB_ERR_NULL_ARGUMENT);
    REQUIRE_OK(vmb_provider_libvirt_new("vmb-no-such-domain", g_uri, &p));
    CHECK(vmb_vault_backup_libvirt(v, p, NULL, NULL, &pt) != VMB_OK);
    CHECK(LAST_ERROR_HAS("vmb-no-such-domain"));
    CHECK(pt == (vmb_point *)&pt);
    vmb_provider_libvirt_free(p);

    REQUIRE_OK(vmb_provider_libvirt_new(g_domain, g_uri, &p));
    CHECK(vmb_provider_libvirt_set_min_consistency(p, 7) == VMB_ERR_INVALID_ARGUMENT);
    REQUIRE_OK(vmb_provider_libvirt_include(p, "vdz"));
    CHECK(vmb_vault_backup_libvirt(v, p, NULL, NULL, &pt) != VMB_OK);
    CHECK(LAST_ERROR_HAS("vdz"));
    vmb_provider_libvirt_free(p);

    /* A shut-off domain cannot give file-system consistency. */
    REQUIRE_OK(vmb_provider_libvirt_new(g_domain, g_uri, &p));
    REQUIRE_OK(vmb_provider_libvirt_set_min_consistency(p, VMB_CONSISTENCY_FILESYSTEM));
    CHECK(vmb_vault_backup_libvirt(v, p, NULL, NULL, &pt) != VMB_OK);
    CHECK(LAST_ERROR_HAS("shut off"));
    vmb_provider_libvirt_free(p);
    vmb_provider_libvirt_free(NULL);
    vmb_vault_free(v);
    free(path);
}

static int file_has(const char *path, uint8_t byte, size_t n) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) return 0;
    int ok = 1;
    for (size_t i = 0; i < n && ok; i++) ok = fgetc(f) == byte;
    fclose(f);
    return ok;
}

static void a_point_comes_back_as_a_domain_and_its_boot_is_judged(void) {
    char *path = join(g_dir, "vault-recovery");
    char *work = join(g_dir, "work");
    char *pool = join(g_dir, "pool");
    char restored[96], instant[96], file[512];
    snprintf(restored, sizeof restored, "%s-restored", g_domain);
    snprintf(instant, sizeof instant, "%s-instant", g_domain);
    vmb_vault *v = NULL;
    vmb_provider_libvirt *p = NULL;
    vmb_point *pt = NULL;
    vmb_domain_target *t = NULL;
    REQUIRE_OK(vmb_vault_init(path, &v));
    REQUIRE_OK(vmb_provider_libvirt_new(g_domain, g_uri, &p));
    REQUIRE_OK(vmb_provider_libvirt_set_work_dir(p, work));
    REQUIRE_OK(vmb_vault_backup_libvirt(v, p, NULL, NULL, &pt));

    /* Restored raw into the pool and defined, not started. */
    REQUIRE_OK(vmb_domain_target_new(restored, g_uri, &t));
    REQUIRE_OK(vmb_domain_target_set_pool(t, pool));
    REQUIRE_OK(vmb_domain_target_set_work_dir(t, work));
    REQUIRE_OK(vmb_domain_target_set_options(t, VMB_IMAGE_RAW, false, false));
    REQUIRE_OK(vmb_vault_restore_to_domain(v, pt, t, NULL));
    snprintf(file, sizeof file, "%s/%s-vda.raw", pool, restored);
    CHECK(file_has(file, 0x5a, 4u << 20));
    CHECK(sh("virsh -q -c %s domstate %s | grep -q 'shut off'", g_uri, restored) == 0);
    CHECK(vmb_vault_restore_to_domain(v, pt, t, NULL) == VMB_ERR_PROVIDER);
    CHECK(LAST_ERROR_HAS("exists"));
    vmb_domain_target_free(t);
    /* The point's own domain is never touched, even with replace. */
    REQUIRE_OK(vmb_domain_target_new(g_domain, g_uri, &t));
    REQUIRE_OK(vmb_domain_target_set_pool(t, pool));
    REQUIRE_OK(vmb_domain_target_set_options(t, VMB_IMAGE_QCOW2, true, false));
    CHECK(vmb_vault_restore_to_domain(v, pt, t, NULL) == VMB_ERR_PROVIDER);
    CHECK(LAST_ERROR_HAS("never touches"));
    vmb_domain_target_free(t);
    CHECK(vmb_domain_target_new(NULL, g_uri, &t) == VMB_ERR_NULL_ARGUMENT);

    /* Instantly: it runs at once and ends on a standalone overlay. */
    REQUIRE_OK(vmb_domain_target_new(instant, g_uri, &t));
    REQUIRE_OK(vmb_domain_target_set_pool(t, pool));
    REQUIRE_OK(vmb_domain_target_set_work_dir(t, work));
    double seconds = -1;
    REQUIRE_OK(vmb_vault_instant_restore(v, pt, t, 0, NULL, &seconds));
    CHECK(seconds >= 0);
    CHECK(sh("virsh -q -c %s domstate %s | grep -q running", g_uri, instant) == 0);
    snprintf(file, sizeof file, "%s/%s-vda.qcow2", pool, instant);
    /* qemu-img must read it (a missing file would pass a bare grep -v). */
    REQUIRE(sh("qemu-img info -U %s > %s.info", file, file) == 0);
    CHECK(sh("grep -q 'backing file' %s.info %s", file, "") != 0);
    vmb_domain_target_free(t);

    /* No OS: the boot fails, and the verdict says why, kept beside the point. */
    vmb_boot_verdict *verdict = NULL, *again = NULL;
    REQUIRE_OK(vmb_vault_boot_verdict(v, pt, &verdict));
    CHECK(verdict == NULL);
    REQUIRE_OK(vmb_vault_boot_verify(v, pt, g_uri, 3, NULL, NULL, &verdict));
    REQUIRE(verdict != NULL);
    bool passed = true;
    const char *reason = NULL, *console = NULL;
    const uint8_t *png = NULL;
    size_t png_len = 0;
    REQUIRE_OK(vmb_boot_verdict_passed(verdict, &passed, &reason));
    CHECK(!passed);
    CHECK(reason != NULL && strstr(reason, "did not answer within 3 s") != NULL);
    REQUIRE_OK(vmb_boot_verdict_evidence(verdict, &console, &png, &png_len));
    CHECK(console != NULL);
    CHECK(png_len > 8 && memcmp(png, "\x89PNG", 4) == 0);
    REQUIRE_OK(vmb_vault_boot_verdict(v, pt, &again));
    REQUIRE(again != NULL);
    REQUIRE_OK(vmb_boot_verdict_passed(again, &passed, NULL));
    CHECK(!passed);
    CHECK(sh("virsh -q -c %s list --all --name | grep -q vmbackup-verify-%s", g_uri, "") != 0);
    vmb_boot_verdict_free(verdict);
    vmb_boot_verdict_free(again);
    vmb_boot_verdict_free(NULL);

    sh("virsh -q -c %s destroy %s >/dev/null 2>&1", g_uri, instant);
    sh("virsh -q -c %s undefine %s >/dev/null 2>&1", g_uri, instant);
    sh("virsh -q -c %s undefine %s >/dev/null 2>&1", g_uri, restored);
    vmb_point_free(pt);
    vmb_provider_libvirt_free(p);
    vmb_vault_free(v);
    free(path);
    free(work);
    free(pool);
}

int main(void) {
    g_dir = make_temp_dir("libvirt-c");
    if (g_dir == NULL) {
        perror("mkdtemp");
        return 2;
    }
    /* QEMU runs as another user: it must reach the restored disks. */
    chmod(g_dir, 0755);
    RUN(libvirt_is_not_loaded_before_a_domain_is_asked_for);
    RUN(setup);
    RUN(a_shut_off_domain_is_read_in_place_with_its_xml);
    RUN(errors_name_the_domain_and_the_setting);
    RUN(a_point_comes_back_as_a_domain_and_its_boot_is_judged);
    if (g_uri != NULL) sh("virsh -q -c %s undefine %s --checkpoints-metadata >/dev/null 2>&1", g_uri, g_domain);
    remove_tree(g_dir);
    free(g_dir);
    return SUMMARY("libvirt.c");
}
