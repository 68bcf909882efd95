"""A run's workspace as a filesystem of its own size: the kernel enforces the quota.

Design (why it looks like this):

* **A filesystem cannot hold more than its size.** Docker's local volumes have no
  size limit on this kind of host (its `size` option needs XFS project quotas; the
  storage here is ext4 on cgroup v1), and measuring usage from inside lets a fast
  writer overshoot between two measurements. So each workspace volume is an ext4
  image file of exactly the workspace size, on a loop device: a write past it fails
  with ENOSPC in the writing process, and the image never takes more of the host's
  disk than its size (it is sparse, so less until written).
* **Docker mounts it, the worker attaches it.** The local volume driver mounts a
  block device (`type=ext4`, `device=…`) but does not set up loop devices (`o=loop`
  is an option of mount(8), the kernel refuses it). So the worker, on the Docker
  host and as root, creates `<root>/<namespace>/<volume>.img` (`mkfs.ext4`, owned by
  the sandbox user, no `lost+found`), attaches it with `losetup`, and points the
  symlink `<volume>.dev` at the loop device; the volume's `device` is that symlink.
* **The symlink is what keeps a stopped workspace safe.** Loop devices do not
  survive a host reboot and their numbers are reused, so a kept workspace's
  container must never mount whatever `/dev/loopN` is now. Before a container
  starts, `attach` checks (in sysfs) that the link's device is backed by this image,
  and attaches it again and re-points the link otherwise.
* **It lives exactly as long as its volume.** `release` (after `destroy` removed the
  volume) detaches the loop device and deletes the image; `sweep` does the same for
  volumes the janitor removed, or that a crashed worker left, after a grace period
  (a volume may be created just after the janitor listed them).
* Attaching is serialised per image across the host's worker processes (`flock` on
  the image), so two workers never attach one image twice.

This module must not: run anything on the host but `losetup`, `mkfs.ext4` and
`debugfs`; touch a file outside its own directory; or detach a loop device that is
not backed by one of its images.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from sandbox.base import SandboxPolicyError, SandboxUnavailable

TOOLS = ("losetup", "mkfs.ext4", "debugfs")
TOOL_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
"""Where the tools are looked for: root's tools live in sbin, which a service's PATH may lack."""
IMAGE = ".img"
LINK = ".dev"
MOUNT_OPTIONS = "nosuid,nodev"
SYS_BLOCK = Path("/sys/block")
DELETED = " (deleted)"
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

SETUP_HINT = (
    "the workspace quota needs the worker to run as root on the Docker host, with "
    "loop devices and losetup, mkfs.ext4 and debugfs (util-linux, e2fsprogs; "
    "scripts/setup.sh installs them); or set AGENTRUN_SANDBOX_WORKSPACE_QUOTA=off to "
    "run without a workspace size limit"
)


def mkfs_arguments(size_mb: int, owner: str) -> list[str]:
    """`mkfs.ext4` options that leave most of a small image to the workspace.

    No reserved blocks (nobody in the sandbox is root), no resize inode. Below 512 MB:
    1 KiB blocks, a 1 MiB journal (none below 8 MB) and an inode per 8 KiB; above,
    4 KiB blocks and a journal of 1/256 of the size (4-64 MiB). What is left for data:
    84 % of 8 MB, 90 % of 16 MB, 95 % of 64 MB, 98 % of 1 GB and more.
    """
    args = ["-q", "-F", "-m", "0", "-O", "^resize_inode", "-E", f"root_owner={owner}"]
    if size_mb < 8:
        return [*args, "-b", "1024", "-i", "8192", "-O", "^has_journal"]
    if size_mb < 512:
        return [*args, "-b", "1024", "-i", "8192", "-J", "size=1"]
    return [*args, "-b", "4096", "-J", f"size={min(64, max(4, size_mb // 256))}"]


def attached_loops() -> list[tuple[str, str, bool]]:
    """Every attached loop device: (device, backing file, whether that file was deleted).

    Every attach and release asks this, and a busy host has hundreds of loop devices,
    so it reads sysfs with `os.scandir` and plain opens (pathlib's glob stats each
    entry: three times slower)."""
    found: list[tuple[str, str, bool]] = []
    with os.scandir(SYS_BLOCK) as entries:
        for entry in entries:
            if not entry.name.startswith("loop"):
                continue
            try:
                with open(f"{entry.path}/loop/backing_file") as fh:
                    backing = fh.read().rstrip("\n")
            except OSError:
                continue  # not attached, or detached meanwhile
            deleted = backing.endswith(DELETED)
            found.append((f"/dev/{entry.name}", backing.removesuffix(DELETED), deleted))
    return found


def _backing_file(device: str) -> str | None:
    try:
        return (SYS_BLOCK / Path(device).name / "loop" / "backing_file").read_text().rstrip("\n")
    except OSError:
        return None


def older_than(path: Path, age_s: float, now: float) -> bool:
    """Whether `path` was last modified more than `age_s` before `now`.

    A path that vanished meanwhile is not: a provision under way renames and deletes
    its temp files while a sweep lists them, and that race must not fail the sweep.
    """
    try:
        return now - path.lstat().st_mtime > age_s
    except FileNotFoundError:
        return False


def _tool(name: str) -> str | None:
    return shutil.which(name, path=TOOL_PATH)


def _run(*argv: str, cwd: Path | None = None) -> str:
    """Run a host tool; its failure is a transient sandbox failure, with its message."""
    tool = _tool(argv[0])
    if tool is None:
        raise SandboxPolicyError(f"{argv[0]} is missing: {SETUP_HINT}")
    try:
        done = subprocess.run(
            [tool, *argv[1:]], capture_output=True, text=True, timeout=60, check=False, cwd=cwd
        )
    except OSError as exc:
        raise SandboxPolicyError(f"{argv[0]} cannot run ({exc}): {SETUP_HINT}") from exc
    except subprocess.TimeoutExpired as exc:
        raise SandboxUnavailable(f"{argv[0]} did not finish in 60 s") from exc
    if done.returncode != 0:
        raise SandboxUnavailable(f"{' '.join(argv)} failed: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


@contextlib.contextmanager
def _locked(image: Path) -> Iterator[bool]:
    """Hold the image's lock; yields False when the image is gone (released meanwhile)."""
    try:
        fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(image).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        yield same
    finally:
        os.close(fd)


def attach(link: Path) -> str:
    """Make `link` point at a loop device backed by its image; returns the device.

    Idempotent and cheap when it already does (one readlink, one sysfs read).
    """
    image = link.with_suffix(IMAGE)
    with _locked(image) as present:
        if not present:
            raise SandboxPolicyError(
                f"the workspace image {image} is missing, so this run's workspace is lost "
                "(was the worker's state directory removed?)"
            )
        real = os.path.realpath(image)
        with contextlib.suppress(OSError):
            current = os.readlink(link)
            if _backing_file(current) == real:
                return current
        device = next(
            (dev for dev, backing, deleted in attached_loops() if backing == real and not deleted),
            None,
        ) or _run("losetup", "--find", "--show", str(image))
        tmp = link.with_name(f".{link.name}.{secrets.token_hex(4)}")
        os.symlink(device, tmp)
        os.replace(tmp, link)
        return device


def release(link: Path) -> bool:
    """Detach the image's loop devices and delete it and its link (idempotent).

    Only for a workspace whose volume was removed: Docker refuses to remove a volume
    a container uses, so nothing has it mounted.
    """
    image = link.with_suffix(IMAGE)
    real = os.path.realpath(image)
    removed = False
    with _locked(image):
        for device, backing, _ in attached_loops():
            if backing == real:
                _run("losetup", "--detach", device)
                removed = True
        for path in (image, link):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed = True
    return removed


class WorkspaceImages:
    """The workspace images of one namespace on this host. Thread-safe (no state)."""

    def __init__(self, root: Path | None, namespace: str, owner: str) -> None:
        self.dir = root / namespace if root is not None else None
        self._owner = owner
        self._checked = False

    @property
    def enabled(self) -> bool:
        return self.dir is not None

    def link_for(self, volume: str) -> Path:
        assert self.dir is not None, "the workspace quota is off"
        return self.dir / f"{volume}{LINK}"

    def volume_options(self, volume: str) -> dict[str, str]:
        """The local driver's options that mount the volume's image."""
        return {"type": "ext4", "device": str(self.link_for(volume)), "o": MOUNT_OPTIONS}

    def _preflight(self) -> None:
        if self._checked:
            return
        missing = [tool for tool in TOOLS if _tool(tool) is None]
        if missing or os.geteuid() != 0:
            raise SandboxPolicyError(
                f"{'missing ' + ', '.join(missing) if missing else 'not root'}: {SETUP_HINT}"
            )
        self._checked = True

    def provision(
        self, volume: str, size_mb: int, files: Mapping[str, bytes] | None = None
    ) -> None:
        """Create the volume's image (once) and attach it; idempotent across processes.

        `files` (plain names) are written into a new image's root before it is
        attached, owned by root: the quota probe's token (`sandbox/_quota_probe.py`).
        """
        self._preflight()
        link = self.link_for(volume)
        image = link.with_suffix(IMAGE)
        assert self.dir is not None
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not image.exists():
            tmp = image.with_name(f".{image.name}.{secrets.token_hex(4)}")
            try:
                with open(tmp, "xb") as f:
                    f.truncate(size_mb << 20)  # sparse: the host's disk fills as it is written
                _run("mkfs.ext4", *mkfs_arguments(size_mb, self._owner), str(tmp))
                # The root of the workspace starts empty, like a fresh Docker volume.
                _run("debugfs", "-w", "-R", "rmdir lost+found", str(tmp))
                for name, data in (files or {}).items():
                    self._write_into(tmp, name, data)
                with contextlib.suppress(FileExistsError):  # another worker was first
                    os.link(tmp, image)
            finally:
                tmp.unlink(missing_ok=True)
        attach(link)

    def _write_into(self, image: Path, name: str, data: bytes) -> None:
        """Copy `data` into the root of an unattached image as `name` (with debugfs,
        which parses its request: so a plain name, and a source named relative to
        this directory, whatever characters the directory's path holds)."""
        if not _PLAIN_NAME.fullmatch(name):
            raise ValueError(f"not a plain file name: {name!r}")
        source = image.with_name(f"{image.name}.{name}")  # a dot file: swept if it leaks
        try:
            source.write_bytes(data)
            _run("debugfs", "-w", "-R", f"write {source.name} {name}", image.name, cwd=image.parent)
        finally:
            source.unlink(missing_ok=True)

    def sweep(self, live_volumes: set[str], grace_s: float) -> list[str]:
        """Release the images of this namespace's volumes that no longer exist.

        Younger than `grace_s` is left alone: its volume may have been created after
        `live_volumes` was listed. Also detaches loop devices whose image was deleted
        under them (a state directory removed while the worker ran).
        """
        if self.dir is None:
            return []
        released: list[str] = []
        now = time.time()
        candidates: dict[str, bool] = {}
        for _, backing, deleted in attached_loops():
            path = Path(backing)
            if path.parent == self.dir and path.suffix == IMAGE:
                candidates[path.stem] = candidates.get(path.stem, False) or deleted
        if self.dir.is_dir():
            for path in self.dir.iterdir():
                if path.suffix == IMAGE:
                    candidates.setdefault(path.stem, False)
                elif path.name.startswith(".") and older_than(path, grace_s, now):
                    path.unlink(missing_ok=True)  # a temp file of a provision that died
        for volume, deleted in candidates.items():
            if volume in live_volumes:
                continue
            image = self.dir / f"{volume}{IMAGE}"
            with contextlib.suppress(FileNotFoundError):
                if not deleted and now - image.stat().st_mtime < grace_s:
                    continue
            if release(self.link_for(volume)):
                released.append(volume)
        return released
