"""`medsa app`: a web page to click on a medical image or volume and compare the base SAM with Med-SA adapters.

Everything the page computes goes through `peft_medsa.predict`: `read_input` reads the file, each model is a
`Segmenter`, and the downloaded mask is written by `predict_file`, so the page and `medsa predict` give the same
mask for the same file, slice and prompt. Slices are shown as the model sees them (a volume in the canonical,
radiological view); clicks are recorded in `medsa predict`'s prompt frame: x = column, y = row of a 2-D image,
the file's own voxel indices (i, j) on slice k of a volume. Each slice's image embedding is computed once per
model and reused for every click, so a click costs only the prompt encoder and the mask decoder.

Gradio keeps uploads in its temporary upload folder; masks to download are written to a temporary folder of
this process. The page itself is built by `build_app`; the callbacks live in `MedSAApp` and run without it.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .data.preprocessing import to_rgb, to_uint8
from .data.readers import file_suffix, read_volume
from .data.registry import IntensityPolicy
from .errors import MedSAError, MedSAValueError
from .predict import InputImage, Prompt, Segmenter, SliceEmbeddings, draw_overlay, predict_file, read_input

logger = logging.getLogger(__name__)

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "sam-small-synthetic"
DEFAULT_ADAPTER = Path("runs/demo/adapter")  # what `make demo` trains, offered when it exists
BASE = "base"
# Display only: the models see the same intensities as `medsa predict` (its percentile policy).
WINDOWS = {
    "auto (MR, any image)": IntensityPolicy("percentile"),
    "CT soft tissue (W 400, L 40)": IntensityPolicy("window", level=40, width=400),
    "CT lung (W 1500, L -600)": IntensityPolicy("window", level=-600, width=1500),
    "CT bone (W 1800, L 400)": IntensityPolicy("window", level=400, width=1800),
}
POSITIVE, NEGATIVE, BOX = "positive click", "negative click", "box: click two corners"
DISPLAY_SIZE = 512  # small images are enlarged (nearest neighbour) to about this size, for clicking
KEPT_EMBEDDINGS = 32  # per session, the most recent (slice, model) embeddings: 4 MiB each for SAM ViT-B


@dataclass
class Session:
    """One browser tab: the open file and slice, its prompt, and the embeddings and masks computed so far."""

    image: InputImage | None = None
    slice_index: int = 0
    prompt: Prompt = field(default_factory=Prompt)
    corner: tuple[int, int] | None = None  # the first corner of a box being drawn
    embeddings: dict[tuple[str, int], SliceEmbeddings] = field(default_factory=dict)
    results: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict)  # model -> (mask, IoU)


def display_zoom(height: int, width: int) -> int:
    """The integer factor by which a slice is enlarged on the page."""
    return max(1, DISPLAY_SIZE // max(height, width))


def to_pixel(x: float, y: float, zoom: int) -> tuple[int, int]:
    """A click on the enlarged picture -> the (column, row) of the input pixel under it."""
    return int(x // zoom), int(y // zoom)


def display_rgb(slice_: np.ndarray, window: str, reference: np.ndarray | None) -> np.ndarray:
    """The slice as 8-bit RGB under a window preset (`auto` scales against the whole volume)."""
    policy = WINDOWS[window]
    return to_rgb(to_uint8(slice_, policy, reference if policy.kind == "percentile" else None))


def add_click(session: Session, x: int, y: int, mode: str) -> None:
    """Adds a click at (x, y) of the prompt frame (a volume's voxel indices i, j) to the prompt: a positive or
    negative point, or a box corner (the second corner completes the box, whatever the order of the two)."""
    image = session.image
    Prompt([(x, y)]).check(*image.frame_size, "the click", axes="i, j" if image.is_volume else "x, y")
    if mode == POSITIVE:
        session.prompt.points.append((x, y))
    elif mode == NEGATIVE:
        session.prompt.negative_points.append((x, y))
    elif session.corner is None:
        session.corner = (x, y)
    else:
        (x1, x2), (y1, y2) = sorted((session.corner[0], x)), sorted((session.corner[1], y))
        session.corner = None
        if x1 == x2 or y1 == y2:
            raise MedSAValueError(
                f"The box corners ({x1}, {y1}) and ({x2}, {y2}) must differ in both coordinates."
            )
        session.prompt.box = (x1, y1, x2, y2)


def describe_prompt(session: Session) -> str:
    """The prompt in the input's frame, written as the `medsa predict` options that reproduce it."""
    if session.image is None:
        return ""
    prompt, parts = session.prompt, []
    parts += [f"--point {x} {y}" for x, y in prompt.points]
    parts += [f"--negative-point {x} {y}" for x, y in prompt.negative_points]
    if prompt.box:
        parts.append("--box " + " ".join(str(v) for v in prompt.box))
    if session.image.is_volume:
        parts.append(f"--slices {session.slice_index}:{session.slice_index + 1}")
    if session.corner:
        parts.append(f"(box corner at {session.corner[0]} {session.corner[1]}: click the opposite corner)")
    return " ".join(parts) or "(no prompt yet: click on the image)"


def slice_range(text: str, current: int, count: int) -> range:
    """START:STOP (STOP excluded, as `medsa predict --slices`) -> the slices; blank -> the current slice."""
    start, colon, stop = text.strip().partition(":")
    try:
        indices = (
            range(int(start), int(stop) if colon else int(start) + 1)
            if start
            else range(current, current + 1)
        )
    except ValueError:
        raise MedSAValueError(f"Slices take START:STOP (e.g. 10:20), got {text!r}.") from None
    if not indices or indices.start < 0 or indices.stop > count:
        raise MedSAValueError(
            f"The slices {text!r} must lie within 0:{count} (STOP excluded) and not be empty."
        )
    return indices


def area_text(pixels: int, image: InputImage, volume: bool = False) -> str:
    """An area (or a volume's size) in mm² / mm³ from the file's spacing, in pixels without one."""
    if image.spacing is None:
        return f"{pixels} px"
    dy, dx = image.spacing
    if volume:
        return f"{pixels} voxels, {pixels * dy * dx * (image.slice_spacing or 1.0):.1f} mm³"
    return f"{pixels} px, {pixels * dy * dx:.1f} mm²"


class MedSAApp:
    """The page's callbacks: models are shared by every session, everything else lives in a `Session`."""

    def __init__(
        self,
        segmenters: Mapping[str, Segmenter],
        max_upload_mb: float = 200,
        demo_cases: Mapping[str, Path] | None = None,
    ):
        self.segmenters = dict(segmenters)
        self.max_upload_mb = max_upload_mb
        self.demo_cases = dict(demo_cases or {})
        self.downloads = Path(tempfile.mkdtemp(prefix="medsa-app-"))

    def open(self, session: Session, path: str | Path) -> Session:
        """A new session on the file at `path` (an upload or a demo case), on its middle slice."""
        path = Path(path)
        size_mb = path.stat().st_size / 2**20
        if size_mb > self.max_upload_mb:
            raise MedSAValueError(
                f"{path.name} is {size_mb:.0f} MB; this app accepts up to {self.max_upload_mb:g} MB "
                "(start it with a larger --max-upload-mb)."
            )
        image = read_input(path)
        return Session(image=image, slice_index=image.num_slices // 2)

    def select_slice(self, session: Session, index: int, progress=None) -> None:
        """Moves to slice `index` of a volume; the prompt is kept, the masks are recomputed."""
        if session.image is None or not session.image.is_volume:
            return
        index = int(index)
        if not 0 <= index < session.image.num_slices:
            raise MedSAValueError(
                f"Slice {index} does not exist; the volume has slices 0..{session.image.num_slices - 1}."
            )
        session.slice_index = index
        self.segment(session, progress)

    def click(self, session: Session, x: float, y: float, mode: str, progress=None) -> None:
        """A click at (x, y) on the displayed picture: a new prompt element, then new masks."""
        if session.image is None:
            raise MedSAValueError("Open an image first: upload a file or pick a demo case.")
        image, k = session.image, session.slice_index
        column, row = to_pixel(x, y, display_zoom(*image.slice(k).shape[:2]))
        add_click(session, *(round(v) for v in image.to_file(column, row, k)), mode)
        self.segment(session, progress)

    def clear(self, session: Session) -> None:
        session.prompt, session.corner, session.results = Prompt(), None, {}

    def segment(self, session: Session, progress=None) -> None:
        """Every model's mask for the current slice and prompt (a box still missing its second corner waits)."""
        session.results = {}
        if not (session.prompt.points or session.prompt.box):
            return
        image, index = session.image, session.slice_index
        for step, (name, segmenter) in enumerate(self.segmenters.items()):
            key = (name, index)
            if key not in session.embeddings:
                if progress is not None:
                    progress(step / len(self.segmenters), desc=f"embedding slice {index} ({name})")
                session.embeddings[key] = segmenter.embed([image.model_input(index, segmenter.intensity)])
                if len(session.embeddings) > KEPT_EMBEDDINGS:  # dicts keep insertion order: drop the oldest
                    del session.embeddings[next(iter(session.embeddings))]
            masks, iou = segmenter.decode(
                session.embeddings[key], [image.canonical_prompt(session.prompt, index)]
            )
            session.results[name] = (masks[0], float(iou[0]))

    def write_mask(self, session: Session, model: str, slices: str = "") -> tuple[Path, str]:
        """The mask of `model` written by `predict_file` in the input's format and geometry; for a volume, on
        the current slice or on `slices` START:STOP (as `medsa predict --slices`), in SD-Trans chunks when the
        adapter has a depth branch. Returns the file, named after the input, and a line on what it holds."""
        if session.image is None or not (session.prompt.points or session.prompt.box):
            raise MedSAValueError("Nothing to download yet: open an image and click on it first.")
        image = session.image
        indices = slice_range(slices, session.slice_index, image.num_slices) if image.is_volume else range(1)
        suffix = file_suffix(image.path)
        folder = Path(tempfile.mkdtemp(dir=self.downloads))
        output = folder / f"{image.path.name[: -len(suffix)]}_{model}_mask{suffix}"
        predict_file(self.segmenters[model], image.path, output, dict.fromkeys(indices, session.prompt))
        if not image.is_volume:
            return output, f"Wrote the {model} mask."
        voxels = int(np.count_nonzero(read_volume(output).array))
        where = f"slices {indices.start}..{indices.stop - 1}"
        return output, f"Wrote the {model} mask on {where}: {area_text(voxels, image, volume=True)}."

    # What the page shows ---------------------------------------------------------------------------------------

    def input_picture(self, session: Session, window: str) -> np.ndarray | None:
        """The slice under the window preset, with the prompt, enlarged for clicking."""
        if session.image is None:
            return None
        pixels = session.image.slice(session.slice_index)
        rgb = display_rgb(pixels, window, session.image.reference)
        prompt = session.prompt
        if session.corner:
            prompt = Prompt([*prompt.points, session.corner], prompt.negative_points, prompt.box)
        return _enlarge(draw_overlay(rgb, None, session.image.canonical_prompt(prompt, session.slice_index)))

    def result_pictures(self, session: Session, window: str, opacity: float) -> list[np.ndarray | None]:
        """One picture per model (base first): the slice, the mask filled at `opacity` and outlined."""
        if session.image is None:
            return [None] * len(self.segmenters)
        rgb = display_rgb(session.image.slice(session.slice_index), window, session.image.reference)
        prompt, pictures = session.image.canonical_prompt(session.prompt, session.slice_index), []
        for name in self.segmenters:
            mask = session.results.get(name, (None, None))[0]
            pictures.append(_enlarge(draw_overlay(rgb, mask, prompt, opacity=opacity)))
        return pictures

    def summary(self, session: Session) -> str:
        """A Markdown table: the prompt, and per model the predicted IoU and the mask's area."""
        if session.image is None:
            return "Upload a file or pick a demo case."
        image = session.image
        width, height = image.frame_size
        if image.is_volume:
            frame = f"slice k = {session.slice_index} of {image.num_slices}, {width} x {height} voxels (i, j)"
        else:
            frame = f"{width} x {height} px (x = column, y = row)"
        lines = [
            f"**{image.path.name}**: {frame}",
            "",
            f"Prompt: `{describe_prompt(session)}`",
            "",
            "| model | predicted IoU | mask |",
            "|---|---|---|",
        ]
        for name, (mask, iou) in session.results.items():
            lines.append(f"| {name} | {iou:.3f} | {area_text(int(mask.sum()), image)} |")
        return "\n".join(lines)


def _enlarge(rgb: np.ndarray) -> np.ndarray:
    zoom = display_zoom(*rgb.shape[:2])
    return np.asarray(Image.fromarray(rgb).resize((zoom * rgb.shape[1], zoom * rgb.shape[0]), Image.NEAREST))


def demo_cases() -> dict[str, Path]:
    """Offline examples: pydicom's CT and MR slices, and the demo task's volumes (built once, see data/demo.py)."""
    from pydicom.data import get_testdata_file

    cases = {
        "CT slice (DICOM, pydicom CT_small.dcm)": Path(get_testdata_file("CT_small.dcm")),
        "abdominal MR slice (DICOM, pydicom examples_overlay.dcm)": Path(
            get_testdata_file("examples_overlay.dcm")
        ),
    }
    try:
        from .data.demo import prepare_demo_task

        root = prepare_demo_task(with_pyradiomics=False) / "demo-3d" / "images"
    except (ImportError, OSError) as error:  # nilearn missing, or no disk space: the DICOM slices remain
        logger.warning("The demo volumes are not available (%s).", error)
        return cases
    for path in sorted(root.iterdir()):
        cases[f"{path.name} (volume, demo task)"] = path
    return cases


def load_segmenters(model: str, adapters: list[str]) -> dict[str, Segmenter]:
    """The base model and one Segmenter per adapter, named by the adapter's folder or Hub id."""
    from .predict import load_model

    segmenters = {BASE: Segmenter(load_model(model, None))}
    for adapter in adapters:
        segmenters[Path(adapter).name or adapter] = Segmenter(load_model(model, adapter))
    return segmenters


def build_app(app: MedSAApp):
    """The gradio page around `app`'s callbacks; every mistake shows as one plain line in the status box."""
    import gradio as gr

    models = list(app.segmenters)

    def view(session: Session, window: str, opacity: float, status: str = ""):
        return (
            session,
            app.input_picture(session, window),
            *app.result_pictures(session, window, opacity),
            app.summary(session),
            status,
        )

    def guarded(action):
        """Runs `action(session, ...)` and renders; a user's mistake becomes the status line, not a trace."""

        def run(session, window, opacity, *args):
            try:
                session = action(session, *args) or session
                status = ""
            except (MedSAError, ValueError, OSError) as error:
                status = f"Error: {error}"
            except Exception as error:  # a bug: log it for the developer, keep the page usable
                logger.exception("medsa app: unexpected error")
                status = f"Error: unexpected {type(error).__name__}; see the server log."
            return view(session, window, opacity, status)

        return run

    def slider_for(session: Session):
        image = session.image
        if image is None or not image.is_volume:
            return gr.Slider(minimum=0, maximum=1, value=0, visible=False)
        return gr.Slider(minimum=0, maximum=image.num_slices - 1, value=session.slice_index, visible=True)

    with gr.Blocks(title="Med-SA: Segment Anything for medical images") as page:
        gr.Markdown(
            "## Med-SA: click on a medical image, compare the base SAM with its adapters\n"
            "Upload a PNG/JPEG, DICOM, NIfTI or NRRD file (or drop it on the box), or pick a demo case. "
            "Click for positive/negative points; for a box, click two opposite corners. Slices are shown as the "
            "model sees them (volumes in the radiological view); the prompt is recorded as `medsa predict` takes "
            "it: x = column, y = row of an image, the file's voxel indices (i, j) and slice k of a volume."
        )
        session = gr.State(Session())
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="image or volume", elem_id="upload")
                demo = gr.Dropdown(list(app.demo_cases), label="or a demo case", value=None, elem_id="demo")
                window = gr.Dropdown(list(WINDOWS), value=next(iter(WINDOWS)), label="window / level")
                slider = gr.Slider(0, 1, step=1, value=0, label="slice", visible=False, elem_id="slice")
                mode = gr.Radio([POSITIVE, NEGATIVE, BOX], value=POSITIVE, label="click adds", elem_id="mode")
                clear = gr.Button("clear prompts", elem_id="clear")
                opacity = gr.Slider(0, 1, value=0.4, step=0.05, label="mask opacity")
            with gr.Column(scale=2):
                picture = gr.Image(
                    label="click here", type="numpy", format="png", interactive=False, elem_id="prompt-image"
                )
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            outputs = [
                gr.Image(label=name, type="numpy", format="png", interactive=False, elem_id=f"result-{i}")
                for i, name in enumerate(models)
            ]
        summary = gr.Markdown(app.summary(Session()), elem_id="summary")
        with gr.Row():
            download_model = gr.Dropdown(models, value=models[-1], label="download the mask of")
            slices = gr.Textbox(label="volumes: slices START:STOP (blank: this one)", elem_id="slices")
            write = gr.Button("write mask", elem_id="write")
        mask_file = gr.File(label="mask (the input's format and geometry)", elem_id="mask-file")

        shown = [session, picture, *outputs, summary, status]
        common = [session, window, opacity]

        def opened(session, window, opacity, path):
            result = guarded(lambda s, p: app.open(s, p) if p else s)(session, window, opacity, path)
            return (*result, slider_for(result[0]), None)  # None: the drop zone is ready for the next file

        upload.upload(opened, [*common, upload], [*shown, slider, upload])
        demo.input(
            lambda s, w, o, name: opened(s, w, o, app.demo_cases.get(name)),
            [*common, demo],
            [*shown, slider, upload],
        )

        def slid(session, window, opacity, k, progress=gr.Progress()):  # noqa: B008 (gradio's idiom)
            return guarded(lambda s: app.select_slice(s, k, progress))(session, window, opacity)

        slider.change(slid, [*common, slider], shown, trigger_mode="always_last")

        def clicked(session, window, opacity, mode, event: gr.SelectData, progress=gr.Progress()):  # noqa: B008 (gradio's idiom)
            x, y = event.index
            return guarded(lambda s: app.click(s, x, y, mode, progress))(session, window, opacity)

        clicked.__annotations__["event"] = gr.SelectData  # gradio finds event data by the (evaluated) type

        picture.select(clicked, [*common, mode], shown)
        clear.click(guarded(app.clear), common, shown)
        for control in (window, opacity):
            control.change(guarded(lambda s: None), common, shown)

        def written(session, model, slices):
            try:
                path, status = app.write_mask(session, model, slices)
                return str(path), status
            except (MedSAError, ValueError, OSError) as error:
                return None, f"Error: {error}"

        write.click(written, [session, download_model, slices], [mask_file, status])
    return page


def launch(
    model: str | Path = DEFAULT_MODEL,
    adapters: list[str] | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    max_upload_mb: float = 200,
    block: bool = True,
):
    """Loads the models, builds the page and serves it (on localhost unless `host` says otherwise)."""
    if adapters is None:
        adapters = [str(DEFAULT_ADAPTER)] if (DEFAULT_ADAPTER / "adapter_config.json").is_file() else []
    app = MedSAApp(load_segmenters(str(model), adapters), max_upload_mb, demo_cases())
    page = build_app(app)
    page.queue().launch(
        server_name=host,
        server_port=port,
        max_file_size=f"{max_upload_mb}mb",
        prevent_thread_lock=not block,
        show_error=False,
        quiet=not block,
    )
    return page
