"""Draws docs/architecture.png, the README's architecture diagram: the streaming pipeline of
``inference_pipeline/builder.py`` top to bottom, the training path and the registry it serves from, and the runners.

    .venv/bin/python docs/architecture.py [--output PATH]

Matplotlib only (no graphviz). The layout is placed by hand, in inches with y growing downwards, and checked each
time it is drawn: every text inside its box and clear of the other texts, boxes apart unless one contains the other,
arrows clear of texts and of boxes they do not join; a layout breaking a rule fails, naming it. The PNG is the same
bytes every time with the same matplotlib and Pillow (fixed width, dpi and rcParams; no date or version in it), so
``tests/test_architecture_diagram.py`` compares a fresh one with the committed image, and checks that each named step
of ``ScoreEvents`` and ``create_pipeline`` is drawn (``STEPS``) under its label in the builder.
"""
from __future__ import annotations

import argparse
import dataclasses
from itertools import combinations
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.path import Path as MplPath
from matplotlib.transforms import Bbox
from PIL import Image

OUTPUT = Path(__file__).resolve().parent / "architecture.png"
WIDTH, DPI = 11.1, 150  # inches (the height follows the layout); 1665 px wide, legible scaled to README width
COLORS = 128  # the PNG's palette: a third of the RGB file's size, no visible difference on flat fills

TITLE_PT, BODY_PT = 10.5, 9.0
TITLE_LINE, BODY_LINE = 0.2, 0.155  # inches per line at those sizes, line spacing included
PAD = 0.07
MARGIN_PX = 4.0  # the least room between a text and its box's edge

STYLES = {  # name: (face, edge)
    "source": ("#dbe9f6", "#2b5d8a"),
    "step": ("#ffffff", "#2b5d8a"),
    "side": ("#eef3f8", "#2b5d8a"),
    "dead": ("#fbe3e1", "#b03a2e"),
    "service": ("#fff4d6", "#a77b0b"),
    "training": ("#e4f3e4", "#2f7d32"),
    "sink": ("#ece4f5", "#5e3d8f"),
    "runner": ("#eeeeee", "#555555"),
    "container": ("#fafafa", "#888888"),
}
INK, FRAME_INK = "#39424a", "#2b5d8a"


@dataclasses.dataclass(frozen=True)
class Box:
    key: str
    x: float
    y: float  # top edge
    w: float
    title: str
    body: str = ""
    style: str = "step"
    h: float | None = None  # default: fitted to the text
    inside: str | None = None  # the container drawn around it
    step: bool = False  # a named PTransform of the builder: its title is the label
    optional: bool = False  # in the graph only when configured (drawn dashed)

    @property
    def height(self) -> float:
        if self.h is not None:
            return self.h
        lines = len(self.body.splitlines())
        return 2 * PAD + TITLE_LINE + lines * BODY_LINE + (0.03 if lines else 0)

    @property
    def bottom(self) -> float:
        return self.y + self.height

    @property
    def mid_y(self) -> float:
        return self.y + self.height / 2

    @property
    def right(self) -> float:
        return self.x + self.w


@dataclasses.dataclass(frozen=True)
class Arrow:
    points: tuple[tuple[float, float], ...]
    ends: tuple[str, ...]  # the boxes it joins (it may touch them and their containers)
    head: bool = True


@dataclasses.dataclass(frozen=True)
class Label:
    x: float
    y: float  # vertical centre
    text: str
    ha: str = "left"


@dataclasses.dataclass(frozen=True)
class Frame:
    """A dashed outline around the steps of a composite transform, titled with its label."""

    x: float
    y: float
    w: float
    h: float
    title: str


@dataclasses.dataclass
class Diagram:
    boxes: list[Box] = dataclasses.field(default_factory=list)
    arrows: list[Arrow] = dataclasses.field(default_factory=list)
    labels: list[Label] = dataclasses.field(default_factory=list)
    frames: list[Frame] = dataclasses.field(default_factory=list)

    def add(self, box: Box) -> Box:
        self.boxes.append(box)
        return box

    def link(self, points, *ends: str, head: bool = True) -> None:
        self.arrows.append(Arrow(tuple(points), ends, head))


def layout() -> Diagram:
    """The whole diagram. Columns: training, the registry, model handlers and the feature store on the left; the
    streaming steps in the middle; each step's side output level with it on the right."""
    L, LW = 0.25, 3.05
    C, CW = 3.85, 3.4
    R, RW = 7.75, 2.8
    BUS = R + RW + 0.27  # the side outputs run down this line to the sinks
    gap = 0.3
    d = Diagram()

    def step(y, title, body, optional=False):
        return d.add(Box(title, C, y, CW, title, body, step=True, optional=optional))

    def down(above: Box, below: Box, x: float = C + CW / 2) -> None:
        d.link([(x, above.bottom), (x, below.y)], above.key, below.key)

    # Sources, then the steps top to bottom.
    source_w = (CW - 2 * 0.12) / 3
    sources = [d.add(Box(f"source-{name}", C + i * (source_w + 0.12), 0.95, source_w, name, body, "source"))
               for i, (name, body) in enumerate((("replay", "a file replayed"), ("MQTT", "broker, QoS 1"),
                                                 ("Pub/Sub", "subscription")))]
    read = step(sources[0].bottom + gap, "ReadEvents", "the source kind's read: list[RawEvent] batches")
    for source in sources:
        down(source, read, source.x + source_w / 2)
    shard = step(read.bottom + gap, "ShardByDevice",
                 "a bounded source on several local\nworkers, each owning whole devices", optional=True)
    frame_top = shard.bottom + 0.32
    parse = step(frame_top + 0.36, "ParseEvents", "parse + validate in batches; roster notices")
    dedup = step(parse.bottom + gap, "DropDuplicates", "state: recent event ids per device")
    enrich = step(dedup.bottom + gap, "EnrichDevices",
                  "when the spec uses device metadata: Beam's\nEnrichment, cached per device", optional=True)
    features = step(enrich.bottom + gap, "DeviceFeatures",
                    "state: last W-1 readings per device;\nlate events scored aside")
    scale = step(features.bottom + gap, "ScaleFeatures",
                 "MLTransform: the version's fitted tf.Transform\ngraph, once per row batch")
    key = step(scale.bottom + gap, "KeyByModelGroup", "device -> its group (model.groups, else default)")
    infer = step(key.bottom + gap, "RunInference", "KeyedModelHandler: each group's version")
    score = step(infer.bottom + gap, "Score", "ModelOutput -> predictions (naming the version)")
    track = step(score.bottom + gap + 0.12, "TrackIncidents",
                 "debounced incidents: anomaly, sensor_missing,\ndevice_silent -> predictions + alerts")
    chain = [read, shard, parse, dedup, enrich, features, scale, key, infer, score, track]
    for above, below in zip(chain, chain[1:]):
        down(above, below)
    d.frames.append(Frame(C - 0.15, frame_top, R + RW + 0.08 - (C - 0.15), track.bottom + 0.14 - frame_top,
                          "ScoreEvents"))
    d.labels.append(Label(R + RW - 0.05, frame_top + 0.17, "everything between the source and the sinks", "right"))

    # Side outputs, level with the step each leaves; all but the duplicates run down the bus to the sinks.
    parse_dead = d.add(Box("dead-parse", R, parse.y, RW, "dead letters", "reason + detail: bad_json, oversize, ...",
                           "dead"))
    duplicates = d.add(Box("duplicates", R, dedup.y, RW, "duplicates", "counted, never predicted twice", "side"))
    shadow = d.add(Box("Shadow", R, features.y, RW, "Shadow",
                       "model.shadow: the challenger's scaling,\nRunInference, Score", "side", step=True,
                       optional=True))
    errors = d.add(Box("InferenceErrors", R, infer.y, RW, "InferenceErrors",
                       "a failed batch: each event a dead letter", "dead", step=True))
    score_dead = d.add(Box("dead-score", R, score.y, RW, "dead letters", "features scaled by another version",
                           "dead"))
    minutes = d.add(Box("DeviceMinutes", R, track.y, RW, "DeviceMinutes",
                        "per-device per-minute summaries\n(device_minutes)", "side", step=True,
                        optional=True))
    for origin, side in ((parse, parse_dead), (dedup, duplicates), (features, shadow), (infer, errors),
                         (score, score_dead)):
        level = min(origin.mid_y, side.mid_y)
        d.link([(origin.right, level), (side.x, level)], origin.key, side.key)
    turn = C + CW + 0.2
    d.link([(score.right, score.bottom - 0.08), (turn, score.bottom - 0.08), (turn, minutes.mid_y),
            (minutes.x, minutes.mid_y)], score.key, minutes.key)
    for side in (parse_dead, shadow, errors, score_dead, minutes):
        d.link([(side.right, side.mid_y), (BUS, side.mid_y)], side.key, head=False)

    # Sinks and metrics.
    sink_top = track.bottom + 0.5
    sinks = d.add(Box("sinks", C - 0.15, sink_top, BUS + 0.12 - (C - 0.15),
                      "sinks: each writes the streams it names (Write...To_<sink>)",
                      "predictions, alerts, dead_letters, shadow_predictions, device_minutes", "container", h=1.1))
    kinds = ("SQLite", "PostgreSQL", "BigQuery", "MQTT", "Pub/Sub")
    kind_w = (sinks.w - 0.2 - 0.1 * (len(kinds) - 1)) / len(kinds)
    for i, name in enumerate(kinds):
        d.add(Box(f"sink-{name}", sinks.x + 0.1 + i * (kind_w + 0.1), sinks.y + 0.62, kind_w, name, "", "sink",
                  inside=sinks.key))
    down(track, sinks)
    d.link([(BUS, parse_dead.mid_y), (BUS, sinks.y)], sinks.key)
    d.add(Box("metrics", L, sink_top, LW, "Report...: live metrics",
              "counters and a periodic log line:\npredictions, dead letters, duplicates", "side"))

    # Runners.
    runners = d.add(Box("runners", L, sinks.bottom + 0.35, BUS + 0.12 - L,
                        "runners: create_pipeline builds one graph; either runs it unchanged", "", "container",
                        h=0.98))
    half = (runners.w - 0.3) / 2
    d.add(Box("local", runners.x + 0.1, runners.y + 0.34, half, "local: Beam's FnApiRunner",
              "a replay on several worker processes, live on one", "runner", inside=runners.key))
    d.add(Box("dataflow", runners.x + 0.2 + half, runners.y + 0.34, half, "Google Cloud: Dataflow",
              "streaming; GPU workers (model.device: auto)", "runner", inside=runners.key))

    # Training -> registry -> model handlers, and the feature store, on the left.
    stages, y = [], 0.95 + 0.34
    for name, body in (("history", "simulated fleet, SKAB, AI4I, any CSV"),
                       ("feature pipeline", "batch Beam: the streaming\nwindow code (no skew)"),
                       ("MLTransform fit", "z-score, write mode: artifacts"),
                       ("train + calibrate", "autoencoder / forecaster /\nclassifier; threshold")):
        stages.append(Box(f"train-{name}", L + 0.35, y, LW - 0.45, name, body, "training", inside="training"))
        y = stages[-1].bottom + 0.2
    d.add(Box("training", L, 0.95, LW, "training (batch, training/)", "", "container",
              h=stages[-1].bottom + 0.15 - 0.95))
    for stage in stages:
        d.add(stage)
    for above, below in zip(stages, stages[1:]):
        down(above, below, above.x + above.w / 2)
    store = d.add(Box("store", L + 0.35, enrich.y - 0.1, LW - 0.35, "online feature store",
                      "enrichment.store: Feast on Redis;\non Google Cloud: Bigtable or\nVertex AI Feature Store",
                      "service"))
    d.link([(store.right, enrich.mid_y), (C, enrich.mid_y)], store.key, enrich.key)
    registry = d.add(Box("registry", L + 0.35, scale.y - 0.12, LW - 0.35, "model registry",
                         "MLflow (models:/name@alias) or\nVertex AI Model Registry; a version:\n"
                         "weights + MLTransform artifacts +\nthreshold + spec, SHA-256 manifest", "service"))
    lane, trained = L + 0.15, stages[-1]
    d.link([(trained.x, trained.mid_y), (lane, trained.mid_y), (lane, registry.mid_y), (registry.x, registry.mid_y)],
           trained.key, registry.key, "training")
    d.labels.append(Label(lane + 0.08, store.bottom + 0.2, "register a version"))
    d.link([(registry.right, scale.mid_y), (C, scale.mid_y)], registry.key, scale.key)
    handlers = d.add(Box("handlers", L + 0.35, infer.y - 0.05, LW - 0.35, "model handlers",
                         "model.handler: torch (CPU / GPU),\ntransformers, mlflow, http_endpoint,\nvertex_endpoint",
                         "service"))
    down(registry, handlers, registry.x + 0.45)
    d.labels.append(Label(registry.x + 0.55, (registry.bottom + handlers.y) / 2,
                          "load, verified; hot-swap when\nits alias moves (model.watch_s)"))
    d.link([(handlers.right, infer.mid_y), (C, infer.mid_y)], handlers.key, infer.key)
    return d


def steps() -> tuple[str, ...]:
    """The builder's step labels the diagram draws: the named step boxes and the frames of composite steps."""
    diagram = layout()
    return tuple(box.title for box in diagram.boxes if box.step) + tuple(frame.title for frame in diagram.frames)


STEPS = steps()


def draw() -> tuple[Figure, list[str]]:
    """The figure and the layout problems found in it (none in a legible layout)."""
    diagram = layout()
    height = max(box.bottom for box in diagram.boxes) + 0.25
    fig = Figure(figsize=(WIDTH, height), dpi=DPI)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(height, 0)
    ax.set_axis_off()

    texts = [  # (text, the box it belongs in)
        (ax.text(0.25, 0.22, "iotml: streaming anomaly and defect prediction", fontsize=15, weight="bold",
                 va="top"), None),
        (ax.text(0.25, 0.56, "Named steps are the PTransform labels of inference_pipeline/builder.py; "
                 "regenerate with .venv/bin/python docs/architecture.py; dashed: only when configured",
                 fontsize=BODY_PT, va="top", color="#444444"), None),
    ]
    for frame in diagram.frames:
        ax.add_patch(FancyBboxPatch((frame.x, frame.y), frame.w, frame.h, boxstyle="round,pad=0,rounding_size=0.1",
                                    fill=False, edgecolor=FRAME_INK, linestyle=(0, (4, 3)), linewidth=1.0))
        texts.append((ax.text(frame.x + 0.12, frame.y + 0.1, frame.title, fontsize=TITLE_PT, weight="bold",
                              va="top", color=FRAME_INK), None))
    patches = {}
    for box in diagram.boxes:
        face, edge = STYLES[box.style]
        patches[box.key] = ax.add_patch(FancyBboxPatch(
            (box.x, box.y), box.w, box.height, boxstyle="round,pad=0,rounding_size=0.06", facecolor=face,
            edgecolor=edge, linewidth=1.6 if box.step else 1.0, linestyle="--" if box.optional else "-",
            zorder=2 if box.inside is None else 3))
        family = "DejaVu Sans Mono" if box.step else "DejaVu Sans"
        if box.style == "container":
            x, y, ha, va = box.x + 0.12, box.y + PAD + 0.02, "left", "top"
        elif box.body:
            x, y, ha, va = box.x + box.w / 2, box.y + PAD, "center", "top"
        else:
            x, y, ha, va = box.x + box.w / 2, box.mid_y, "center", "center"
        texts.append((ax.text(x, y, box.title, fontsize=TITLE_PT, weight="bold", family=family, ha=ha, va=va,
                              zorder=4), box.key))
        if box.body:
            texts.append((ax.text(x, y + TITLE_LINE + 0.03, box.body, fontsize=BODY_PT, ha=ha, va="top",
                                  linespacing=1.25, zorder=4), box.key))
    for arrow in diagram.arrows:
        ax.add_patch(FancyArrowPatch(path=MplPath(arrow.points), arrowstyle="-|>" if arrow.head else "-",
                                     mutation_scale=11, color=INK, linewidth=1.1, shrinkA=0, shrinkB=0, zorder=1,
                                     joinstyle="miter", capstyle="butt"))
    for label in diagram.labels:
        texts.append((ax.text(label.x, label.y, label.text, fontsize=BODY_PT, ha=label.ha, va="center",
                              style="italic", color=INK, zorder=4), None))
    return fig, problems(canvas, ax, diagram, texts, patches)


def problems(canvas, ax, diagram: Diagram, texts, patches) -> list[str]:
    """The layout rules, checked in display pixels."""
    renderer = canvas.get_renderer()
    by_key = {box.key: box for box in diagram.boxes}
    extent = {key: patch.get_window_extent(renderer) for key, patch in patches.items()}
    placed = [(text.get_window_extent(renderer), text.get_text().splitlines()[0], owner) for text, owner in texts]
    found = []

    def enclosing(key: str | None) -> set[str]:
        """The box and the containers around it."""
        chain = set()
        while key is not None:
            chain.add(key)
            key = by_key[key].inside
        return chain

    def inside(inner: Bbox, outer: Bbox) -> bool:
        return (inner.x0 >= outer.x0 + MARGIN_PX and inner.x1 <= outer.x1 - MARGIN_PX
                and inner.y0 >= outer.y0 + MARGIN_PX and inner.y1 <= outer.y1 - MARGIN_PX)

    for bbox, text, owner in placed:
        if owner is not None and not inside(bbox, extent[owner]):
            found.append(f"text {text!r} is not inside its box {owner!r}")
        for key, box_extent in extent.items():
            if key not in enclosing(owner) and bbox.overlaps(box_extent):
                found.append(f"text {text!r} lies over box {key!r}")
    for (one, text_one, _), (other, text_other, _) in combinations(placed, 2):
        if one.overlaps(other):
            found.append(f"texts {text_one!r} and {text_other!r} overlap")
    for one, other in combinations(diagram.boxes, 2):
        nested = one.key in enclosing(other.key) or other.key in enclosing(one.key)
        if not nested and extent[one.key].overlaps(extent[other.key]):
            found.append(f"boxes {one.key!r} and {other.key!r} overlap")
    for arrow in diagram.arrows:
        path = MplPath(ax.transData.transform(arrow.points))
        joined = set().union(*(enclosing(end) for end in arrow.ends))
        for key, box_extent in extent.items():
            if key not in joined and path.intersects_bbox(box_extent, filled=False):
                found.append(f"arrow {arrow.ends} crosses box {key!r}")
        for bbox, text, _ in placed:
            if path.intersects_bbox(bbox.expanded(1.0, 1.0), filled=False):
                found.append(f"arrow {arrow.ends} crosses text {text!r}")
    return found


def render(output: Path) -> None:
    """Write the diagram to ``output`` as a palette PNG, the same bytes every time (no software version, date or
    text chunks); a layout problem fails, naming it."""
    with matplotlib.rc_context():
        matplotlib.rcdefaults()  # no matplotlibrc or style: the pixels depend on the matplotlib version alone
        fig, found = draw()
        if found:
            raise ValueError("architecture diagram layout:\n  " + "\n  ".join(found))
        fig.canvas.draw()
        pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    image = Image.fromarray(pixels).quantize(COLORS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    image.save(output, format="png", optimize=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Draw the README's architecture diagram.")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"the PNG to write (default: {OUTPUT})")
    render(parser.parse_args(argv).output)


if __name__ == "__main__":
    main()
