"""The `medsa` command line: `medsa train`, `eval`, `predict`, `app`, `push` and `tasks`.

Only the chosen command imports torch, transformers and peft, so `medsa --help` answers at once
(`benchmarks/cli_startup.py` measures it).

Errors a user can fix (a missing file, a prompt outside the image, an adapter for another base) end with one
line on stderr and exit status 2, never a traceback; nothing that exists is overwritten without --overwrite.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from pathlib import Path

from . import __version__
from .errors import MedSAError, MedSAFileNotFoundError, MedSAValueError

MODEL_HELP = (
    "SAM, SAM 2 or SAM 3 tracker checkpoint: Hub id (facebook/sam-vit-base, facebook/sam2.1-hiera-tiny) "
    "or folder"
)
EPILOG = (
    "Prompts: 2-D images in pixels (x = column, y = row); volumes in the file's voxel indices (i, j on "
    "slice k of the third axis, as ITK-SNAP and 3D Slicer show them). See `medsa COMMAND --help`."
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if argv[:1] == ["train"]:  # the Trainer's own (long) argument list: see `medsa train --help`
        return _run(lambda: _train(argv[1:]))
    args = parser.parse_args(argv)
    return _run(lambda: args.handler(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medsa", description="Med-SA: adapt Segment Anything to medical images with peft.", epilog=EPILOG
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "train", help="train an adapter (Trainer arguments, or one JSON/YAML file)", add_help=False
    )

    evaluate = commands.add_parser("eval", help="score an adapter (or a bare SAM) on a task split")
    evaluate.add_argument("--model", required=True, help=MODEL_HELP)
    evaluate.add_argument("--adapter", help="Med-SA adapter folder or Hub id (omit: the bare SAM)")
    evaluate.add_argument("--task", required=True, help="registered task name or task YAML/JSON file")
    evaluate.add_argument("--data-dir", help="local copy of a Hub task")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--prompt", default="box", help="1-click, 3-click, box, bbox-0.5, bbox-0.75")
    evaluate.add_argument("--prompt-seed", type=int, default=0)
    evaluate.add_argument("--depth", type=int, help="volumes, SAM only: SD-Trans chunks of this many slices")
    evaluate.add_argument("--max-samples", type=int)
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument(
        "--box-baseline", action="store_true", help="also score the prompt box itself as the mask"
    )
    evaluate.add_argument(
        "--device", help="where the model runs, e.g. cuda, cuda:1, cpu (default: cuda when present, else cpu)"
    )
    evaluate.add_argument(
        "--output", type=Path, help="write the report (metrics, units, per-case rows) as JSON here"
    )
    evaluate.add_argument("--overwrite", action="store_true")
    evaluate.set_defaults(handler=_evaluate)

    predict = commands.add_parser(
        "predict",
        help="segment a PNG/JPEG/DICOM image or a NIfTI/NRRD volume",
        description="Write the mask in the input's format and geometry (NIfTI/NRRD: same shape, affine and "
        "header; DICOM: a DICOM-SEG in a new series, saved as .dcm), and an overlay PNG to look at. Prompts: "
        "2-D images in pixels, x = column, y = row; volumes in the file's voxel indices as ITK-SNAP and 3D "
        "Slicer show them: --point I J / --box I1 J1 I2 J2 on slice K of the third voxel axis (--slices). "
        "SAM segments the prompted slices; a SAM 2-family video checkpoint (e.g. facebook/sam2.1-hiera-tiny) "
        "takes them as key slices and propagates them through the volume in both directions (--propagate).",
    )
    predict.add_argument(
        "input",
        type=Path,
        help="image (.png .jpg .dcm) or volume (.nii .nii.gz .nrrd, a DICOM series folder)",
    )
    predict.add_argument("--model", required=True, help=MODEL_HELP)
    predict.add_argument("--adapter", help="Med-SA adapter folder or Hub id (omit: the bare SAM)")
    predict.add_argument(
        "--point",
        nargs=2,
        type=float,
        action="append",
        default=[],
        metavar=("X|I", "Y|J"),
        help="positive click: column and row of an image, voxel indices i j of a volume (repeatable)",
    )
    predict.add_argument(
        "--negative-point",
        nargs=2,
        type=float,
        action="append",
        default=[],
        metavar=("X|I", "Y|J"),
        help="negative click",
    )
    predict.add_argument("--box", nargs=4, type=float, metavar=("X1|I1", "Y1|J1", "X2|I2", "Y2|J2"))
    predict.add_argument(
        "--slices",
        help="volumes: slices K (third voxel axis) for --point/--box: K or START:STOP (default: all)",
    )
    predict.add_argument("--boxes-file", type=Path, help='volumes: JSON {"K": [i1, j1, i2, j2], ...}')
    predict.add_argument(
        "--propagate",
        metavar="START:STOP",
        help="volumes with a SAM 2-family video checkpoint: the slices K the prompts are carried to (STOP "
        "excluded; default: the whole volume); the others stay empty",
    )
    predict.add_argument(
        "--depth", type=int, default=8, help="volumes with an SD-Trans adapter: slices per chunk"
    )
    predict.add_argument(
        "--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available, else cpu)"
    )
    predict.add_argument(
        "--output", type=Path, required=True, help="mask file: the input's format (.dcm: a DICOM-SEG)"
    )
    predict.add_argument("--overlay", type=Path, help="overlay PNG (default: OUTPUT with .overlay.png)")
    predict.add_argument("--overwrite", action="store_true", help="replace existing output files")
    predict.set_defaults(handler=_predict)

    app = commands.add_parser(
        "app",
        help="a web page: click on an image or volume, compare the base and adapters, download the mask",
        description="Serves the page on http://HOST:PORT until Ctrl+C. Offline default: the small SAM in "
        "models/sam-small-synthetic, with the adapter `make demo` trains (runs/demo/adapter) when it exists.",
    )
    app.add_argument("--model", help="SAM checkpoint: Hub id or folder (default: models/sam-small-synthetic)")
    app.add_argument(
        "--adapter",
        action="append",
        help="Med-SA adapter folder or Hub id, shown next to the base (repeatable)",
    )
    app.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    app.add_argument("--port", type=int, help="port (default: gradio's, 7860 or the next free one)")
    app.add_argument("--max-upload-mb", type=float, default=200, help="largest accepted upload, in MB")
    app.set_defaults(handler=_app)

    push = commands.add_parser(
        "push",
        help="publish a trained adapter folder to the Hugging Face Hub",
        description="Upload the adapter, its adapter_config.json, the Med-SA card (README.md) and the metrics "
        "(*_results.json) of ADAPTER_DIR; never a pickle or a checkpoint. Needs `hf auth login` or HF_TOKEN.",
    )
    push.add_argument("adapter_dir", type=Path, help="folder written by `medsa train` (or save_pretrained)")
    push.add_argument("repo_id", help="Hub repository, e.g. your-name/medsa-busi (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--revision", help="branch to push to")
    push.add_argument("--token", help="Hub token (default: the logged-in one, or HF_TOKEN)")
    push.set_defaults(handler=_push)

    tasks = commands.add_parser(
        "tasks", help="list the registered tasks with their source, license and state"
    )
    tasks.set_defaults(handler=_tasks)
    return parser


def _run(command) -> int:
    """Run a subcommand; a user mistake (`MedSAError`) ends in one line on stderr and exit status 2.

    Anything else is a bug and keeps its traceback: library errors that can only mean a user mistake are
    translated into `MedSAError` where they occur, with the file or id they concern.
    """
    from huggingface_hub.utils import enable_progress_bars
    from transformers.utils import logging

    logging.set_verbosity_error()  # keep stderr for what went wrong
    logging.disable_progress_bar()  # transformers' per-file bars of weight loading (this also mutes the Hub's)
    enable_progress_bars()  # ...but a multi-GB SAM download shows its progress
    try:
        with (
            warnings.catch_warnings()
        ):  # the libraries' deprecation notices are for developers, not this stderr
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            command()
    except MedSAError as error:
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"medsa: error: {message}", file=sys.stderr)
        return 2
    return 0


def _refuse_overwrite(paths: list[Path], overwrite: bool) -> None:
    existing = [str(p) for p in paths if p is not None and p.exists()]
    if existing and not overwrite:
        raise MedSAValueError(
            f"{', '.join(existing)} already exist(s); pass --overwrite to replace, or choose another --output."
        )


def _train(argv: list[str]) -> None:
    from .training.arguments import parse_arguments
    from .training.run import train

    if argv in (["--help"], ["-h"]):
        parse_arguments(["--help"])
    print(json.dumps(train(*parse_arguments(argv)), indent=2))


def _evaluate(args: argparse.Namespace) -> None:
    from .predict import load_model
    from .training.evaluation import evaluate

    _refuse_overwrite([args.output], args.overwrite)
    report = evaluate(
        load_model(args.model, args.adapter),
        args.task,
        args.split,
        args.prompt,
        prompt_seed=args.prompt_seed,
        depth=args.depth,
        data_dir=args.data_dir,
        max_samples=args.max_samples,
        batch_size=args.batch_size,
        device=args.device,
        box_baseline=args.box_baseline,
    )
    print(report.to_json())
    if args.output:
        report.save(args.output)


def _push(args: argparse.Namespace) -> None:
    from .hub import push_adapter_folder

    if not args.adapter_dir.is_dir():
        raise MedSAFileNotFoundError(
            f"No adapter folder at {args.adapter_dir}: pass the --output_dir of `medsa train`."
        )
    url = push_adapter_folder(
        args.adapter_dir, args.repo_id, token=args.token, private=args.private or None, revision=args.revision
    )
    print(f"pushed {args.adapter_dir} to {args.repo_id}: {url}")


def _tasks(args: argparse.Namespace) -> None:
    from .data.registry import get_task, list_tasks

    rows = [("task", "format", "source", "verified", "license")]
    for name in list_tasks():
        spec = get_task(name)
        rows.append((name, spec.format, spec.source_name(), "yes" if spec.verified else "no", spec.license))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]  # the license, last, is not padded
    for *cells, license in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) + "  " + license
        )


def _predict(args: argparse.Namespace) -> None:
    from .data.readers import NIFTI_SUFFIXES, NRRD_SUFFIXES, file_suffix
    from .predict import Segmenter, load_model, predict_file, write_overlay

    if not args.input.exists():
        raise MedSAFileNotFoundError(f"No input file at {args.input}.")
    overlay = args.overlay or args.output.with_name(args.output.name.split(".")[0] + ".overlay.png")
    _refuse_overwrite([args.output, overlay], args.overwrite)
    prompts = _prompts(args)
    propagate = _slice_range(args.propagate, "--propagate") if args.propagate else None
    volume = args.input.is_dir() or file_suffix(args.input) in NIFTI_SUFFIXES + NRRD_SUFFIXES
    # Volumes go to the video model where the checkpoint has one (SAM 2 family): it propagates the prompts.
    model = load_model(args.model, args.adapter, video=None if volume else False)
    segmenter = Segmenter(model, device=args.device)
    shown = predict_file(segmenter, args.input, args.output, prompts, depth=args.depth, propagate=propagate)
    write_overlay(shown.image, shown.mask, shown.prompt, overlay)
    print(
        f"mask: {args.output} ({int(shown.mask.sum())} px on slice {shown.slice_index}); overlay: {overlay}"
    )


def _app(args: argparse.Namespace) -> None:
    from .app import DEFAULT_MODEL, launch

    launch(args.model or DEFAULT_MODEL, args.adapter, args.host, args.port, args.max_upload_mb)


def _prompts(args: argparse.Namespace):
    """One `Prompt` (a 2-D image, or every slice of a volume) or a mapping slice K -> `Prompt`."""
    from .predict import Prompt, read_boxes_file

    if args.boxes_file:
        if args.point or args.negative_point or args.box or args.slices:
            raise MedSAValueError("Give either --boxes-file or --point/--box (with --slices), not both.")
        if not args.boxes_file.exists():
            raise MedSAFileNotFoundError(f"No boxes file at {args.boxes_file}.")
        return read_boxes_file(args.boxes_file)
    prompt = Prompt(
        [tuple(p) for p in args.point],
        [tuple(p) for p in args.negative_point],
        tuple(args.box) if args.box else None,
    )
    if not (prompt.points or prompt.box):
        raise MedSAValueError(
            "Give a prompt: --point X Y (repeatable), --box X1 Y1 X2 Y2, or --boxes-file for a volume."
        )
    return prompt if args.slices is None else dict.fromkeys(_slice_range(args.slices), prompt)


def _slice_range(text: str, option: str = "--slices") -> range:
    """`K` or `START:STOP` (STOP excluded), whole numbers >= 0."""
    match = re.fullmatch(r"(\d+)(?::(\d+))?", text.strip())
    if not match:
        raise MedSAValueError(
            f"{option} {text!r}: expected K or START:STOP with whole numbers >= 0 (e.g. 10:20, STOP excluded)."
        )
    start = int(match[1])
    stop = int(match[2]) if match[2] is not None else start + 1
    if stop <= start:
        raise MedSAValueError(
            f"{option} {text!r}: START must be smaller than STOP (STOP is excluded), e.g. 3:6."
        )
    return range(start, stop)


if __name__ == "__main__":
    sys.exit(main())
