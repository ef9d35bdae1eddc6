"""Every user-facing setting and its default, in one place and free of torch imports, so the CLI
can build its options (and `stylize --help` can start) without loading torch."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

# layers of the Johnson network; ibn: instance norm in the encoder, batch norm after it (after Pan et
# al.'s IBN-Net), for the normalization study (docs/normalization.md)
TRANSFORMER_NORMS = ("instance", "conditional", "batch", "layer", "group", "none", "ibn")
# adaptive: any painting at apply time; with a transformer network its norm parameters are predicted
# from the painting (style_prediction.py), with --network adain it is the AdaIN encoder-decoder (adain.py)
NORMS = TRANSFORMER_NORMS + ("adaptive",)
# auto: vgg16 where its ImageNet weights are at hand (cached, a file, or a download), else
# efficientnet-lite0, whose ImageNet weights install with pip; random: the fallback with no weights at all
LOSS_NETS = ("auto", "vgg16", "vgg19", "efficientnet-lite0", "random")
STYLE_LOSSES = ("gram", "meanstd", "sliced")
# What style_loss="auto" means per loss network. Gram for ImageNet features (Johnson et al.); sliced
# Wasserstein for random features, which closes the most of the gap to ImageNet (studies/loss_nets.py).
AUTO_STYLE_LOSS = {"vgg16": "gram", "vgg19": "gram", "efficientnet-lite0": "gram", "random": "sliced"}
# The layers each loss network's content and style terms read when the settings name none.
# VGG: Johnson et al.'s. EfficientNet-Lite0: chosen by measurement (studies/lite_taps.py): the stem and
# the expansion ReLU6 of blocks 1, 3, 5 and 8 (1/2 to 1/16 resolution) for style, block 5's for content.
_VGG_LAYERS = (["relu2_2"], ["relu1_2", "relu2_2", "relu3_3", "relu4_3"])
LOSS_NET_LAYERS = {
    "vgg16": _VGG_LAYERS, "vgg19": _VGG_LAYERS, "random": _VGG_LAYERS,
    "efficientnet-lite0": (["block5_expand"],
                           ["stem", "block1_expand", "block3_expand", "block5_expand", "block8_expand"]),
}
# distillation's layers (losses.TeacherLoss) when the settings name none, as (features, statistics):
# the features term finer than the content term's, so that the teacher's marks, not only its layout,
# are matched; the statistics term at a fine, a middle and a coarse layer
_VGG_TEACHER = (["relu2_2"], ["relu1_2", "relu2_2", "relu3_3"])
TEACHER_LAYERS = {"efficientnet-lite0": (["block3_expand"], ["block1_expand", "block3_expand", "block5_expand"]),
                  "vgg16": _VGG_TEACHER, "vgg19": _VGG_TEACHER, "random": _VGG_TEACHER}
# the weight of that statistics term: L1 alone regresses to the mean, and a student trained without
# it kept 0.85 of its teacher's contrast (pixels and features alike) and few of its marks
TEACHER_STATS_WEIGHT = 3.0
# ...with each pixel weighted by the photo's local gradient over this, clamped at 1 (losses.structure;
# TrainConfig.teacher_edge): flat areas (skies, table tops) get no demand for contrast, where a teacher that
# paints random marks would make the network lay a uniform lattice (issue 29, weights/README.md)
TEACHER_EDGE = 0.08
# --teacher-context (losses.contextual, TrainConfig.teacher_context): Mechrez et al.'s bandwidth h, and the
# positions a side each example compares at a layer (1024: a million comparisons; udnie's steps took 1.1-1.2 s on a core, 1.0-1.1 without)
CONTEXT_BANDWIDTH, CONTEXT_SAMPLES = 0.5, 1024
# --teacher optimize: the pictures --optimize paints (optimize.py), made once before the first step
# for this many photos a style, at this many steps each (200: the marks settle; ~30 s a crop on a CPU core)
TEACHER_TARGETS, TEACHER_STEPS = 48, 200
LR_SCHEDULES = ("cosine", "constant")  # training.learning_rate
TRANSFORMER_NETWORKS = ("johnson", "light", "light-instance")  # the transformer network's architectures (networks.py)
NETWORKS = TRANSFORMER_NETWORKS + ("adain",)  # adain: the AdaIN encoder-decoder (adain.py), --norm adaptive only
DEVICES = ("auto", "cuda", "mps", "cpu")
RUNTIMES = ("auto", "torch", "onnx")  # apply on the CPU: see onnx_runtime.py
DEFAULT_MODEL = "starry_night"  # shipped in weights/
DEFAULT_ADAPTIVE_MODEL = "wct"  # the model for --style PAINTING (model card: preferred 87 of 90 times to "arbitrary")
# longest side of the style image when its statistics are taken, when the settings name none: a fixed
# style's once at the start; an arbitrary-style network's painting every step, so smaller
STYLE_SIZE = {"fixed": 1024, "adaptive": 384}
# --optimize (optimize.py): the shorter side a photo is optimized at; the marks' scale and the time's bound
OPTIMIZE_SIZE = 384
# --optimize: the largest translation of output and photo before the loss network, drawn anew each step
# (losses.PerceptualLoss); 8-16 px turned the speckle into strokes at 256-384 px (issue 29)
OPTIMIZE_JITTER = 16
# --optimize: passes of a 3x3 binomial filter over each step's gradient, and the total variation weight
# (against the style's 100; the models train with 2): together they take out the pixel grain a
# network distilled from the pictures meets with a hatching (optimize.py). The training teacher's
# defaults too (TrainConfig.teacher_smooth, teacher_tv)
OPTIMIZE_SMOOTH, OPTIMIZE_TV_WEIGHT = 1, 20.0
# learning-rate multiple of what depends on the style, when the settings name none (TrainConfig.style_lr_scale)
STYLE_LR_SCALE = {"fixed": 10.0, "adaptive": 4.0}


def style_loss_for(loss_net: str, style_loss: str) -> str:
    """The style statistic a run uses: `style_loss`, with "auto" resolved for the loss network."""
    return AUTO_STYLE_LOSS.get(loss_net, "gram") if style_loss == "auto" else style_loss


@dataclass
class TrainConfig:
    style: list[str] = field(default_factory=list)  # style images or folders of them
    content: str | None = None  # folder of training photos; None: $STYLIZE_CONTENT or ~/.stylize/content
    out: str = "model.safetensors"
    norm: str = "instance"  # or conditional (several styles), adaptive (AdaIN), batch, layer, group, none
    network: str = "light"
    width: int = 16
    all_strengths: bool = True  # train for every style strength in [0, 1], not only full strength
    output: str = "blend"  # with all_strengths: the network's image blended with the photo by s (networks.py)
    iterations: int = 3000
    batch_size: int = 4  # under torchrun, per process: a run (its files) records the whole batch
    image_size: int = 160  # side of the square training crops
    content_size: int = 480  # shorter side training photos are resized to before cropping; 0: image_size
    style_size: int | None = None  # longest side of the style image for its statistics; None: STYLE_SIZE
    # the loss terms' weights; named *_loss_weight, apart from apply's --style-weight (the strength)
    content_loss_weight: float = 1.0
    style_loss_weight: float = 100.0
    tv_loss_weight: float = 2.0
    color_loss_weight: float = 0.0  # the palette term: output colours distributed as the style's (losses.py)
    # pulls low-strength outputs to the photo (only with all_strengths); about the style loss weight, so
    # that strength 0.5 looks half-way (with 10 against 100, 0.25 already gave 60% of the full change)
    pixel_loss_weight: float = 100.0
    # the loss network sees output and photo translated by up to this many pixels, anew each step
    # (losses.PerceptualLoss: it takes away the sub-pixel patterns that meet the loss cheaply)
    jitter: int = 0
    # distillation (train/teacher.py), by TeacherLoss instead of the perceptual loss: a WCT model (shipped
    # name or file), whose picture of each crop with the painting the network learns to paint; or
    # "optimize", --optimize's pictures of teacher_targets photos a style; None: Johnson et al.
    teacher: str | None = None
    teacher_targets: int = TEACHER_TARGETS
    teacher_steps: int = TEACHER_STEPS
    teacher_smooth: int = OPTIMIZE_SMOOTH  # --teacher optimize: passes of the optimizer's gradient filter
    teacher_tv: float = OPTIMIZE_TV_WEIGHT  # --teacher optimize: the optimizer's total variation weight
    teacher_median: int = 0  # --teacher optimize: passes of a 3x3 median over each painted picture; 0: none
    teacher_edge: float = TEACHER_EDGE  # TeacherLoss's statistics weighted by the photo's gradient; 0: unweighted
    teacher_grain: float = 0.0  # TeacherLoss: weight of the output's distance from its 3x3 median; 0: none
    teacher_context: float = 0.0  # TeacherLoss: weight of the contextual loss, instead of the features' statistics; 0: none
    teacher_critic: float = 0.0  # weight of losses.Critic's term, a patch critic of the teacher's pictures; 0: none
    style_dim: int = 100  # --norm adaptive with a transformer network: the style embedding's size
    # learning-rate multiple of what depends on the style: several styles' (CIN) tables; for
    # --norm adaptive, the predictor's bottleneck and projections (on top of their fan-in scaling).
    # None: STYLE_LR_SCALE
    style_lr_scale: float | None = None
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # one of LR_SCHEDULES
    loss_net: str = "auto"  # one of LOSS_NETS; a run records the one it resolved to
    vgg_weights: str | None = None
    content_layers: list[str] | None = None  # None: LOSS_NET_LAYERS of the loss network
    style_layers: list[str] | None = None
    style_loss: str = "auto"  # or one of STYLE_LOSSES; auto: AUTO_STYLE_LOSS[loss_net]
    device: str = "auto"
    seed: int = 0
    checkpoint_every: int = 250
    sample_every: int = 100
    workers: int = -1  # data loader processes; -1: 4 on CUDA, 0 on CPU
    # speed levers (speed.py): auto (all but compile on CUDA, none elsewhere), none, all, or names
    levers: str = "auto"
    # a model file to start from (fine-tuning): its network and weights, a fresh optimizer and schedule
    init: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The settings a model file or checkpoint records; a setting newer than the file takes the
        value that file was trained with (LEGACY), not today's default, so old runs resume as they were;
        a setting recorded under its former name (RENAMED) is read under its own."""
        names = {f.name for f in fields(cls)}
        legacy = {**LEGACY, "network": "adain"} if d.get("norm") == "adaptive" else LEGACY
        d = {RENAMED.get(k, k): v for k, v in d.items()}
        return cls(**{**legacy, **{k: v for k, v in d.items() if k in names}})


# What runs recorded before these settings existed were trained with.
LEGACY = {"network": "johnson", "content_size": 0, "lr_schedule": "constant", "style_size": 1024, "color_loss_weight": 0.0,
          "style_lr_scale": 1.0, "output": "residual",
          "jitter": 0, "teacher_edge": 0.0}
# Settings' former names, as model files and checkpoints written before the renaming record them: the
# loss weights were *_weight (mistaken for apply's --style-weight), all_strengths was strength.
RENAMED = {"content_weight": "content_loss_weight", "style_weight": "style_loss_weight", "tv_weight": "tv_loss_weight",
           "color_weight": "color_loss_weight", "pixel_weight": "pixel_loss_weight", "strength": "all_strengths"}


@dataclass
class ApplyConfig:
    """One `stylize apply` request: the CLI builds it from its options, the library (pipeline.py,
    video.py, server.py) reads it."""
    model: str = DEFAULT_MODEL
    # the model's styles to use, NAME=W mixes, or paintings for adaptive models; None: the model's default
    styles: list[str] | None = None
    strength: float = 1.0  # --style-weight (or --strength): in [0, 1], 0 gives back the photo
    mask: str | None = None  # greyscale image: white gets the first style, black the second
    preserve_color: bool = False  # keep the photo's colours
    color_method: str = "luminance"  # with preserve_color: luminance (any model) or match (adaptive: recolour the painting)
    skip_existing: bool = False  # leave inputs whose output exists (resuming an interrupted batch)
    # adaptive models: longest side of the style image when encoded; None: the model's (AdaIN: 512)
    style_size: int | None = None
    max_size: int | None = None  # downscale inputs whose longest side is larger (None: keep the resolution)
    tile: int = 0  # tile side in pixels; 0: tile only images over the memory budget
    # working memory for one pass of the network, MB; larger images are tiled (tiling.py). 2560 runs
    # photos up to ~2.4 MP (1920x1080) whole at width 32 (peaks measured: docs/benchmarks.md)
    memory_mb: int = 2560
    out_dir: str = "stylized"
    quality: int = 95  # JPEG and WebP quality
    device: str = "auto"
    # auto: ONNX Runtime for whole-image CPU passes when it is installed (faster start and forward,
    # onnx_runtime.py), PyTorch otherwise and for masks, colour preservation and tiles
    runtime: str = "auto"
    # video: how much of the previous stylized frame, carried along the motion, a pixel keeps where the
    # motion explains the change (video.Steadiness; bench/video.py: a pan's flicker 0.06x, its texture kept)
    smooth: float = 0.8
    # steps of style transfer by optimization (optimize.py) instead of a model's network; 0: the network
    optimize: int = 0

    @property
    def match_color(self) -> bool:
        """Colour preservation by recolouring the painting (adaptive models) rather than the output."""
        return self.preserve_color and self.color_method == "match"


@dataclass
class ServeConfig:
    """`stylize serve` (server.py)."""
    host: str = "127.0.0.1"  # this machine only; another address makes the page reachable from others
    port: int = 8000
    max_size: int = 1024  # photos are stylized at most this long on their longest side (a CPU's seconds)
    max_upload_mb: float = 25.0  # a request (photo and painting) larger than this is refused, while it streams
    # a photo or painting of more pixels is refused from its header, before decoding: decoding takes
    # about 4 bytes a pixel (a 48 MP phone photo: ~200 MB); a 15000x15000 PNG of 0.6 MB would take ~1 GB
    max_megapixels: float = 50.0
    max_queue: int = 8  # pictures waiting for the worker; more are refused (503) until some are done
    # the models kept open, least recently used closed first: each takes its graph and ONNX Runtime's
    # working memory, ~150 MB at --max-size 1024 (measured as the process's growth on its first picture)
    model_memory_mb: int = 512
    header_timeout: float = 10.0  # a connection that has not sent a request's headers in this many seconds is closed
    max_connections: int = 64  # uvicorn's limit_concurrency: past it, requests are answered 503
