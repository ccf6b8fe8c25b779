"""Progress, cancel, Ctrl-C, threads and the GIL."""

from __future__ import annotations

import _thread
import os
import signal
import threading
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

import vmbackup
from conftest import MiB, MakeImage, MemoryDisk


class Stop(Exception):
    """Raised by a progress callback to cancel a job."""


class SlowDisk(vmbackup.BlockDevice):
    """A large disk whose every read sleeps: a backup of it runs for
    minutes unless it is stopped."""

    name = "slow"

    def __init__(self) -> None:
        self.reads = 0

    def size(self) -> int:
        return 1 << 30

    def read_at(self, offset: int, length: int) -> bytes:
        self.reads += 1
        time.sleep(0.002)
        return bytes([offset // length % 251 + 1]) * length


@pytest.fixture
def ctrl_c() -> Iterator[None]:
    """Python's Ctrl-C handler, installed for the test: a suite started in
    the background (`.ci/run &`) inherits SIGINT ignored, and then Python
    never raises KeyboardInterrupt."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def vault_files(vault: vmbackup.Vault) -> List[str]:
    """Every file of the vault but its lock, its staging folder, its VM
    records and its job history (a cancelled job's log is kept on purpose)."""
    root = Path(vault.path)
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.parts[len(root.parts)] not in ("tmp", "lock", "vms", "jobs")
    )


def test_progress_is_reported_from_the_calling_thread(
    vault: vmbackup.Vault, make_image: MakeImage
) -> None:
    disks = [make_image(f"d{i}.img", 40 * MiB, seed=i) for i in range(2)]
    calls: List[Tuple[int, int]] = []
    threads = set()

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        threads.add(threading.get_ident())

    point = vault.backup("web", disks, block_size=16384, progress=progress)
    assert threads == {threading.get_ident()}
    assert calls[-1] == (80 * MiB, 80 * MiB)
    assert all(total == 80 * MiB for _, total in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert vault.points() == [point]

    restored: List[Tuple[int, int]] = []
    vault.restore_vm(point, Path(vault.path).parent / "out", progress=lambda d, t: restored.append((d, t)))
    assert restored[-1] == (80 * MiB, 80 * MiB)
    checked: List[Tuple[int, int]] = []
    assert vault.verify(progress=lambda d, t: checked.append((d, t))).ok
    assert checked[-1] == (80 * MiB, 80 * MiB)


@pytest.mark.parametrize("when", ["first call", "last call"])
def test_exception_from_progress_cancels_and_commits_nothing(
    vault: vmbackup.Vault, make_image: MakeImage, when: str
) -> None:
    image = make_image("root.img", 4 * MiB)
    before = vault.backup("web", [image])
    files = vault_files(vault)
    with open(image, "r+b") as f:
        f.write(b"new data")

    def progress(done: int, total: int) -> None:
        if when == "first call" or done == total:
            raise Stop(f"at {done} of {total}")

    with pytest.raises(Stop):
        vault.backup("web", [image], progress=progress)
    assert vault.points() == [before]
    assert vault_files(vault) == files
    assert vault.verify().ok
    # The vault still takes backups.
    after = vault.backup("web", [image])
    assert after.parent == before.id


def test_exception_from_progress_stops_a_long_backup(vault: vmbackup.Vault) -> None:
    calls = 0

    def progress(done: int, total: int) -> None:
        nonlocal calls
        calls += 1
        raise Stop()

    started = time.monotonic()
    with pytest.raises(Stop):
        vault.backup("slow", [SlowDisk()], progress=progress)
    assert time.monotonic() - started < 10
    assert calls == 1
    assert vault.points() == []


def test_keyboard_interrupt_stops_a_running_backup(vault: vmbackup.Vault, ctrl_c: None) -> None:
    disk = SlowDisk()
    files = vault_files(vault)

    def interrupt() -> None:
        while disk.reads < 20:
            time.sleep(0.01)
        _thread.interrupt_main()

    threading.Thread(target=interrupt).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        vault.backup("slow", [disk])
    assert time.monotonic() - started < 10
    assert vault.points() == []
    assert vault_files(vault) == files == ["config"]
    assert list((Path(vault.path) / "tmp").iterdir()) == []


def test_sigint_stops_a_running_backup(
    vault: vmbackup.Vault, make_image: MakeImage, ctrl_c: None
) -> None:
    image = make_image("root.img", 2 * MiB)
    first = vault.backup("web", [image])
    disk = SlowDisk()

    def send_sigint() -> None:
        while disk.reads < 20:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=send_sigint).start()
    with pytest.raises(KeyboardInterrupt):
        vault.backup("web", [image, disk])
    assert vault.points() == [first]


def test_keyboard_interrupt_from_progress(
    vault: vmbackup.Vault, make_image: MakeImage, ctrl_c: None
) -> None:
    image = make_image("root.img", 4 * MiB)

    def progress(done: int, total: int) -> None:
        signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        vault.backup("web", [image], progress=progress)
    assert vault.points() == []


def test_two_threads_back_up_two_vms_into_one_vault(
    vault: vmbackup.Vault, make_image: MakeImage, tmp_path: Path
) -> None:
    images = {
        "alpha": [make_image("a1.img", 16 * MiB, seed=1), make_image("a2.img", 5 * MiB, seed=2)],
        "beta": [make_image("b1.img", 16 * MiB, seed=3)],
    }
    memory = MemoryDisk(os.urandom(2 * MiB), name="mem")
    results: dict[str, vmbackup.RecoveryPoint] = {}
    errors: List[BaseException] = []
    barrier = threading.Barrier(2)

    def run(vm: str) -> None:
        try:
            barrier.wait()
            disks: List[vmbackup._native._Disk] = list(images[vm])
            if vm == "beta":
                disks.append(memory)
            results[vm] = vault.backup(vm, disks)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(vm,)) for vm in images]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(vault.vms()) == ["alpha", "beta"]
    for vm, point in results.items():
        assert vault.points(vm) == [point]
        out = tmp_path / f"out-{vm}"
        vault.restore_vm(point, out)
        for image in images[vm]:
            assert (out / image.name).read_bytes() == image.read_bytes()
    assert (tmp_path / "out-beta" / "mem").read_bytes() == memory.data
    assert vault.verify().ok


def test_gil_is_released_while_the_engine_works(
    vault: vmbackup.Vault, make_image: MakeImage
) -> None:
    image = make_image("big.img", 96 * MiB)
    ticks = 0
    running = threading.Event()
    stop = threading.Event()

    def count() -> None:
        nonlocal ticks
        running.set()
        while not stop.is_set():
            ticks += 1

    counter = threading.Thread(target=count)
    counter.start()
    running.wait()
    before = ticks
    started = time.monotonic()
    try:
        vault.backup("big", [image], block_size=16384)
    finally:
        during = ticks - before
        elapsed = time.monotonic() - started
        stop.set()
        counter.join()
    # Holding the GIL for the whole call, the backup would leave the
    # counter no turn at all.
    assert during > 1000, f"the counter ran {during} times in {elapsed:.2f} s"
