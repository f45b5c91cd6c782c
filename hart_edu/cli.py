"""The ``hart-edu`` command (also ``python -m hart_edu``).

* ``hart-edu demo``: the hybrid tokenizer on a photo and held-out scenes (see hart_edu.demo);
* ``hart-edu generate``: text to image with :class:`hart_edu.sampler.HARTPipeline`, saved as
  the official sample.py saves it (``000000.png``... or one ``sample_images.png`` grid, and a
  ``prompt.txt``).

Bad input gives one line on stderr, exit status 2 and no files: everything is checked before
the models load (including that the output folder can be written), and the outputs are written
to hidden temporary files in the output folder that are renamed only once all of them are
complete. A run's folder holds that run only: ``generate`` refuses a folder that is not empty
unless ``--overwrite``, which replaces an earlier run's files (and refuses a folder holding
anything else). Ctrl-C ends any command with one line and exit status 130; while the outputs
are being written it is held back until they are complete or removed, so no temporary file
is left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import os
import re
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command ended by Ctrl-C

# Further subcommands live in their own modules, each with ``add_parser(sub)`` (registers the
# subcommand on the argparse sub-parsers) and ``run(args) -> int`` (exit status). Keep their
# heavy imports inside ``run`` so ``hart-edu --help`` stays fast.
SUBCOMMAND_MODULES: tuple[str, ...] = ("hart_edu.app", "hart_edu.profile", "hart_edu.download", "hart_edu.convert",
                                       "hart_edu.run_real", "hart_edu.eval")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # a file name where generate wants a folder
# The files one generate run writes (sample.py's names), and their hidden temporary files:
# what ``--overwrite`` may replace in an output folder.
_RUN_NAMES = r"(\d{6}\.png|sample_images\.png|prompt\.txt)"
RUN_FILE = re.compile(rf"{_RUN_NAMES}|\.{_RUN_NAMES}\.\d+\.tmp")


def add_generate_parser(sub) -> None:
    from hart_edu.cpu_dtype import add_cpu_arguments
    from hart_edu.safety import add_safety_arguments
    from hart_edu.generation_config import GENERATION_CONFIG, MAX_CFG, GenerationConfig
    from hart_edu.sampler import DEFAULT_SEED

    official = GenerationConfig()
    from_tree = f"default: the weights' {GENERATION_CONFIG}, else"  # the sampling options' default is None

    gen = sub.add_parser(
        "generate",
        help="text to image with a HART model (the official sample.py path)",
        description="Generate images from prompts with a HART tree (tokenizer/, llm/, text_encoder/).",
    )
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", action="append", help="a prompt (repeat the option for several)")
    source.add_argument("--prompt-file", type=Path, help="a UTF-8 text file, one prompt per line (blank lines skipped)")
    gen.add_argument("--weights", type=Path, default=None,
                     help="a HART tree with tokenizer/ and llm/ (default: the repository's weights/tiny)")
    gen.add_argument("--text-encoder", type=Path, default=None,
                     help="the text encoder folder (default: WEIGHTS/text_encoder/, else the pip package "
                          "that WEIGHTS/text_encoder.json names, as weights/tiny does)")
    gen.add_argument("--text-tokenizer", type=Path, default=None,
                     help="its tokenizer files (default: WEIGHTS/text_tokenizer if present, else the text encoder folder)")
    gen.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default: {DEFAULT_SEED})")
    gen.add_argument("--cfg", type=float, default=None,
                     help=f"classifier-free guidance scale, in [0, {MAX_CFG:g}] ({from_tree} {official.cfg:g})")
    gen.add_argument("--top-k", type=int, default=None,
                     help="keep the k most likely codes, 0: off (the official code overrides it unless "
                          f"--no-official-quirks; {from_tree} {_on_off(official.top_k)})")
    gen.add_argument("--top-p", type=float, default=None,
                     help=f"nucleus sampling, in (0, 1], 0: off ({from_tree} {_on_off(official.top_p)})")
    gen.add_argument("--more-smooth", action=argparse.BooleanOptionalAction, default=None,
                     help=f"Gumbel-softmax blends of codes, sample.py's choice ({from_tree} "
                          f"{_on_off(official.more_smooth)})")
    gen.add_argument("--residual", action=argparse.BooleanOptionalAction, default=None,
                     help=f"add the diffusion head's continuous residual ({from_tree} {_on_off(official.residual)})")
    gen.add_argument("--greedy", action=argparse.BooleanOptionalAction, default=None,
                     help=f"take the most likely code instead of drawing one ({from_tree} {_on_off(official.greedy)})")
    gen.add_argument("--diffusion-temperature", type=float, default=None,
                     help="temperature of the residual diffusion's sampling, > 0 "
                          f"({from_tree} {official.diffusion_temperature:g})")
    gen.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                     help="use the EMA weights, llm/ema_model.safetensors or llm/ema_model.bin; --no-ema: "
                          "llm/model.safetensors or llm/pytorch_model.bin (default: on)")
    gen.add_argument("--system-prompt", action=argparse.BooleanOptionalAction, default=None,
                     help="prefix the official system prompt to every prompt (default: the weights tree's "
                          "choice: on for the released model, off for weights/tiny)")
    gen.add_argument("--official-quirks", action=argparse.BooleanOptionalAction, default=True,
                     help="keep the official code's quirks (see OfficialQuirks; default: on)")
    gen.add_argument("--num-images", type=int, default=1, help="images per prompt (default: 1)")
    gen.add_argument("--out", type=Path, default=Path("samples"),
                     help="output folder, made if missing; it must be empty (a run's folder holds that run "
                          "only) unless --overwrite (default: samples)")
    gen.add_argument("--overwrite", action="store_true",
                     help="reuse a non-empty --out that holds an earlier run: its images and prompt.txt are "
                          "replaced once the new ones are written; a folder holding any other file is still "
                          "refused (default: off)")
    gen.add_argument("--grid", action=argparse.BooleanOptionalAction, default=False,
                     help="one sample_images.png grid instead of one PNG per image (default: off)")
    gen.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                     help="show progress bars (loading the weights, then the scales; default: on)")
    gen.add_argument("--backend", choices=("reference", "triton"), default="reference",
                     help="kernel backend: PyTorch reference or the fused Triton kernels (a CUDA device, or "
                          "TRITON_INTERPRET=1 to run them slowly on the CPU; default: reference)")
    add_cpu_arguments(gen)
    add_safety_arguments(gen)


def _on_off(value) -> str:
    """How the help states a default: on/off for a switch (None: off), else the value."""
    if value is None or isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}"


# the options of ``generate`` whose default (None) is the weights' generation_config.json
SAMPLING_OPTIONS = ("cfg", "top_k", "top_p", "more_smooth", "residual", "greedy", "diffusion_temperature")


def build_parser() -> argparse.ArgumentParser:
    from hart_edu.generation_config import GENERATION_CONFIG, GenerationConfig

    parser = argparse.ArgumentParser(prog="hart-edu", description="Learn, run and hack on HART.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the tiny HART draws held-out captions (a grid, time per image)")
    demo.add_argument("--out", default="demo.png", help="the PNG file to write, in an existing folder; a folder or a name "
                      "without .png is refused (default: demo.png)")
    demo.add_argument("--weights", default=None,
                      help="a HART tree (default: weights/tiny); with --tokenizer, a tokenizer/ folder")
    demo.add_argument("--n", type=int, default=12, help="number of captions (default: 12)")
    demo.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    demo.add_argument("--cfg", type=float, default=None,
                      help=f"guidance scale (default: the weights' {GENERATION_CONFIG}, else {GenerationConfig().cfg:g})")
    demo.add_argument("--record", default=None, metavar="JSON",
                      help="also write what was measured (correct captions, time, clean backgrounds, CPU) to this file")
    demo.add_argument("--tokenizer", action="store_true",
                      help="instead: tokenize a photo and held-out scenes, discrete-only vs hybrid")
    add_generate_parser(sub)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``hart-edu`` command; its exit status (0, 2 for bad input, 130 for Ctrl-C)."""
    try:
        args = build_parser().parse_args(argv)  # imports torch: Ctrl-C may come here already
    except KeyboardInterrupt:
        return report_interrupt("hart-edu")
    try:
        if args.command == "demo":
            from hart_edu import demo

            if args.tokenizer:
                return demo.tokenizer_main(args.out, args.weights)
            return demo.main(args.out, args.weights, n=args.n, seed=args.seed, cfg=args.cfg, record=args.record)
        if args.command == "generate":
            return generate_main(args)
        return args.run(args)  # a SUBCOMMAND_MODULES command: add_parser set run= as its default
    except (OSError, ValueError) as err:  # CheckpointError and UnicodeDecodeError are ValueErrors
        return report_error(f"hart-edu {args.command}", err)
    except KeyboardInterrupt:
        return report_interrupt(f"hart-edu {args.command}")


def report_error(program: str, err: BaseException) -> int:
    """Print ``err`` as one line on stderr (``PROGRAM: error: ...``); the bad-input exit status."""
    message = " ".join(str(err).split())  # one line
    print(f"{program}: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def report_interrupt(program: str) -> int:
    """Ctrl-C: one line on stderr instead of a traceback; exit status 130. Outputs are written
    all or nothing (:func:`write_all_or_nothing`, :func:`atomic_output`), so none is half there."""
    print(f"{program}: interrupted (Ctrl-C)", file=sys.stderr)
    return EXIT_INTERRUPTED


# --------------------------------------------------------------------------------------
# hart-edu generate
# --------------------------------------------------------------------------------------


def read_prompt_file(path: Path) -> list[str]:
    """One prompt per line (UTF-8, an optional BOM), blank lines skipped."""
    if not path.is_file():
        raise FileNotFoundError(f"--prompt-file {path} does not exist (or is not a file)")
    from hart_edu.limits import MAX_PROMPT_FILE_BYTES

    if path.stat().st_size > MAX_PROMPT_FILE_BYTES:
        raise ValueError(f"--prompt-file {path} has {path.stat().st_size:,} bytes, more than "
                         f"{MAX_PROMPT_FILE_BYTES:,}: is it the right file?")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"--prompt-file {path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})"
        ) from None
    prompts = [line.rstrip("\r") for line in text.split("\n")]
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise ValueError(f"--prompt-file {path} holds no prompt (only blank lines)")
    return prompts


def generate_main(args: argparse.Namespace) -> int:
    from hart_edu.generation import OFFICIAL, OfficialQuirks
    from hart_edu.paths import TINY_WEIGHTS
    from hart_edu.limits import check_image_count, check_prompt_texts
    from hart_edu.generation_config import read_generation_config
    from hart_edu.sampler import check_sample_request, check_seed

    # 1. Check everything that can be checked before loading a model. The sampling options
    # left out take the weights' generation_config.json (read here, before the models).
    prompts = read_prompt_file(args.prompt_file) if args.prompt_file is not None else args.prompt
    weights = args.weights if args.weights is not None else TINY_WEIGHTS
    sampling = read_generation_config(weights).override(**{name: getattr(args, name) for name in SAMPLING_OPTIONS})
    request = check_sample_request(prompts, sampling.cfg, sampling.top_k, sampling.top_p, args.num_images)
    check_seed(args.seed)
    check_prompt_texts(request.prompts)
    check_image_count(len(request.prompts), request.num_images_per_prompt)
    if args.out.suffix.lower() in IMAGE_SUFFIXES and not args.out.exists():
        raise ValueError(f"--out {args.out} looks like an image file name: --out is the folder that gets "
                         f"one PNG per image (e.g. --out {args.out.with_suffix('')})")
    earlier_run = check_output_folder(args.out, overwrite=args.overwrite)
    no_quirks = OfficialQuirks(**{f.name: False for f in dataclasses.fields(OfficialQuirks)})
    quirks = OFFICIAL if args.official_quirks else no_quirks
    from hart_edu.cpu_dtype import choose_cpu_dtype, print_choice

    dtype = choose_cpu_dtype(args.dtype, quantize=args.quantize)  # bfloat16 with int8: refused here
    if args.safety_checker is not None:  # refuse before the HART models load
        from hart_edu.safety import SafetyChecker

        SafetyChecker.from_pretrained(args.safety_checker, args.safety_threshold).require_safe(request.prompts)
    print_choice("hart-edu generate", dtype)

    # 2. Load and generate; warnings (e.g. a truncated prompt) become one line each.
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            images = _generate_pixels(args, request, sampling, weights, quirks, dtype.dtype)
    except FileNotFoundError as err:
        if args.weights is None:
            raise FileNotFoundError(f"{err} (the default weights are {TINY_WEIGHTS}: pass --weights ROOT)") from err
        raise
    finally:
        for message in dict.fromkeys(" ".join(str(w.message).split()) for w in caught):
            print(f"hart-edu generate: warning: {message}", file=sys.stderr)

    # 3. Write everything, or nothing.
    files = {"prompt.txt": "\n".join(request.prompts).encode("utf-8")}
    files.update(images)
    written = write_all_or_nothing(args.out, files, replace=earlier_run)
    n_images = len(request.prompts) * request.num_images_per_prompt
    kind = "a grid of" if args.grid else "one PNG per image for"
    print(f"wrote {kind} {n_images} image(s) and prompt.txt to {args.out}: {', '.join(p.name for p in written)}")
    return 0


def _generate_pixels(args: argparse.Namespace, request, sampling, weights: Path, quirks, dtype) -> dict[str, bytes]:
    """Run the pipeline; return the PNG files' bytes by file name (sample.py's names).

    ``sampling``: the GenerationConfig resolved from the options and the weights'
    generation_config.json; every value is passed explicitly (0 = off for top-k/top-p).

    The low-memory path of ``hart-edu run-real``: the text encoder is freed once the prompts are
    encoded (one call), blocks of 16 MiB and more get their own mappings (hart_edu.memory;
    unless ``MALLOC_MMAP_THRESHOLD_`` is set), and with ``--quantize int8`` each model's linear
    layers are quantized as soon as it is loaded and the KV cache is stored in bfloat16."""
    import io

    from hart_edu.memory import map_large_blocks_unless_set
    from hart_edu.kernels.backend import triton_status
    from hart_edu.sampler import TREE_DEFAULT, HARTPipeline, grid_to_uint8, image_grid, uint8_to_pil
    from hart_edu.text_encoder import HART_SYSTEM_PROMPT

    if args.backend == "triton" and not triton_status().available:  # before the models load
        raise ValueError(f"--backend triton cannot run here: {triton_status().reason}")
    map_large_blocks_unless_set()  # process-wide, for the rest of the process: generate is a program's entry point
    with transformers_progress_bars(args.progress):  # its "Loading weights" bar obeys --no-progress too
        pipe = HARTPipeline.from_pretrained(
            weights, text_encoder=args.text_encoder, ema=args.ema, text_tokenizer=args.text_tokenizer,
            system_prompt={None: TREE_DEFAULT, True: HART_SYSTEM_PROMPT, False: None}[args.system_prompt],
            backend=args.backend, dtype=dtype, release_text_encoder=True, quantize=args.quantize,
        )
    out = pipe(
        request.prompts, cfg=request.cfg, top_k=request.top_k, top_p=request.top_p,
        more_smooth=sampling.more_smooth, seed=args.seed, residual=sampling.residual, greedy=sampling.greedy,
        diffusion_temperature=sampling.diffusion_temperature,
        num_images_per_prompt=request.num_images_per_prompt, quirks=quirks, progress=args.progress,
    )
    if args.grid:
        pil_images = {"sample_images.png": uint8_to_pil(grid_to_uint8(image_grid(out.image_B3HW)))}
    else:
        pil_images = {f"{i:06d}.png": image for i, image in enumerate(out.images)}
    pngs = {}
    for name, image in pil_images.items():
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        pngs[name] = buffer.getvalue()
    return pngs


@contextlib.contextmanager
def transformers_progress_bars(enabled: bool):
    """transformers' (and huggingface_hub's) tqdm bars on or off for the block; their
    process-wide setting is put back afterwards."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if enabled != was_enabled:
        (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        if enabled != was_enabled:
            (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()


# --------------------------------------------------------------------------------------
# Outputs: checked before the models load, written all or nothing
# --------------------------------------------------------------------------------------


def check_writable(folder: Path, option: str, value: Path | None = None) -> None:
    """Raise a ValueError naming ``option`` (and its ``value``, default ``folder``) unless a file
    can be created in ``folder``, or, if it does not exist yet, in its nearest existing ancestor
    (where the missing folders would be made). Tried with a real temporary file, so a read-only
    file system is found also by root."""
    folder = Path(folder)
    value = folder if value is None else value
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{option} {value}: {ancestor} is a file, not a folder: choose another path")
    with interrupts_deferred():  # never leave the probe file behind
        try:
            fd, probe = tempfile.mkstemp(prefix=".hart-edu-write-check.", dir=ancestor)
        except OSError as err:
            reason = err.strerror or type(err).__name__
            raise ValueError(f"{option} {value} cannot be written ({reason} in {ancestor}): "
                             f"choose a folder you can write to") from None
        os.close(fd)
        os.unlink(probe)


def check_output_folder(folder: Path, *, overwrite: bool = False, option: str = "--out",
                        run_file: re.Pattern[str] = RUN_FILE, writer: str = "hart-edu generate",
                        replaced: str = "an earlier run's images and prompt.txt") -> list[Path]:
    """A command's output folder, before any model loads; returns the earlier run's files that
    the new run replaces (empty unless ``overwrite``).

    The folder may be missing (it is made when the outputs are written) or empty; a non-empty
    folder is refused unless ``overwrite``, and even then it may hold only what a run of
    ``writer`` writes (``run_file``; generate's :data:`RUN_FILE`: ``NNNNNN.png``,
    ``sample_images.png``, ``prompt.txt`` and their hidden temporary files; ``replaced`` says
    so in the refusal), so that a run's folder holds that run only and ``--overwrite`` never
    deletes a file it did not write. Last, the folder must be writable. Used by ``generate``
    and ``eval`` (:data:`hart_edu.eval.EVAL_FILE`)."""
    folder = Path(folder)
    earlier: list[Path] = []
    if folder.exists():
        if not folder.is_dir():
            raise ValueError(f"{option} {folder} exists and is not a folder")
        entries = sorted(folder.iterdir())
        if entries and not overwrite:
            raise ValueError(
                f"{option} {folder} is not empty ({_names(entries)}): a run's folder holds that run only; "
                f"choose a new folder, or pass --overwrite to replace an earlier run's files")
        foreign = [p for p in entries if not (p.is_file() and run_file.fullmatch(p.name))]
        if foreign:
            raise ValueError(
                f"{option} {folder} holds {_names(foreign)}, which {writer} did not write: --overwrite "
                f"replaces {replaced} only; choose another folder")
        earlier = entries
    check_writable(folder, option)
    return earlier


def _names(paths: list[Path], limit: int = 3) -> str:
    shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def check_output_file(path: Path, option: str) -> Path:
    """A file option's path (``run-real --json``, ``demo --record``), before any work: not a
    folder, in an existing folder that can be written. Refused in one line otherwise."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder: give the file to write, e.g. {path / 'report.json'}")
    if not path.parent.is_dir():
        raise ValueError(f"{option} {path}: folder {path.parent} does not exist: create it first")
    check_writable(path.parent, option, path)
    return path


class DeferredInterrupts:
    """What :func:`interrupts_deferred` yields: call it to ask whether Ctrl-C came;
    :meth:`forget` drops one that came too late to matter (the work is complete)."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def __call__(self) -> bool:
        return bool(self.received)

    def forget(self) -> None:
        self.received.clear()


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[DeferredInterrupts]:
    """Hold back Ctrl-C (SIGINT) for the block: it is recorded, not raised; the block may poll
    what it is given (True once Ctrl-C came) and give up cleanly. If one came and the block
    ended normally (and did not ``forget`` it), KeyboardInterrupt is raised after it. Outside
    the main thread (where Python cannot set signal handlers), or where SIGINT is ignored (a
    background job of a script), the block runs as it is."""
    state = DeferredInterrupts()
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield state
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: state.received.append(signum))
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
    if state():
        raise KeyboardInterrupt


def write_all_or_nothing(folder: Path, files: dict[str, bytes], replace: Iterable[Path] = ()) -> list[Path]:
    """Write ``files`` (name -> bytes) into ``folder``: first to hidden temporary files beside
    their targets, then rename them all; on any error or Ctrl-C remove the temporary files (and
    the folders this call created). Ctrl-C is held back meanwhile (:func:`interrupts_deferred`)
    and honoured between files, so it never leaves a temporary file behind. ``replace``: files
    of an earlier run (``--overwrite``); those the new files do not overwrite are removed once
    every new file is in place. Files are created with the usual mode (0666 less the umask).
    A Ctrl-C that comes while the finished files are renamed (the last milliseconds) lets the
    renames finish and the command end normally."""
    folder = Path(folder)
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    temporary: list[tuple[Path, Path]] = []
    with interrupts_deferred() as interrupted:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                if interrupted():
                    raise KeyboardInterrupt
                tmp = folder / f".{name}.{os.getpid()}.tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
                temporary.append((tmp, folder / name))
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            if interrupted():
                raise KeyboardInterrupt
            for tmp, final in temporary:
                os.replace(tmp, final)
            interrupted.forget()  # every file is in place: a Ctrl-C during the renames came too late
        except BaseException:
            for tmp, _ in temporary:
                tmp.unlink(missing_ok=True)
            for path in made:
                try:
                    path.rmdir()
                except OSError:
                    break
            raise
        finals = {final for _, final in temporary}
        for old in replace:
            if old not in finals:
                old.unlink(missing_ok=True)
    return [final for _, final in temporary]


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path`` (same suffix, so writers that go by it,
    e.g. matplotlib, keep the format); rename it to ``path`` when the block succeeds, remove it
    on any error or Ctrl-C. For outputs written by another library (a figure, a JSON report)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        with interrupts_deferred() as interrupted:
            os.replace(tmp, path)
            interrupted.forget()  # the file is in place: a Ctrl-C now came too late to matter
    finally:
        with interrupts_deferred():
            tmp.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
