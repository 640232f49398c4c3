"""buildah and containerd plumbing of `images`: a buildah of our own (storage, registries and temp files
under cache_dir()/buildah, a private /var/lib, chroot isolation, never a registry: every base is local and
`--pull=never`), and the hand-over of a built image to a containerd (`buildah push` to `dir:`, rewritten
into an uncompressed OCI layout, streamed as a tar into `ctr images import`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from hack.localcluster.procs import CommandError, cache_dir, log, run

COMPONENT = "images"
NAMESPACE = "k8s.io"  # containerd's namespace of the CRI plugin, where kubelet looks for images


def buildah_dir() -> Path:
    return cache_dir() / "buildah"


def _buildah_env() -> dict[str, str]:
    """Config files of our own, so nothing of the machine's container defaults (storage under
    /var/lib/containers, search registries) is read or written."""
    root = buildah_dir()
    storage = root / "storage.conf"
    if not storage.exists():
        root.mkdir(parents=True, exist_ok=True)
        storage.write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{root / "storage"}"\nrunroot = "{root / "run"}"\n'
        )
    registries = root / "registries.conf"
    if not registries.exists():
        # No search registries: a short image name fails instead of being looked up anywhere.
        registries.write_text("unqualified-search-registries = []\n")
    tmp = root / "tmp"
    tmp.mkdir(exist_ok=True)
    return {
        "CONTAINERS_STORAGE_CONF": str(storage),
        "CONTAINERS_REGISTRIES_CONF": str(registries),
        "BUILDAH_ISOLATION": "chroot",
        "TMPDIR": str(tmp),
    }


# containers/image keeps a blob info cache at the fixed path /var/lib/containers/cache for root, whatever the
# storage config says. So buildah runs in a private mount namespace whose /var/lib is an overlay with its
# writes under cache_dir()/buildah/varlib: the machine's /var/lib is never written (nor is the namespace's
# own overlay, or any mount buildah makes, visible outside).
_PRIVATE_VAR_LIB = (
    'mount -t overlay rayvllm-varlib -o "lowerdir=/var/lib,upperdir=$U,workdir=$W" /var/lib && exec "$@"'
)


def _buildah_argv(args: Sequence[str | Path]) -> list[str | Path]:
    upper, work = buildah_dir() / "varlib" / "upper", buildah_dir() / "varlib" / "work"
    upper.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    return ["unshare", "--mount", "--propagation", "private", "--", "env", f"U={upper}", f"W={work}",
            "sh", "-c", _PRIVATE_VAR_LIB, "sh", "buildah", *args]  # fmt: skip


def buildah(*args: str | Path, timeout: float = 3600, check: bool = True) -> str:
    return run(_buildah_argv(args), env=_buildah_env(), timeout=timeout, check=check).stdout


def buildah_has(ref: str) -> bool:
    return (
        run(["buildah", "inspect", "--type", "image", ref], env=_buildah_env(), check=False).returncode == 0
    )


def bud(ref: str, containerfile: Path, context: Path, *extra: str | Path) -> None:
    """`buildah bud` with chroot isolation (no daemon, no user namespace needed as root) and local bases only."""
    buildah(
        "bud", "--isolation", "chroot", "--pull=never", "--format", "oci", *extra,
        "-f", containerfile, "-t", ref, context,
    )  # fmt: skip


def prune_other_tags(ref: str) -> None:
    """Remove older tags of `ref`'s repository from buildah's storage (a superseded Ray image is ~6.8 GB)."""
    name = ref.rpartition(":")[0]
    for line in buildah("images", "--format", "{{.Name}}:{{.Tag}}", check=False).split():
        if line.rpartition(":")[0] == name and line != ref:
            log(COMPONENT, f"removing the superseded {line} from buildah's storage")
            buildah("rmi", line, check=False)


def verify(ref: str, checks: Sequence[Sequence[str]], user: str | None = None) -> None:
    """Run each command in a working container of `ref`; any failure raises with its output."""
    container = buildah("from", "--pull=never", ref).strip()
    try:
        for argv in checks:
            out = buildah("run", *(["--user", user] if user else []), container, "--", *argv, timeout=600)
            log(
                COMPONENT,
                f"  {ref.rsplit('/', 1)[-1]}: `{' '.join(argv)}` ok: {out.strip().splitlines()[-1:]}",
            )
    finally:
        buildah("rm", container, check=False)


def ctr(address: Path, *args: str, timeout: float = 600, check: bool = True) -> str:
    return run(
        ["ctr", f"--address={address}", f"--namespace={NAMESPACE}", *args], timeout=timeout, check=check
    ).stdout


def containerd_has(address: Path, ref: str) -> bool:
    """Whether containerd holds `ref` complete and unpacked (an import cut short leaves an image record
    whose snapshot is missing: CRI would fail to create containers from it)."""
    out = ctr(address, "images", "check", f"name=={ref}", check=False)
    for line in out.splitlines()[1:]:
        fields = line.split()
        # REF TYPE DIGEST STATUS SIZE UNPACKED, e.g. "... complete (3/3) 6.1 GiB/6.1 GiB true"
        if fields and fields[0] == ref and "complete" in line and fields[-1] == "true":
            return True
    return False


def _oci_layout(copy: Path, ref: str) -> None:
    """Turn a `dir:` copy of an image (manifest.json, blobs named by their sha256) into an OCI image layout in
    place. buildah 1.28 compresses layers for `oci:` even with --disable-compression; `dir:` keeps them as
    they are stored (uncompressed), which spares gzip of gigabytes here and gunzip in containerd."""
    manifest = (copy / "manifest.json").read_bytes()
    digest = hashlib.sha256(manifest).hexdigest()
    blobs = copy / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for blob in copy.iterdir():
        if len(blob.name) == 64 and blob.is_file():
            blob.rename(blobs / blob.name)
    (blobs / digest).write_bytes(manifest)
    (copy / "manifest.json").unlink()
    (copy / "version").unlink(missing_ok=True)
    (copy / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    descriptor = {
        "mediaType": json.loads(manifest).get("mediaType", "application/vnd.oci.image.manifest.v1+json"),
        "digest": f"sha256:{digest}",
        "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": ref},
    }
    (copy / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [descriptor]}))


def export_to_containerd(ref: str, address: Path) -> None:
    """Hand `ref` from buildah's storage to containerd: an uncompressed OCI layout, tarred on the fly into
    `ctr images import`; the layout is removed afterwards."""
    name, _, tag = ref.rpartition(":")
    layout = buildah_dir() / "export" / f"{name.rsplit('/', 1)[-1]}-{tag}"
    shutil.rmtree(layout, ignore_errors=True)
    layout.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    buildah("push", "--quiet", "--disable-compression", "--format", "oci", ref, f"dir:{layout}")
    _oci_layout(layout, ref)
    log(
        COMPONENT,
        f"{ref}: copied out as an uncompressed OCI layout in {time.monotonic() - started:.1f}s ({_du(layout)})",
    )
    started = time.monotonic()
    # --base-name: the layout names the image by its full reference (annotation ref.name); without a base
    # name ctr would keep only references under a generated "import-<date>" prefix, i.e. none.
    tar = subprocess.Popen(["tar", "-C", str(layout), "-cf", "-", "."], stdout=subprocess.PIPE)
    try:
        imported = subprocess.run(
            ["ctr", f"--address={address}", f"--namespace={NAMESPACE}", "images", "import",
             "--all-platforms", f"--base-name={name}", "-"],
            stdin=tar.stdout, capture_output=True, text=True, timeout=3600, check=False,
        )  # fmt: skip
    finally:
        assert tar.stdout is not None
        tar.stdout.close()
        tar_rc = tar.wait()
    if imported.returncode != 0 or tar_rc != 0:
        raise CommandError(
            f"importing {ref} into containerd failed (tar {tar_rc}): {imported.stderr[-4000:]}"
        )
    if not containerd_has(address, ref):
        listed = ctr(address, "images", "ls", "-q", check=False)
        raise CommandError(f"containerd does not list {ref} unpacked after the import; it has:\n{listed}")
    shutil.rmtree(layout)
    log(COMPONENT, f"{ref}: imported into containerd ({NAMESPACE}) in {time.monotonic() - started:.1f}s")
    prune_containerd_tags(address, ref)


def prune_containerd_tags(address: Path, ref: str) -> None:
    """Remove older tags of `ref`'s repository from containerd (its garbage collector then frees their
    content and snapshots): the store lives under the cache and would otherwise grow by an image per change."""
    name = ref.rpartition(":")[0]
    for line in ctr(address, "images", "ls", "-q", check=False).split():
        if line.rpartition(":")[0] == name and line != ref:
            log(COMPONENT, f"removing the superseded {line} from containerd")
            ctr(address, "images", "rm", line, check=False)


def _du(path: Path) -> str:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    return f"{total / 2**30:.2f} GiB" if total > 2**28 else f"{total / 2**20:.1f} MiB"


def host_ca_bundle() -> Path | None:
    """The CA bundle this machine trusts for PyPI (a TLS-intercepting setup may sign it), for build steps."""
    for candidate in (
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        "/etc/ssl/certs/ca-certificates.crt",
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None
