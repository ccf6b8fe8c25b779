// A C++ host embedding vmbackup: handles owned by std::unique_ptr, a VM of
// two disks served from std::vectors by callbacks, backed up twice with a
// change in between, a job cancelled from another thread while it runs
// (the vault stays as it was), restores compared with the source bytes, and
// an image-file VM.
//
// Built with: c++ -std=c++17 -Wall -Wextra -Werror host.cpp $(pkg-config --cflags --libs vmbackup)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "check.h"

namespace fs = std::filesystem;

namespace {

constexpr uint64_t MiB = 1024 * 1024;

struct VaultFree {
    void operator()(vmb_vault *v) const { vmb_vault_free(v); }
};
struct PointFree {
    void operator()(vmb_point *p) const { vmb_point_free(p); }
};
struct ListFree {
    void operator()(vmb_point_list *l) const { vmb_point_list_free(l); }
};
struct JobFree {
    void operator()(vmb_job *j) const { vmb_job_free(j); }
};
using Vault = std::unique_ptr<vmb_vault, VaultFree>;
using Point = std::unique_ptr<vmb_point, PointFree>;
using List = std::unique_ptr<vmb_point_list, ListFree>;
using Job = std::unique_ptr<vmb_job, JobFree>;

fs::path g_dir;
Vault g_vault;

std::vector<uint8_t> pattern(size_t len, uint32_t seed) {
    std::vector<uint8_t> v(len);
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v[i] = (i % 5 == 0) ? uint8_t('c') : uint8_t(x);
    }
    return v;
}

// ------------------------------------------------------------- the host VM

// A frozen copy of a disk, owned by the library once added to a snapshot.
struct Frozen {
    std::vector<uint8_t> data;
    std::chrono::milliseconds delay{0};
    static std::atomic<int> live;
    Frozen() { ++live; }
    ~Frozen() { --live; }
};
std::atomic<int> Frozen::live{0};

extern "C" int frozen_size(void *ud, uint64_t *size) {
    *size = static_cast<Frozen *>(ud)->data.size();
    return 0;
}

std::atomic<bool> g_reading{false};  // set by the first read of a disk

extern "C" int frozen_read(void *ud, uint64_t offset, uint8_t *buf, size_t len) {
    auto *f = static_cast<Frozen *>(ud);
    g_reading = true;
    if (f->delay.count() > 0) std::this_thread::sleep_for(f->delay);
    if (offset + len > f->data.size()) return EINVAL;
    std::copy_n(f->data.begin() + static_cast<std::ptrdiff_t>(offset), len, buf);
    return 0;
}

extern "C" void frozen_destroy(void *ud) { delete static_cast<Frozen *>(ud); }

// The host's VM: named disks in memory, and how snapshots went.
struct HostVm {
    std::map<std::string, std::vector<uint8_t>> disks;
    std::chrono::milliseconds read_delay{0};
    int snapshots = 0, releases = 0;
};

extern "C" int vm_snapshot(void *ud, const char *, vmb_consistency wanted, vmb_consistency *achieved,
                           vmb_snapshot *snap) {
    auto *vm = static_cast<HostVm *>(ud);
    for (auto &[name, bytes] : vm->disks) {
        auto *f = new Frozen;
        f->data = bytes;
        f->delay = vm->read_delay;
        vmb_disk_ops ops{0, f, frozen_size, frozen_read, nullptr, nullptr, frozen_destroy};
        if (vmb_snapshot_add_disk(snap, name.c_str(), &ops, nullptr) != VMB_OK) return EINVAL;
    }
    *achieved = wanted;
    vm->snapshots++;
    return 0;
}

extern "C" int vm_release(void *ud, const char *) {
    static_cast<HostVm *>(ud)->releases++;
    return 0;
}

vmb_provider provider_for(HostVm &vm) {
    return vmb_provider{0, &vm, "cpp-host 1", nullptr, vm_snapshot, vm_release};
}

const char *const CPP_DISKS[] = {"data", "sys"};

// Restores a disk into a vector through the write-target callbacks.
struct Sink {
    std::vector<uint8_t> bytes;
};

extern "C" int sink_write(void *ud, uint64_t offset, const uint8_t *data, size_t len) {
    auto *s = static_cast<Sink *>(ud);
    if (offset + len > s->bytes.size()) return EINVAL;
    std::copy_n(data, len, s->bytes.begin() + static_cast<std::ptrdiff_t>(offset));
    return 0;
}

bool restores_to(const vmb_point *p, const char *disk, const std::vector<uint8_t> &want) {
    Sink s;
    s.bytes.assign(want.size(), 0xEE);  // no write_zeros: zeros come through write_at
    vmb_write_target t{0, &s, sink_write, nullptr, nullptr};
    vmb_restore_stats st{};
    if (vmb_vault_restore_disk(g_vault.get(), p, disk, &t, nullptr, &st) != VMB_OK) {
        fprintf(stderr, "restore of %s: %s\n", disk, vmb_last_error());
        return false;
    }
    return s.bytes == want && st.size == want.size();
}

std::string vault_files() {
    std::vector<std::string> lines;
    for (auto &e : fs::recursive_directory_iterator(g_dir / "vault"))
        // The job history (jobs/) keeps a cancelled job's log on purpose.
        if (e.is_regular_file() && e.path().lexically_relative(g_dir / "vault").begin()->string() != "jobs")
            lines.push_back(e.path().string() + " " + std::to_string(e.file_size()));
    std::sort(lines.begin(), lines.end());
    std::string out;
    for (auto &l : lines) out += l + "\n";
    return out;
}

std::vector<std::string> point_ids(const char *vm) {
    std::vector<std::string> ids;
    vmb_point_list *raw = nullptr;
    if (vmb_vault_list_points(g_vault.get(), vm, &raw) != VMB_OK) return ids;
    List list(raw);
    size_t n = 0;
    if (vmb_point_list_len(list.get(), &n) != VMB_OK) return ids;
    for (size_t i = 0; i < n; i++) {
        vmb_point *p = nullptr;
        if (vmb_point_list_get(list.get(), i, &p) != VMB_OK) continue;
        Point owned(p);
        const char *id = nullptr;
        if (vmb_point_id(owned.get(), &id) == VMB_OK) ids.emplace_back(id);
    }
    return ids;
}

// ------------------------------------------------------------------ cases

HostVm g_vm;

void open_vault() {
    vmb_vault *v = nullptr;
    REQUIRE_OK(vmb_vault_init((g_dir / "vault").c_str(), &v));
    g_vault.reset(v);
}

void host_vm_twice() {
    REQUIRE(g_vault != nullptr);
    g_vm.disks["sys"] = pattern(4 * MiB, 1);
    g_vm.disks["data"] = pattern(2 * MiB + 4096, 2);
    auto provider = provider_for(g_vm);

    vmb_point *raw1 = nullptr, *raw2 = nullptr;
    REQUIRE_OK(vmb_vault_backup_host(g_vault.get(), "cppvm", CPP_DISKS, 2, &provider, nullptr, &raw1));
    Point p1(raw1);
    auto sys1 = g_vm.disks["sys"];
    g_vm.disks["sys"][3 * MiB + 7] ^= 1;  // one block changes
    REQUIRE_OK(vmb_vault_backup_host(g_vault.get(), "cppvm", CPP_DISKS, 2, &provider, nullptr, &raw2));
    Point p2(raw2);

    vmb_backup_stats st{};
    REQUIRE_OK(vmb_point_stats(p2.get(), &st));
    CHECK(st.bytes_new == 64 * 1024);
    CHECK(st.bytes_scanned == 6 * MiB + 4096);
    CHECK(g_vm.snapshots == 2 && g_vm.releases == 2);
    CHECK(Frozen::live == 0);  // every disk destroyed

    CHECK(restores_to(p1.get(), "sys", sys1));
    CHECK(restores_to(p2.get(), "sys", g_vm.disks["sys"]));
    CHECK(restores_to(p2.get(), "data", g_vm.disks["data"]));
    CHECK(!restores_to(p1.get(), "sys", g_vm.disks["sys"]));
}

// vmb_job_cancel from another thread while the disks are being read.
void cancel_from_another_thread() {
    REQUIRE(g_vault != nullptr);
    auto ids_before = point_ids("cppvm");
    auto files_before = vault_files();
    REQUIRE(ids_before.size() == 2);

    g_vm.disks["data"][0] ^= 0xFF;
    g_vm.read_delay = std::chrono::milliseconds(5);
    auto provider = provider_for(g_vm);
    vmb_job *raw = nullptr;
    REQUIRE_OK(vmb_job_new(&raw));
    Job job(raw);
    std::atomic<vmb_status> canceller_status{VMB_ERR_OTHER};
    g_reading = false;
    // Cancels once the worker threads are reading the disks.
    std::thread canceller([&] {
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
        while (!g_reading && std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        canceller_status = vmb_job_cancel(job.get());
    });
    int releases = g_vm.releases;
    vmb_status s = vmb_vault_backup_host(g_vault.get(), "cppvm", CPP_DISKS, 2, &provider, job.get(),
                                   nullptr);
    canceller.join();
    g_vm.read_delay = std::chrono::milliseconds(0);
    CHECK(s == VMB_ERR_CANCELLED);
    CHECK(canceller_status == VMB_OK);
    CHECK(g_vm.releases == releases + 1);
    CHECK(Frozen::live == 0);
    CHECK(point_ids("cppvm") == ids_before);
    CHECK(vault_files() == files_before);
}

// Progress from several worker threads; a callback that cancels.
struct Counter {
    std::atomic<uint64_t> calls{0}, last_total{0}, max_done{0};
    bool cancel = false;
};

extern "C" int count_progress(void *ud, uint64_t done, uint64_t total) {
    auto *c = static_cast<Counter *>(ud);
    c->calls++;
    c->last_total = total;
    uint64_t m = c->max_done.load();
    while (done > m && !c->max_done.compare_exchange_weak(m, done)) {
    }
    return (c->cancel && done > 0) ? 1 : 0;
}

void progress_and_cancel_by_callback() {
    REQUIRE(g_vault != nullptr);
    auto provider = provider_for(g_vm);
    Counter c;
    vmb_job *raw = nullptr;
    REQUIRE_OK(vmb_job_new(&raw));
    Job job(raw);
    REQUIRE_OK(vmb_job_set_progress(job.get(), count_progress, &c));
    REQUIRE_OK(vmb_vault_backup_host(g_vault.get(), "cppvm", CPP_DISKS, 2, &provider, job.get(), nullptr));
    CHECK(c.last_total == 6 * MiB + 4096);
    CHECK(c.max_done == 6 * MiB + 4096);

    auto ids = point_ids("cppvm");
    auto files = vault_files();
    g_vm.disks["sys"][0] ^= 0xFF;
    Counter stop;
    stop.cancel = true;
    vmb_job *raw2 = nullptr;
    REQUIRE_OK(vmb_job_new(&raw2));
    Job job2(raw2);
    REQUIRE_OK(vmb_job_set_progress(job2.get(), count_progress, &stop));
    REQUIRE_STATUS(
        vmb_vault_backup_host(g_vault.get(), "cppvm", CPP_DISKS, 2, &provider, job2.get(), nullptr),
        VMB_ERR_CANCELLED);
    CHECK(point_ids("cppvm") == ids);
    CHECK(vault_files() == files);
}

void image_vm_and_file_restore() {
    REQUIRE(g_vault != nullptr);
    auto bytes = pattern(MiB + 333, 9);
    fs::path img = g_dir / "root.img";
    std::ofstream(img, std::ios::binary)
        .write(reinterpret_cast<const char *>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    std::string path = img.string();
    const char *images[] = {path.c_str()};
    vmb_point *raw = nullptr;
    REQUIRE_OK(vmb_vault_backup_images(g_vault.get(), "imgvm", images, 1, nullptr, &raw));
    Point p(raw);
    fs::path out = g_dir / "out.img";
    REQUIRE_OK(vmb_vault_restore_disk_to_file(g_vault.get(), p.get(), "root.img", out.c_str(), nullptr, nullptr));
    std::ifstream in(out, std::ios::binary);
    std::vector<uint8_t> got((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK(got == bytes);

    vmb_verify_report *r = nullptr;
    REQUIRE_OK(vmb_vault_verify(g_vault.get(), nullptr, nullptr, nullptr, &r));
    bool ok = false;
    REQUIRE_OK(vmb_verify_report_ok(r, &ok));
    CHECK(ok);
    vmb_verify_report_free(r);
}

}  // namespace

int main() {
    std::string tmpl = (fs::temp_directory_path() / "vmb-host-cpp-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) {
        perror("mkdtemp");
        return 2;
    }
    g_dir = tmpl;
    RUN(open_vault);
    RUN(host_vm_twice);
    RUN(cancel_from_another_thread);
    RUN(progress_and_cancel_by_callback);
    RUN(image_vm_and_file_restore);
    g_vault.reset();
    fs::remove_all(g_dir);
    return SUMMARY("host.cpp");
}
