"""The ``hart-edu`` command (also ``python -m hart_edu``).

* ``hart-edu demo``: the hybrid tokenizer on a photo and held-out scenes (see hart_edu.demo);
* ``hart-edu generate``: text to image with :class:`hart_edu.sampler.HARTPipeline`, saved as
  the official sample.py saves it (``000000.png``... or one ``sample_images.png`` grid, and a
  ``prompt.txt``).

Bad input gives one line on stderr, exit status 2 and no files: everything is checked before
the models load, and the outputs are written to hidden temporary files in the output folder
that are renamed only once all of them are complete.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import os
import sys
import warnings
from pathlib import Path

EXIT_BAD_INPUT = 2

# Further subcommands live in their own modules, each with ``add_parser(sub)`` (registers the
# subcommand on the argparse sub-parsers) and ``run(args) -> int`` (exit status). Keep their
# heavy imports inside ``run`` so ``hart-edu --help`` stays fast.
SUBCOMMAND_MODULES: tuple[str, ...] = ("hart_edu.app", "hart_edu.profile", "hart_edu.download", "hart_edu.convert", "hart_edu.run_real")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # a file name where generate wants a folder


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
    gen.add_argument("--out", type=Path, default=Path("samples"), help="output folder (default: samples)")
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
    args = build_parser().parse_args(argv)
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
        message = " ".join(str(err).split())  # one line
        print(f"hart-edu {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


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
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} exists and is not a folder")
    if args.out.suffix.lower() in IMAGE_SUFFIXES and not args.out.exists():
        raise ValueError(f"--out {args.out} looks like an image file name: --out is the folder that gets "
                         f"one PNG per image (e.g. --out {args.out.with_suffix('')})")
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
    written = write_all_or_nothing(args.out, files)
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
    unless ``MALLOC_MMAP_THRESHOLD_`` is set), and with ``--quantize int8`` the linear layers are
    quantized right after loading."""
    import io

    from hart_edu.memory import map_large_blocks_unless_set
    from hart_edu.quantize import quantize_pipeline_int8_

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
            backend=args.backend, dtype=dtype, release_text_encoder=True,
        )
    if args.quantize == "int8":
        quantize_pipeline_int8_(pipe.text_encoder.model, pipe.transformer)
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


def write_all_or_nothing(folder: Path, files: dict[str, bytes]) -> list[Path]:
    """Write ``files`` (name -> bytes) into ``folder``: first to hidden temporary files beside
    their targets, then rename them all; on any error remove the temporary files (and the
    folder if this call created it)."""
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    temporary: list[tuple[Path, Path]] = []
    try:
        for name, data in files.items():
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
            temporary.append((tmp, folder / name))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        for tmp, final in temporary:
            os.replace(tmp, final)
    except BaseException:
        for tmp, _ in temporary:
            tmp.unlink(missing_ok=True)
        if created:
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
    return [final for _, final in temporary]


if __name__ == "__main__":
    sys.exit(main())
