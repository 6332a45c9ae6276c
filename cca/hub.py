"""Released checkpoints by name: one registry, resolved through huggingface_hub's cache at a pinned revision.

    python -m cca.hub list                    # every name: repository, file, revision, published sha256
    python -m cca.hub fetch var_d16 vae_ch160v4096z32   # download into the cache (online), check the sha256
    python -m cca.hub path var_d16            # the cached file, offline
    python -m cca.hub verify var_d16          # sha256 of the cached file against the published one

Every checkpoint flag of the entry scripts takes a name from this registry, an ``hf://OWNER/REPO/FILE`` address or
a local path (an existing local file always wins over a name). Names never download when ``HF_HUB_OFFLINE`` is
set or the hub cannot be reached: the error is one line naming the file and the command that fetches it.

The sha256 values are the git-LFS object ids shown on the hub's file and commit pages (looked up 2026-12-01);
``None`` where no page with the value was found. Revisions are full commit hashes where one was found; the
CCA_VAR repository's commit is unknown, so its files resolve at ``main`` (``pinned`` is False).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cca.checkpoint import CheckpointError
from cca.cli import exits_on_errors

VAR_REPO, VAR_REV = "FoundationVision/var", "6d0ee6598a42f75079aa79e58b012b57b284c91b"
LLAMAGEN_REPO, LLAMAGEN_REV = "FoundationVision/LlamaGen", "81e41139272c038412e4fe8f1c52a51ebbf95b8b"
CCA_VAR_REPO, CCA_VAR_REV = "ChenDRAG/CCA_VAR", "main"
CCA_LLAMAGEN_REPO, CCA_LLAMAGEN_REV = "ChenDRAG/CCA_LlamaGen", "7e2eb486a691f7161405db1535215adb6269766b"
LLAMAGEN_SIZES = ("B", "L", "XL", "XXL", "3B")
VAR_DEPTHS = (16, 20, 24, 30)


@dataclass(frozen=True)
class Release:
    name: str
    family: str                     # "var" or "llamagen": which sampler reads it
    role: str                       # "model" or "tokenizer"
    repo: str
    filename: str                   # path inside the repository
    revision: str                   # a commit hash, or a branch where no commit could be learned
    sha256: str | None = None       # published git-LFS oid (None: not learned)
    size: int | None = None         # published size in bytes
    sampler_args: tuple[str, ...] = ()   # architecture flags the family's sampler needs for this file

    @property
    def pinned(self) -> bool:
        return len(self.revision) == 40

    def fetch_hint(self) -> str:
        return (f"python -m cca.hub fetch {self.name} (= hf download {self.repo} {self.filename} "
                f"--revision {self.revision})")


def _var(depth: int, sha: str | None, size: int | None, **extra) -> Release:
    args = ("--depth", str(depth)) + extra.pop("args", ())
    return Release(f"var_d{depth}", "var", "model", VAR_REPO, f"var_d{depth}.pth", VAR_REV, sha, size, args)


def _gpt(size_name: str, sha: str | None, nbytes: int | None) -> Release:
    return Release(f"c2i_{size_name}_384", "llamagen", "model", LLAMAGEN_REPO, f"c2i_{size_name}_384.pt",
                   LLAMAGEN_REV, sha, nbytes, _gpt_args(size_name))


def _gpt_args(size_name: str) -> tuple[str, ...]:
    return ("--gpt-model", f"GPT-{size_name}", "--image-size", "384")


def _cca_releases() -> list[Release]:
    out = [Release(f"VAR_d{d}_CCA", "var", "model", CCA_VAR_REPO, f"CCA_VAR_Guidance_Free/VAR_d{d}_CCA.pth",
                   CCA_VAR_REV, sampler_args=("--depth", str(d))) for d in VAR_DEPTHS]
    for s in LLAMAGEN_SIZES:
        stem = f"c2i_{s}_384_CCA_0005000"
        out.append(Release(stem, "llamagen", "model", CCA_LLAMAGEN_REPO, f"CCA_LlamaGen_Guidance_Free/{stem}.pt",
                           CCA_LLAMAGEN_REV, sampler_args=_gpt_args(s)))
        out.append(Release(f"{stem}_w_CFG", "llamagen", "model", CCA_LLAMAGEN_REPO,
                           f"CCA_LlamaGen_w_CFG/{stem}.pt", CCA_LLAMAGEN_REV, sampler_args=_gpt_args(s)))
    return out


_RELEASES = [
    Release("vae_ch160v4096z32", "var", "tokenizer", VAR_REPO, "vae_ch160v4096z32.pth", VAR_REV,
            "7c3ec27ae28a3f87055e83211ea8cc8558bd1985d7b51742d074fb4c2fcf186c", 436075834),
    _var(16, "4f6151aad91c94e03e224dd7358d8389fa05301c0c291279566998efb54b0ecb", 1243116346),
    _var(20, "f7d232978e6fe82a4f2e0f5d82b012e01b1aa5abfe93ce2b56104ec0e878a10f", 2405720018),
    _var(24, "1f5fa9cfec7be1c60034511eeacde06e24892f416d3d1e5fd227fdac56293dfc", 4135702618),
    _var(30, "7b11551dd4d794c7d6ed10b3d2822d42efe609a86128171b646e543dd2633b56", None),
    _var(36, "660201c829c6f7b775b9119867c12c11aaa68c72770dc33653eec1fa67e27d4d", 9436153085,
         args=("--pn", "512", "--saln", "1")),        # 512 px, shared AdaLN (VAR README: "d36-s")
    Release("vq_ds16_c2i", "llamagen", "tokenizer", LLAMAGEN_REPO, "vq_ds16_c2i.pt", LLAMAGEN_REV,
            "109aa8afb2cf3761eec23cdc8644154cb498f5ab7eef2a35264d25e5e0499f7d", 287920306),
    _gpt("B", "7ddf3a659b180e4339e4dab8802183ede1ea8f44c5cfd4359ab27bef979c17ad", 443736709),
    _gpt("L", "9b8cb63634d11e684b4a68017abffff6698752ef715058a77e5e089539ebc39a", 1371860346),
    _gpt("XL", "736cb92bebdcb16737dbd35210a07ae4f7fd001cdfd55b26205d89182d1807ba", 3099048319),
    _gpt("XXL", "cba5a780b9d2394386e7410c630bced3a70e109cf7107e1783c9a986e9e7754e", None),
    _gpt("3B", "1e9173ecbe81295b1d80b021b2bf57ed4ef089601b6745336ff20a9f382c4cac", 12386725354),
    *_cca_releases(),
]
RELEASES: dict[str, Release] = {r.name: r for r in _RELEASES}
TOKENIZERS = {"var": "vae_ch160v4096z32", "llamagen": "vq_ds16_c2i"}   # the released tokenizer of each family


def release_of(ref: str | os.PathLike) -> Release | None:
    """The registry entry a checkpoint flag value names (an existing local file of that name wins: None)."""
    text = str(ref)
    if text in RELEASES and not Path(text).exists():
        return RELEASES[text]
    return None


def is_remote(ref: str | os.PathLike) -> bool:
    """True for values that resolve through the hub: a release name or an ``hf://`` address."""
    return str(ref).startswith("hf://") or release_of(ref) is not None


def resolve(ref: str | os.PathLike) -> Path:
    """A local path as is; a release name or ``hf://OWNER/REPO/FILE`` through huggingface_hub's cache."""
    release = release_of(ref)
    if release is not None:
        return _download(release.repo, release.filename, release.revision, str(ref), release.fetch_hint())
    text = str(ref)
    if not text.startswith("hf://"):
        return Path(ref)
    parts = text[len("hf://"):].split("/")
    if len(parts) < 3:
        raise CheckpointError(f"{text}: expected hf://OWNER/REPO/PATH/IN/REPO")
    return _download("/".join(parts[:2]), "/".join(parts[2:]), None, text,
                     "download the file and pass its local path instead")


def _download(repo: str, filename: str, revision: str | None, what: str, fix: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download
        return Path(hf_hub_download(repo, filename, revision=revision))
    except Exception as e:  # offline, unreachable, missing file or revision: all end in the same one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        at = f" at revision {revision}" if revision else ""
        raise CheckpointError(f"{what}: could not get {repo}/{filename}{at} from the Hugging Face cache or hub "
                              f"({type(e).__name__}: {first[:120]}); {fix}") from None


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes; remembered per (real path, size, mtime) for the life of the process."""
    real = Path(path).resolve()
    st = real.stat()
    key = (str(real), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        digest = hashlib.sha256()
        with open(real, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _SHA_MEMO[key] = digest.hexdigest()
    return _SHA_MEMO[key]


def provenance(ref: str | os.PathLike) -> dict:
    """What a checkpoint flag value resolved to: name, repository, revision, local file, size and sha256, and
    whether the sha256 equals the published one (None where none is published)."""
    path = resolve(ref)
    release = release_of(ref)
    sha = file_sha256(path)
    out = {"given": str(ref), "path": str(path), "size": path.stat().st_size, "sha256": sha}
    if release is not None:
        out.update(name=release.name, repo=release.repo, filename=release.filename, revision=release.revision,
                   revision_pinned=release.pinned, published_sha256=release.sha256,
                   matches_published=None if release.sha256 is None else sha == release.sha256)
    return out


def mismatch_warning(record: dict) -> str | None:
    """One line when a named checkpoint's bytes differ from the published file, else None."""
    if record.get("matches_published") is False:
        return (f"{record['name']}: sha256 {record['sha256'][:12]}... of {record['path']} differs from the published "
                f"{record['published_sha256'][:12]}...; results made with it are not the released model's")
    return None


def fetch(name: str) -> Path:
    """Download one release into the hub cache (a no-op when cached); a published sha256 must match."""
    release = RELEASES[name]
    try:
        from huggingface_hub import hf_hub_download
        path = Path(hf_hub_download(release.repo, release.filename, revision=release.revision))
    except Exception as e:  # noqa: BLE001 - one line per failure, whatever the hub raised
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{name}: download of {release.repo}/{release.filename} at {release.revision} "
                              f"failed ({type(e).__name__}: {first[:160]})") from None
    warning = mismatch_warning(provenance(name))
    if warning:
        raise CheckpointError(warning)
    return path


def _list() -> None:
    for r in RELEASES.values():
        sha = r.sha256[:12] + "..." if r.sha256 else "not published"
        rev = r.revision[:12] if r.pinned else f"{r.revision} (unpinned)"
        print(f"{r.name:34s} {r.family:8s} {r.role:9s} {r.repo}/{r.filename} @ {rev}  sha256 {sha}")


@exits_on_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cca.hub", description=__doc__.strip().splitlines()[0],
                                allow_abbrev=False)
    p.add_argument("command", choices=["list", "fetch", "path", "verify"])
    p.add_argument("names", nargs="*", help="release names (python -m cca.hub list)")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in RELEASES]
    if unknown:
        p.error(f"unknown release name(s) {', '.join(unknown)}; see python -m cca.hub list")
    if args.command == "list":
        _list()
        return 0
    try:
        for name in args.names:
            if args.command == "fetch":
                print(f"{name}: {fetch(name)}")
            elif args.command == "path":
                print(resolve(name))
            else:
                record = provenance(name)
                status = {None: "no published sha256", True: "matches the published sha256"}.get(
                    record["matches_published"], "DIFFERS from the published sha256")
                print(f"{name}: {record['path']} sha256 {record['sha256']} ({status})")
                if record["matches_published"] is False:
                    return 1
    except CheckpointError as e:
        raise CheckpointError(f"cca.hub {args.command}: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
