"""``hart-edu download``: the released HART weights and their text encoder, into one folder.

Two Hugging Face repositories make the released model (about 7.1 GB + 3.1 GB)::

    mit-han-lab/hart-0.7b-1024px        -> CACHE/hart-0.7b-1024px/{tokenizer,llm}/
    mit-han-lab/Qwen2-VL-1.5B-Instruct  -> CACHE/Qwen2-VL-1.5B-Instruct/

``CACHE`` is ``--cache-dir``, else ``$HART_EDU_WEIGHTS``, else ``~/.cache/hart_edu``. The
files go to plain folders (``snapshot_download(local_dir=...)``), so the tree is exactly
what :meth:`HARTPipeline.from_pretrained(CACHE/hart-0.7b-1024px,
text_encoder=CACHE/Qwen2-VL-1.5B-Instruct) <hart_edu.sampler.HARTPipeline.from_pretrained>`
reads; :func:`load_real_pipeline` does that after :func:`check_layout` has vouched for it.

Before anything is written the command states what it will fetch: every file's size from
the hub (``HfApi.model_info(files_metadata=True)``), and how much of it is already in the
cache. The download itself resumes: ``snapshot_download`` keeps partial files
(``CACHE/<repo>/.cache/huggingface/download/*.incomplete``) and continues them on the next
call, and skips the files already complete, so an interrupted download is finished by
running the same command again.

Without a network (or with ``HF_HUB_OFFLINE=1`` or ``TRANSFORMERS_OFFLINE=1``) it fails with one line and exit status 2.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "HART_REPO",
    "TEXT_ENCODER_REPO",
    "REPOS",
    "WEIGHTS_ENV",
    "RemoteFile",
    "default_cache_dir",
    "real_weights_paths",
    "check_layout",
    "find_real_weights",
    "load_real_pipeline",
    "remote_files",
    "download",
    "add_parser",
    "run",
]

HART_REPO = "mit-han-lab/hart-0.7b-1024px"
TEXT_ENCODER_REPO = "mit-han-lab/Qwen2-VL-1.5B-Instruct"
REPOS = (HART_REPO, TEXT_ENCODER_REPO)
WEIGHTS_ENV = "HART_EDU_WEIGHTS"  # the cache folder (holding the two repositories' folders)
TEXT_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def default_cache_dir() -> Path:
    """``$HART_EDU_WEIGHTS``, else ``~/.cache/hart_edu``."""
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hart_edu"


def _folder(cache_dir: Path, repo: str) -> Path:
    return cache_dir / repo.split("/", 1)[1]


def real_weights_paths(cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(HART tree, text encoder folder) inside the cache folder."""
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return _folder(cache_dir, HART_REPO), _folder(cache_dir, TEXT_ENCODER_REPO)


# --------------------------------------------------------------------------------------
# The local layout (what the loaders need), checked without loading anything
# --------------------------------------------------------------------------------------


def check_layout(hart_root: str | Path, text_encoder: str | Path) -> list[str]:
    """Every problem that would stop :func:`load_real_pipeline`, one line each ([] = complete).

    Needs ``hart_root/tokenizer`` and ``hart_root/llm`` with a config.json of the right
    ``model_type`` and a weight file (the llm also ``ema_model.bin``, which sample.py uses),
    and a text encoder folder with config.json, weights and tokenizer files.
    """
    from hart_edu.ar_transformer import MODEL_TYPE as LLM_TYPE
    from hart_edu.checkpoint import EMA_WEIGHT_FILES, CheckpointError, find_weight_file, read_config
    from hart_edu.hybrid_tokenizer import MODEL_TYPE as TOKENIZER_TYPE

    hart_root, text_encoder = Path(hart_root), Path(text_encoder)
    problems = []
    for part, model_type in (("tokenizer", TOKENIZER_TYPE), ("llm", LLM_TYPE)):
        try:
            read_config(hart_root / part, model_type)
            find_weight_file(hart_root / part)
        except CheckpointError as err:
            problems.append(str(err))
    if (hart_root / "llm").is_dir() and not any((hart_root / "llm" / n).is_file() for n in EMA_WEIGHT_FILES):
        problems.append(f"no ema_model.bin or ema_model.safetensors in {hart_root / 'llm'}")
    if not (text_encoder / "config.json").is_file():
        problems.append(f"no text encoder config.json in {text_encoder}")
    else:
        weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
        if not any((text_encoder / name).is_file() for name in weights):
            problems.append(f"no text encoder weights in {text_encoder}: looked for {', '.join(weights)}")
        if not any((text_encoder / name).is_file() for name in TEXT_TOKENIZER_FILES):
            problems.append(f"no tokenizer files in {text_encoder}: looked for {', '.join(TEXT_TOKENIZER_FILES)}")
    return problems


def find_real_weights(cache_dir: str | Path | None = None) -> tuple[Path, Path] | None:
    """(HART tree, text encoder) when the cache folder holds a complete download, else None."""
    hart_root, text_encoder = real_weights_paths(cache_dir)
    return (hart_root, text_encoder) if not check_layout(hart_root, text_encoder) else None


def load_real_pipeline(cache_dir: str | Path | None = None, *, dtype=None, **kwargs):
    """:class:`~hart_edu.sampler.HARTPipeline` of the downloaded model (``dtype`` default
    bfloat16: the released model in float32 needs 9.5 GB of weights). Raises
    FileNotFoundError listing every missing piece when the download is incomplete."""
    import torch

    from hart_edu.sampler import HARTPipeline

    hart_root, text_encoder = real_weights_paths(cache_dir)
    problems = check_layout(hart_root, text_encoder)
    if problems:
        raise FileNotFoundError(
            f"the real HART weights are incomplete in {hart_root.parent} ({'; '.join(problems)}): "
            f"run `hart-edu download`"
        )
    dtype = torch.bfloat16 if dtype is None else dtype
    return HARTPipeline.from_pretrained(hart_root, text_encoder=text_encoder, dtype=dtype, **kwargs)


# --------------------------------------------------------------------------------------
# The hub
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    repo: str
    name: str
    size: int  # bytes, as the hub reports them


def _offline() -> bool:
    from huggingface_hub import is_offline_mode

    flags = (os.environ.get(name, "").upper() for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return is_offline_mode() or any(flag in ("1", "ON", "YES", "TRUE") for flag in flags)


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What the hub client raises when the hub cannot be reached or refuses the request:
    OSError (offline mode, files), the hub's HTTP errors, and its HTTP library's own errors
    (httpx, or the httpx2 fork that recent huggingface_hub versions use)."""
    import importlib

    from huggingface_hub.errors import HfHubHTTPError

    errors: list[type[BaseException]] = [OSError, HfHubHTTPError]
    for name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        errors.append(module.HTTPError)
    return tuple(errors)


def _unreachable(repo: str, err: BaseException) -> OSError:
    reason = " ".join(str(err).split())[:200] or type(err).__name__
    return OSError(f"cannot reach the Hugging Face hub for {repo} ({type(err).__name__}: {reason}); "
                   f"check the network (or unset HF_HUB_OFFLINE) and run the command again: "
                   f"finished files are kept and partial ones resume")


def remote_files(repos=REPOS, api=None, timeout: float = 20.0) -> list[RemoteFile]:
    """Every file of ``repos`` with its size, from the hub's metadata (nothing downloaded)."""
    from huggingface_hub import HfApi

    if _offline():
        raise OSError("HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: the Hugging Face hub cannot be "
                      "reached, so nothing can be downloaded (unset it to download)")
    api = api or HfApi()
    files = []
    for repo in repos:
        try:
            info = api.model_info(repo, files_metadata=True, timeout=timeout)
        except _hub_errors() as err:
            raise _unreachable(repo, err) from None
        files += [RemoteFile(repo, s.rfilename, int(s.size or 0)) for s in info.siblings or []]
    return files


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def size_table(files: list[RemoteFile], cache_dir: Path) -> str:
    """Per repository: files, total size, and how much is already complete in the cache."""
    lines = []
    for repo in dict.fromkeys(f.repo for f in files):
        folder = _folder(cache_dir, repo)
        mine = [f for f in files if f.repo == repo]
        total = sum(f.size for f in mine)
        have = sum(f.size for f in mine if (folder / f.name).is_file()
                   and (folder / f.name).stat().st_size == f.size)
        lines.append(f"{repo}: {len(mine)} files, {_gb(total)} ({_gb(have)} already in {folder})")
    grand = sum(f.size for f in files)
    lines.append(f"total: {_gb(grand)}")
    return "\n".join(lines)


def download(cache_dir: str | Path | None = None, repos=REPOS, *, dry_run: bool = False, api=None,
             echo=print) -> Path:
    """State the sizes, then fetch ``repos`` into ``cache_dir`` (resuming); return the cache folder."""
    from huggingface_hub import snapshot_download

    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    files = remote_files(repos, api=api)
    echo(size_table(files, cache_dir))
    if dry_run:
        return cache_dir
    for repo in repos:
        echo(f"downloading {repo} -> {_folder(cache_dir, repo)} (resumes where a previous run stopped)")
        try:
            snapshot_download(repo, local_dir=_folder(cache_dir, repo))
        except _hub_errors() as err:
            raise _unreachable(repo, err) from None
    return cache_dir


# --------------------------------------------------------------------------------------
# hart-edu download
# --------------------------------------------------------------------------------------


def add_parser(sub) -> None:
    p = sub.add_parser(
        "download",
        help="fetch the released HART weights and their text encoder (about 10 GB)",
        description=f"Download {HART_REPO} and {TEXT_ENCODER_REPO} into a cache folder, after stating "
                    f"their sizes. An interrupted download resumes when the command is run again.",
    )
    p.add_argument("--cache-dir", type=Path, default=None,
                   help=f"where to put them (default: ${WEIGHTS_ENV}, else ~/.cache/hart_edu)")
    p.add_argument("--dry-run", action="store_true", help="only state the sizes")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cache_dir = download(args.cache_dir, dry_run=args.dry_run)
    if not args.dry_run:
        hart_root, text_encoder = real_weights_paths(cache_dir)
        problems = check_layout(hart_root, text_encoder)
        if problems:
            raise OSError(f"downloaded, but the tree is incomplete: {'; '.join(problems)}")
        print(f"done: load it with HARTPipeline.from_pretrained({str(hart_root)!r}, "
              f"text_encoder={str(text_encoder)!r}, dtype=torch.bfloat16); "
              f"`hart-edu convert {hart_root / 'llm'}` saves 380 MB per file")
    return 0
