"""Container images of the local cluster's real node, built without a registry or a Docker engine, from
Debian packages, PyPI and the project's own files, and imported into containerd's `k8s.io` namespace:

    localhost/rayvllm/pause:<hash>     Kubernetes' build/pause/linux/pause.c (K8S_VERSION), gcc -Os -static,
                                       FROM scratch (hack/images/pause.Containerfile)
    localhost/rayvllm/ray:<hash>       Debian 12 (hack/images/ray-base.packages) plus the relocatable venv of
                                       hack/ray-env.sh (requirements-ray.lock) at /opt/ray (ray.Containerfile)
    localhost/rayvllm/operator:<hash>  the project's Dockerfile on a local Debian 12 Python base
                                       (hack/images/python-base.packages) instead of the official python image
    localhost/rayvllm/redis:<hash>     Debian 12's redis-server (hack/images/redis-base.packages,
                                       redis.Containerfile): the chaos suite's GCS fault tolerance only, so
                                       it is built when a test asks for it (`ensure_redis`), not with the rest

Each tag is a hash of the image's inputs, so `refs()` names the images without building anything, and an
image containerd already holds (unpacked) is skipped. The Debian bases (`localhost/rayvllm/<name>-base:<hash>`)
are `mmdebstrap --variant=minbase` rootfs tarballs of the machine's own apt sources, committed into
buildah's storage (see `oci`), where they stay as cache. Every step logs its duration.

    python -m hack.localcluster.images --containerd-address SOCK [--only pause|ray|operator|redis] [--refs]
    python -m hack.localcluster.images --build-only       # into buildah's storage only (`make images`)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from hack.localcluster import oci
from hack.localcluster.procs import REPO, CommandError, log, read_versions, run

PREFIX = "localhost/rayvllm"
FILES = REPO / "hack" / "images"
RAY_ENV = REPO / "hack" / "ray-env.sh"
RAY_LOCK = REPO / "requirements-ray.lock"
DOCKERFILE = REPO / "Dockerfile"
# What the Dockerfile COPYs besides operator/ (its git-tracked files): also the operator's build context.
OPERATOR_FILES = ("requirements.lock", "pyproject.toml", "README.md")
# Where the host's CA bundle is bind-mounted during the operator build's RUN steps: over the base's own
# bundle, so the mount leaves no mountpoint behind in a layer (a new path would stay as an empty file).
BUILD_CA = "/etc/ssl/certs/ca-certificates.crt"

SUITE = "bookworm"
MMDEBSTRAP_OPTIONS = (
    "--variant=minbase",
    "--skip=output/dev",  # no device nodes in the layer: the runtime makes /dev
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
)
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HASH_SCHEME = "1"  # bump to rebuild every image after a change of how they are built here


@dataclass(frozen=True)
class Images:
    """Full references of the node's images, as containerd and pod specs name them."""

    pause: str
    ray: str
    operator: str


def _hash(*parts: str | bytes) -> str:
    digest = hashlib.sha256(HASH_SCHEME.encode())
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:16]


def _packages(base: str) -> list[str]:
    lines = (FILES / f"{base}.packages").read_text().splitlines()
    return [word for line in lines for word in line.split("#", 1)[0].split()]


def base_ref(base: str) -> str:
    """`python-base` (the operator's), `ray-base` or `redis-base`: a Debian 12 minbase rootfs plus
    `<base>.packages`."""
    return f"{PREFIX}/{base}:{_hash(SUITE, *MMDEBSTRAP_OPTIONS, BASE_PATH, *_packages(base))}"


def operator_sources() -> list[str]:
    """Repository paths of the operator build context: the files under operator/ that git tracks or would
    track (new modules not yet added count; __pycache__ and whatever .gitignore names stay out) and what
    else the Dockerfile COPYs."""
    listed = run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "operator"], cwd=REPO
    )
    tracked = listed.stdout.split("\0")
    return sorted({*OPERATOR_FILES, *(p for p in tracked if p and (REPO / p).is_file())})


def refs() -> Images:
    """The images' references from their inputs alone (no build, no containerd): cheap."""
    pause = _hash(read_versions()["K8S_VERSION"], (FILES / "pause.Containerfile").read_bytes())
    ray = _hash(
        base_ref("ray-base"),
        (FILES / "ray.Containerfile").read_bytes(),
        RAY_LOCK.read_bytes(),
        RAY_ENV.read_bytes(),
    )
    sources = [part for path in operator_sources() for part in (path, (REPO / path).read_bytes())]
    operator = _hash(base_ref("python-base"), DOCKERFILE.read_bytes(), *sources)
    return Images(
        pause=f"{PREFIX}/pause:{pause}", ray=f"{PREFIX}/ray:{ray}", operator=f"{PREFIX}/operator:{operator}"
    )


def redis_ref() -> str:
    """The Redis image's reference from its inputs alone (not part of `Images`: only one scenario needs it)."""
    return f"{PREFIX}/redis:{_hash(base_ref('redis-base'), (FILES / 'redis.Containerfile').read_bytes())}"


# ---- building ------------------------------------------------------------------------------------------


def _step(what: str, fn: Callable[[], object]) -> None:
    started = time.monotonic()
    log(oci.COMPONENT, f"{what} ...")
    fn()
    log(oci.COMPONENT, f"{what}: done in {time.monotonic() - started:.1f}s")


def _scratch() -> tempfile.TemporaryDirectory[str]:
    oci.buildah_dir().mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=oci.buildah_dir(), prefix="build-")


def _apt_sources() -> list[str]:
    """The machine's apt sources, pasted by mmdebstrap into the rootfs' own sources (no mirror named here)."""
    etc = Path("/etc/apt")
    files = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]
    files += sorted((etc / "sources.list.d").glob("*.sources"))
    return [str(f) for f in files if f.is_file() and f.read_text().strip()]


def ensure_base(base: str) -> str:
    """The Debian base image `base` in buildah's storage (built by mmdebstrap when missing)."""
    ref = base_ref(base)
    if oci.buildah_has(ref):
        log(oci.COMPONENT, f"{ref}: cached in buildah's storage")
        return ref
    with _scratch() as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        include = ",".join(_packages(base))
        _step(
            f"{base}: mmdebstrap {SUITE} minbase + {include}",
            lambda: run(
                [
                    "mmdebstrap",
                    "--quiet",
                    *MMDEBSTRAP_OPTIONS,
                    f"--include={include}",
                    SUITE,
                    rootfs,
                    *_apt_sources(),
                ],
                timeout=1800,
            ),
        )

        def commit() -> None:
            container = oci.buildah("from", "scratch").strip()
            try:
                oci.buildah("add", container, rootfs, "/")
                oci.buildah(
                    "config",
                    "--env",
                    f"PATH={BASE_PATH}",
                    "--env",
                    "LANG=C.UTF-8",
                    "--cmd",
                    "/bin/bash",
                    container,
                )
                oci.buildah("commit", "--rm", "--quiet", container, ref)
            except BaseException:
                oci.buildah("rm", container, check=False)
                raise

        _step(f"{ref}: committing the rootfs into buildah's storage", commit)
    oci.prune_other_tags(ref)
    return ref


def _build_pause(ref: str) -> None:
    k8s = read_versions()["K8S_VERSION"]
    module = run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@v{k8s}"],
        cwd=REPO / "hack" / "tools" / "kubernetes",
        env={"GOTOOLCHAIN": "local"},
        timeout=1800,
    )
    source = Path(json.loads(module.stdout)["Dir"]) / "build" / "pause" / "linux" / "pause.c"
    with _scratch() as tmp:
        binary = Path(tmp) / "pause"
        run(["gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION=k8s-v{k8s}", "-o", binary, source])
        run(["strip", binary])
        oci.bud(ref, FILES / "pause.Containerfile", Path(tmp))


def _build_ray(ref: str) -> None:
    base = ensure_base("ray-base")
    venv: list[Path] = []

    def ray_env() -> None:
        # Its progress lines go straight to our stderr; its last stdout line is the venv path.
        out = subprocess.run(
            ["bash", str(RAY_ENV)], stdout=subprocess.PIPE, text=True, timeout=3600, check=False
        )
        if out.returncode != 0:
            raise CommandError(f"hack/ray-env.sh failed ({out.returncode})")
        venv.append(Path(out.stdout.strip().splitlines()[-1]))

    _step("the Ray+vLLM venv (hack/ray-env.sh)", ray_env)
    _step(
        f"{ref}: buildah bud (venv -> /opt/ray)",
        lambda: oci.bud(ref, FILES / "ray.Containerfile", venv[0], "--build-arg", f"BASE_IMAGE={base}"),
    )
    checks = [
        ["ray", "--version"],
        ["python", "-c", "import sys, vllm; print(sys.executable, vllm.__version__)"],
        ["sh", "-c", "wget --version | head -1"],
        ["bash", "-c", "command -v ray python g++ ps && echo bash ok"],
    ]
    _step(f"{ref}: checking ray, python/vllm, wget, bash in the image", lambda: oci.verify(ref, checks))


def _build_operator(ref: str) -> None:
    base = ensure_base("python-base")
    with _scratch() as tmp:
        context = Path(tmp)
        for path in operator_sources():
            (context / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / path, context / path)
        extra: list[str] = ["--network", "host", "--build-arg", f"BASE_IMAGE={base}"]
        ca = oci.host_ca_bundle()
        if (
            ca is not None
        ):  # pip inside the build trusts what the host trusts; the bundle stays out of the image
            extra += ["--volume", f"{ca}:{BUILD_CA}:ro", "--build-arg", f"PIP_CERT={BUILD_CA}"]
        _step(
            f"{ref}: buildah bud of Dockerfile on {base}", lambda: oci.bud(ref, DOCKERFILE, context, *extra)
        )
    checks = [
        ["kopf", "--version"],
        ["python", "-c", "import rayvllm.handlers; print('rayvllm.handlers ok')"],
    ]
    _step(
        f"{ref}: checking kopf and the operator package as user 10001",
        lambda: oci.verify(ref, checks, "10001:10001"),
    )


def _build_redis(ref: str) -> None:
    base = ensure_base("redis-base")
    with _scratch() as tmp:  # the Containerfile copies nothing: an empty context
        _step(
            f"{ref}: buildah bud on {base}",
            lambda: oci.bud(
                ref, FILES / "redis.Containerfile", Path(tmp), "--build-arg", f"BASE_IMAGE={base}"
            ),
        )
    checks = [["redis-server", "--version"]]
    _step(f"{ref}: checking redis-server as user 10003", lambda: oci.verify(ref, checks, "10003:10003"))


def _built(ref: str, build: Callable[[str], None]) -> None:
    """`ref` in buildah's storage: built unless it is there already."""
    if oci.buildah_has(ref):
        log(oci.COMPONENT, f"{ref}: cached in buildah's storage")
        return
    try:
        _step(f"{ref}: build", lambda: build(ref))
    except BaseException:
        # A build that failed its checks has already committed its tag: never let that pass as cached.
        oci.buildah("rmi", "--force", ref, check=False)
        raise
    oci.prune_other_tags(ref)


def _ensure(ref: str, build: Callable[[str], None], address: Path) -> str:
    started = time.monotonic()
    if oci.containerd_has(address, ref):
        log(oci.COMPONENT, f"{ref}: already in containerd")
        return ref
    _built(ref, build)
    _step(f"{ref}: export to containerd", lambda: oci.export_to_containerd(ref, address))
    log(oci.COMPONENT, f"{ref}: ready in {time.monotonic() - started:.1f}s")
    return ref


def ensure_pause(containerd_address: Path) -> str:
    return _ensure(refs().pause, _build_pause, containerd_address)


def ensure_ray(containerd_address: Path) -> str:
    return _ensure(refs().ray, _build_ray, containerd_address)


def ensure_operator(containerd_address: Path) -> str:
    return _ensure(refs().operator, _build_operator, containerd_address)


def ensure_redis(containerd_address: Path) -> str:
    return _ensure(redis_ref(), _build_redis, containerd_address)


def ensure_images(containerd_address: Path) -> Images:
    """Build what is missing and import it into the containerd at `containerd_address`; one build at a time."""
    return Images(
        pause=ensure_pause(containerd_address),
        ray=ensure_ray(containerd_address),
        operator=ensure_operator(containerd_address),
    )


def build_images() -> Images:
    """Build what is missing into buildah's storage, without containerd (`make images`): the builds phase
    runs it beside the Go builds of `make tools` (two at a time), an image build being mostly disk I/O and theirs CPU; the
    cluster's start then only exports them."""
    images = refs()
    _built(images.pause, _build_pause)
    _built(images.ray, _build_ray)
    _built(images.operator, _build_operator)
    return images


ENSURE: dict[str, Callable[[Path], str]] = {
    "pause": ensure_pause,
    "ray": ensure_ray,
    "operator": ensure_operator,
    "redis": ensure_redis,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hack.localcluster.images", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--containerd-address", type=Path, help="containerd's gRPC socket")
    parser.add_argument("--only", choices=sorted(ENSURE), help="just this image")
    parser.add_argument("--refs", action="store_true", help="print the references (JSON) without building")
    parser.add_argument(
        "--build-only",
        action="store_true",
        help="build into buildah's storage, no containerd (`make images`)",
    )
    args = parser.parse_args(argv)
    if args.refs:
        print(json.dumps({**asdict(refs()), "redis": redis_ref()}, indent=2))
        return 0
    if args.build_only:
        started = time.monotonic()
        print(json.dumps(asdict(build_images()), indent=2))
        log(oci.COMPONENT, f"built (or found) in {time.monotonic() - started:.1f}s")
        return 0
    if args.containerd_address is None:
        parser.error("--containerd-address is required unless --refs")
    started = time.monotonic()
    if args.only:
        print(ENSURE[args.only](args.containerd_address))
    else:
        print(json.dumps(asdict(ensure_images(args.containerd_address)), indent=2))
    log(oci.COMPONENT, f"all done in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
