"""The trainer's step compiled ahead of time for a TPU topology, on a host without the devices.

`jax.experimental.topologies` describes a TPU slice (libtpu installed, no TPU needed); the step
is built by the trainer's own functions (`train.build`: model, optimiser, mesh and shardings,
data parallel or FSDP as the config says), traced on abstract inputs of the protocol's shapes
and compiled by XLA's TPU compiler. What comes back is what a user needs before booking a slice:
memory per chip against the chip's HBM, FLOPs and the roofline step time, compile time, and a
census of the collectives and of the ops XLA:TPU handles badly (sort, gather, scatter, while).

FLOPs: XLA counts a `while` body (a `lax.scan`: gradient accumulation, scanned vision blocks)
once, so the compiled program's own count is too low wherever it loops. The model FLOPs printed
are XLA's count of the same step lowered without loops (one micro-batch, blocks unrolled, before
partitioning), times the micro-batches, divided by the chips; the roofline time is
max(FLOPs / bf16 peak, HBM bytes / bandwidth). The HBM bytes are counted from the compiled
program's memory spaces (`bench.hbm_traffic`: what crosses HBM, each loop body times its trip
count); XLA's own `bytes accessed`, which charges VMEM operands and prefetches as HBM traffic and
counts a loop body once, is printed beside it.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import os
import re
import resource
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tcclip_jax.apps.inference import prompt_tokens
from tcclip_jax.bench.chips import Chip, chip
from tcclip_jax.bench.gpus import gpu_devices
from tcclip_jax.bench.hbm_traffic import hbm_traffic
from tcclip_jax.bench.steps import class_names
from tcclip_jax.config.resolve import resolve_paths, run_model_config
from tcclip_jax.data.classes import load_class_names
from tcclip_jax.data.config import normalization_stats
from tcclip_jax.evaluation.accuracy import eval_programs
from tcclip_jax.evaluation.specs import eval_batch_size
from tcclip_jax.models import ModelConfig, VideoCLIP
from tcclip_jax.models.vision import TCTransformer
from tcclip_jax.ops import platform
from tcclip_jax.ops.attention import choose
from tcclip_jax.runtime import sharding
from tcclip_jax.runtime.errors import UserError
from tcclip_jax.train.build import optimizer, sharded_train_step, video_model
from tcclip_jax.train.optim import StepPlan
from tcclip_jax.train.step import abstract_state
from tcclip_jax.weights.checkpoint import load_config

INSTALL = 'pip install "tcclip-jax[tpu]" (libtpu; or pip install "jax[tpu]=={version}")'
# Cloud TPU slice names -> libtpu topology names (chips; a v4 or v5p slice's name counts its
# TensorCores, two per chip).
SLICES = {
    "v4-8": "v4:2x2x1",
    "v4-16": "v4:2x2x2",
    "v5e-4": "v5e:2x2",
    "v5e-8": "v5e:2x4",
    "v5e-16": "v5e:4x4",
    "v5p-8": "v5:2x2x1",
    "v5p-16": "v5:2x2x2",
    "v6e-8": "v6e:2x4",
}
# Ops counted in the compiled HLO (async collectives count by their -start op).
CENSUS = (
    "all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute",
    "sort", "gather", "scatter", "while", "custom-call", "copy", "transpose",
)  # fmt: skip


class AotError(UserError):
    """The check cannot run as asked (no libtpu, an unknown topology, a batch that does not
    divide)."""


class DoesNotFit(AotError):
    """XLA refused the program: it needs more than the chip's HBM."""


def tpu_devices(topology: str) -> list:
    """The devices of a TPU topology (`v5e:2x2`, or a slice name such as `v5e-8`), without TPUs."""
    if importlib.util.find_spec("libtpu") is None:
        raise AotError(
            f"compiling for a TPU needs libtpu: {INSTALL.format(version=jax.__version__)}"
        )
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server off Cloud TPU.
    # Compiling opens no TPU: never wait for (or block) a process that holds libtpu's lockfile.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    name = SLICES.get(topology, topology)
    # v4 and v5p chips have two TensorCores that JAX on a TPU VM drives as one device
    # ("megacore"); libtpu's default description of v4 has a device per core.
    config = "megacore" if name.startswith(("v4:", "v5:")) else "default"
    try:
        return list(
            topologies.get_topology_desc(
                topology_name=name, platform="tpu", chip_config_name=config
            ).devices
        )
    except Exception as e:  # libtpu's errors name the topology it could not parse.
        known = ", ".join(SLICES)
        raise AotError(f"--topology {topology}: {str(e).splitlines()[0]} (slices: {known})") from e


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    """The architecture the run would train: the initial checkpoint's towers (if its directory
    is here) or CLIP ViT-B/16's, with the config's variant and overrides."""
    here = config.init_checkpoint and os.path.isdir(config.init_checkpoint)
    return run_model_config(config, load_config(config.init_checkpoint) if here else None)


def class_tokens(
    config: ml_collections.ConfigDict, model_cfg: ModelConfig, num_classes: int | None
) -> np.ndarray:
    """Prompt tokens of the run's class names (its class list if readable here), or of
    `num_classes` made-up names of a typical length."""
    if num_classes is None:
        path = resolve_paths(config).data.class_list  # as the trainer resolves it
        if not (path and os.path.isfile(path)):
            raise AotError(
                f"config.data.class_list {path!r} is not here: set --config.splits_dir or pass "
                "--classes N"
            )
        return prompt_tokens(model_cfg, load_class_names(path))
    return prompt_tokens(model_cfg, class_names(num_classes))


@dataclasses.dataclass
class Compiled:
    """One program compiled for the topology, with what it costs per chip."""

    name: str
    chips: int
    per_chip_batch: int  # clips per chip per micro-batch (the eval step: videos per chip).
    micro_batches: int
    memory: object  # jax.stages.Compiled.memory_analysis()
    model_flops: float  # per chip per step (see the module docstring).
    hbm_bytes_accessed: float  # per chip, XLA's cost analysis (0: not reported).
    hbm_traffic: float  # per chip, counted from the program's memory spaces (0: not counted).
    compile_seconds: float  # wall time of tracing, lowering and compiling.
    compile_cpu_seconds: float  # process CPU time of the same (steadier on a shared host).
    census: dict[str, int]
    sources: dict[str, dict[str, int]]  # `op_sources` of the compiled program.
    hlo: str
    unit: str = "clips"  # what per_chip_batch counts.

    @property
    def hbm_used(self) -> float:
        m = self.memory
        return (
            m.argument_size_in_bytes
            + m.output_size_in_bytes
            + m.temp_size_in_bytes
            - m.alias_size_in_bytes
        )

    def fits(self, figures: Chip) -> bool:
        return self.hbm_used <= figures.hbm_bytes

    def roofline_seconds(self, figures: Chip) -> float:
        return max(
            self.model_flops / figures.bfloat16_flops,
            self.hbm_traffic / figures.hbm_bandwidth,
        )


def census(hlo: str) -> dict[str, int]:
    """How many instructions of each `CENSUS` op the HLO text holds."""
    ops = re.findall(r"^\s*(?:ROOT )?%\S+ = .*? ([a-z][a-z0-9-]*)\(", hlo, re.M)
    counts = collections.Counter(op.removesuffix("-start") for op in ops)
    # XLA:TPU writes a reduce-scatter as a fusion of an all-reduce with the scatter.
    counts["reduce-scatter"] += len(re.findall(r"calls=%all-reduce-scatter\b", hlo))
    return {op: counts.get(op, 0) for op in CENSUS}


# Ops whose origin the report names (what XLA:TPU runs far below its matrix and memory rates).
TRACED_OPS = ("sort", "gather", "scatter")


def _table(hlo: str, name: str) -> dict[int, str]:
    """One of the HLO module's numbered tables (`FileNames`, `StackFrames`, ...)."""
    match = re.search(rf"^{name}\n((?:\d+ .*\n)+)", hlo, re.M)
    rows = match.group(1).splitlines() if match else []
    return {int(row.split(" ", 1)[0]): row.split(" ", 1)[1] for row in rows}


def op_sources(hlo: str, ops: Sequence[str] = TRACED_OPS) -> dict[str, dict[str, int]]:
    """For each op of `ops`: how many of its instructions come from each place in this package
    (`file.py:function`, the innermost frame of the stack XLA recorded that is ours), or from
    "elsewhere" (JAX's own rules, e.g. a gradient, or no recorded stack)."""
    files = {i: v.strip('"') for i, v in _table(hlo, "FileNames").items()}
    functions = {i: v.strip('"') for i, v in _table(hlo, "FunctionNames").items()}
    field = lambda row, key: int(re.search(rf"\b{key}=(\d+)", row).group(1))
    locations = _table(hlo, "FileLocations")
    frames = _table(hlo, "StackFrames")

    def place(frame: int) -> str:
        seen = set()
        while frame in frames and frame not in seen:
            seen.add(frame)
            location = locations[field(frames[frame], "file_location_id")]
            path = files[field(location, "file_name_id")]
            if f"{os.sep}tcclip_jax{os.sep}" in path:
                function = functions[field(location, "function_name_id")]
                return f"{os.path.basename(path)}:{function.split('.')[0]}"
            frame = field(frames[frame], "parent_frame_id")
        return "elsewhere"

    out: dict[str, collections.Counter] = {op: collections.Counter() for op in ops}
    pattern = rf"^\s*(?:ROOT )?%\S+ = .*? ({'|'.join(ops)})(?:-start)?\((.*)$"
    for op, rest in re.findall(pattern, hlo, re.M):
        frame = re.search(r"stack_frame_id=(\d+)", rest)
        out[op][place(int(frame.group(1))) if frame else "elsewhere"] += 1
    return {op: dict(counts.most_common()) for op, counts in out.items()}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cost(stage) -> dict:
    cost = stage.cost_analysis()
    return cost[0] if isinstance(cost, list) else cost  # older jax: one dict per computation.


def _countable(model: VideoCLIP, target: str) -> VideoCLIP:
    """The model as compiled for the `target` platform, for counting its FLOPs on a CPU
    lowering: the explicit attention, and the summarisation the target runs, TC's matching
    kernel counted as the dense form (the same products, with no interpreter loop, whose body
    XLA counts once)."""
    cfg = model.config
    with platform.traced_for(target):
        merge = TCTransformer(cfg).merge_form
    merge = "dense" if merge == "pallas" else merge
    return model.clone(config=cfg.replace(attention="explicit", merge=merge))


def _abstract(tree, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


class StepBuilder:
    """The trainer's step for one config on one topology, at any per-chip batch."""

    def __init__(
        self, config: ml_collections.ConfigDict, devices: list, num_classes: int | None = None
    ):
        self.config, self.devices = config, devices
        self.model_config = model_config(config)
        self.tokens = class_tokens(config, self.model_config, num_classes)
        self.mesh = sharding.create_mesh(devices)
        # The run's kind of schedule; its lengths (any here) do not change the program.
        plan = StepPlan(config.optim.schedule, 10**6, batch_size=1, num_epochs=1, warmup_epochs=0)
        self.schedule, self.tx = optimizer(config, plan)
        cfg = self.model_config
        size = cfg.image_resolution
        clips = jax.ShapeDtypeStruct((1, cfg.num_frames, size, size, 3), jnp.float32)
        tokens = jax.ShapeDtypeStruct(self.tokens[:1].shape, jnp.int32)
        params = jax.eval_shape(VideoCLIP(cfg).init, jax.random.key(0), clips, tokens)["params"]
        self.abstract = abstract_state(params, self.tx)
        self.model = video_model(config, cfg, devices[0].platform)

    @property
    def chips(self) -> int:
        return len(self.devices)

    @property
    def attention_shapes(self) -> tuple[int, int, int, int]:
        """(queries, keys, heads, head width) of a vision block's attention per frame."""
        return TCTransformer(self.model_config).attention_shapes

    def _step(self, model: VideoCLIP, mesh=None):
        return sharded_train_step(
            self.config,
            model,
            self.tx,
            self.schedule,
            num_classes=self.tokens.shape[0],
            mesh=self.mesh if mesh is None else mesh,
            abstract=self.abstract,
        )

    def _inputs(self, state_shardings, per_chip_batch: int, micro_batches: int, mesh=None):
        mesh = self.mesh if mesh is None else mesh
        cfg = self.model_config
        size, b = cfg.image_resolution, per_chip_batch * self.chips
        dtype = jnp.uint8 if self.config.data.uint8_output else jnp.float32
        batch_sharding = sharding.batch_sharding(mesh, 1)
        replicated = sharding.replicated(mesh)
        batch = {
            "video": jax.ShapeDtypeStruct(
                (micro_batches, b, cfg.num_frames, size, size, 3), dtype, sharding=batch_sharding
            ),
            "label": jax.ShapeDtypeStruct((micro_batches, b), jnp.int32, sharding=batch_sharding),
        }
        tokens = jax.ShapeDtypeStruct(self.tokens.shape, jnp.int32, sharding=replicated)
        rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
        return _abstract(self.abstract, state_shardings), batch, tokens, rng

    def model_flops(self, per_chip_batch: int, micro_batches: int) -> float:
        """Per chip per step: XLA's count of one global micro-batch without loops, lowered for
        one host CPU (the count is of the program before partitioning; see above)."""
        model = _countable(self.model.clone(remat=False, scan=False), self.devices[0].platform)
        mesh = sharding.create_mesh(jax.devices("cpu")[:1])
        step, shardings = self._step(model, mesh)
        lowered = step.trace(*self._inputs(shardings, per_chip_batch, 1, mesh)).lower()
        return float(_cost(lowered)["flops"]) * micro_batches / self.chips

    def _eval_step(self, model: VideoCLIP, mesh, videos_per_chip: int):
        """(the evaluator's jitted step, its abstract inputs) on `mesh`: `videos_per_chip` x
        the test views (clips x crops) per chip, uint8 or float as the data config says."""
        data = self.config.data
        step = eval_programs(model, mesh, *normalization_stats(data.normalization))[1]
        fsdp = self.config.sharding
        shardings = sharding.state_shardings(self.abstract, mesh, fsdp.fsdp, fsdp.fsdp_min_size)
        params = _abstract(self.abstract.params, shardings.params)  # as training leaves them
        text = jax.eval_shape(
            lambda p, t: model.apply({"params": p}, t, method="encode_text"),
            self.abstract.params,
            self.tokens,
        )
        text = _abstract(text, jax.tree.map(lambda _: sharding.replicated(mesh), text))
        cfg, views = self.model_config, data.test_clips * data.test_crops
        b, size = videos_per_chip * len(mesh.devices.flat), cfg.image_resolution
        dtype = jnp.uint8 if data.uint8_output else jnp.float32
        batch_sharding = sharding.batch_sharding(mesh)
        batch = {
            "video": jax.ShapeDtypeStruct(
                (b, views, cfg.num_frames, size, size, 3), dtype, sharding=batch_sharding
            ),
            "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=batch_sharding),
        }
        return step, (params, text, batch)

    def compile_eval(self, videos_per_chip: int) -> Compiled:
        """The evaluator's step (`evaluation.accuracy`: every view of `videos_per_chip` videos
        per chip encoded, scored against the cached class embeddings, top-1 / top-5 hits)."""
        model = self.model.clone(remat=False)  # as the Evaluator compiles it
        step, inputs = self._eval_step(model, self.mesh, videos_per_chip)
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        with platform.traced_for(self.devices[0].platform):
            compiled = step.trace(*inputs).lower().compile()
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
        flat = _countable(model.clone(scan=False), self.devices[0].platform)
        cpu_mesh = sharding.create_mesh(jax.devices("cpu")[:1])
        unrolled = self._eval_step(flat, cpu_mesh, videos_per_chip * self.chips)
        flops = float(_cost(unrolled[0].trace(*unrolled[1]).lower())["flops"]) / self.chips
        views = self.config.data.test_clips * self.config.data.test_crops
        result = self._result("eval step", compiled, videos_per_chip, 1, flops, seconds, cpu)
        return dataclasses.replace(result, unit=f"videos of {views} views")

    def compile(self, per_chip_batch: int, micro_batches: int = 1) -> Compiled:
        """The train step for `micro_batches` x `per_chip_batch` clips per chip."""
        step, shardings = self._step(self.model)
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        with platform.traced_for(self.devices[0].platform):  # traced here, compiled for them
            lowered = step.trace(*self._inputs(shardings, per_chip_batch, micro_batches)).lower()
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            raise DoesNotFit(
                f"{micro_batches} x {per_chip_batch} clips per chip do not fit "
                f"({time.perf_counter() - start:.0f} s): {str(e).splitlines()[0]}"
            ) from e
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
        flops = self.model_flops(per_chip_batch, micro_batches)
        return self._result("train step", compiled, per_chip_batch, micro_batches, flops, seconds,
                            cpu)  # fmt: skip

    def _result(self, name, compiled, per_chip_batch, micro_batches, flops, seconds, cpu):
        hlo = compiled.as_text()
        return Compiled(
            name=name,
            chips=self.chips,
            per_chip_batch=per_chip_batch,
            micro_batches=micro_batches,
            memory=compiled.memory_analysis(),
            model_flops=flops,
            # XLA:GPU's compile-only devices report no cost analysis (0: unknown).
            hbm_bytes_accessed=float((_cost(compiled) or {}).get("bytes accessed", 0.0)),
            # Memory spaces are TPU layouts; XLA:GPU's HLO has none to read.
            hbm_traffic=hbm_traffic(hlo)[0] if self.devices[0].platform == "tpu" else 0.0,
            compile_seconds=seconds,
            compile_cpu_seconds=cpu,
            census=census(hlo),
            sources=op_sources(hlo),
            hlo=hlo,
        )

    def fits(self, per_chip_batch: int, figures: Chip) -> tuple[bool, Compiled | None]:
        """Whether the step at `per_chip_batch` (one micro-batch) fits a chip's HBM; XLA's
        out-of-memory refusal counts as not fitting."""
        try:
            result = self.compile(per_chip_batch)
        except DoesNotFit as e:
            print(e, flush=True)
            return False, None
        return result.fits(figures), result

    def max_batch(self, figures: Chip, start: int = 8) -> tuple[int, list[Compiled]]:
        """The largest per-chip batch (one micro-batch) whose step fits the chip's HBM: the
        first guess from a linear fit of memory in the batch, then bisection."""
        tried: list[Compiled] = []
        fits: dict[int, bool] = {}

        def probe(n: int) -> bool:
            if n not in fits:
                fits[n], result = self.fits(n, figures)
                if result is not None:
                    tried.append(result)
            return fits[n]

        if not probe(1):
            return 0, tried
        lo, hi = 1, None
        n = start
        while hi is None:
            if probe(n):
                lo = n
                used = {r.per_chip_batch: r.hbm_used for r in tried}
                slope = (used[n] - used[1]) / (n - 1) if n > 1 else used[1]
                guess = int(1 + (figures.hbm_bytes - used[1]) / max(slope, 1.0))
                n = max(n + 1, min(guess, 4 * n))
            else:
                hi = n
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if probe(mid):
                lo = mid
            else:
                hi = mid
        return lo, tried


def chip_figures(devices: Sequence) -> tuple[str, Chip]:
    found = chip(devices[0].device_kind)
    if found is None:
        raise AotError(f"no datasheet figures for {devices[0].device_kind!r}")
    return found


GiB = 2**30


def _flop(n: float) -> str:
    return f"{n / 1e12:.2f} TFLOP" if n >= 1e11 else f"{n / 1e9:.2f} GFLOP"


def describe(result: Compiled, kind: str, figures: Chip) -> str:
    """The report of one compiled step, per chip."""
    m = result.memory
    fits = "fits" if result.fits(figures) else "does NOT fit"
    census_text = ", ".join(f"{n} {op}" for op, n in result.census.items())
    return "\n".join(
        [
            f"{result.name}: {result.micro_batches} x {result.per_chip_batch} {result.unit} "
            f"per chip "
            f"({result.micro_batches * result.per_chip_batch * result.chips} per step on "
            f"{result.chips} x {kind}); compiled in {result.compile_seconds:.0f} s "
            f"({result.compile_cpu_seconds:.0f} s of CPU time)",
            f"  memory per chip: arguments {m.argument_size_in_bytes / GiB:.2f} GiB, outputs "
            f"{m.output_size_in_bytes / GiB:.2f} GiB, donated aliases "
            f"{m.alias_size_in_bytes / GiB:.2f} GiB, temporaries {m.temp_size_in_bytes / GiB:.2f}"
            f" GiB; total {result.hbm_used / GiB:.2f} of {figures.hbm_bytes / GiB:.0f} GiB HBM: "
            f"{fits}",
            f"  per chip per step: {_flop(result.model_flops)} (model, loops unrolled), "
            + (
                f"{result.hbm_traffic / 1e9:.1f} GB HBM traffic (compiled program, loops per "
                f"trip; XLA's bytes accessed {result.hbm_bytes_accessed / 1e9:.1f} GB)"
                if result.hbm_traffic
                else "HBM traffic not reported by this compiler"
            )
            + f"; roofline {1e3 * result.roofline_seconds(figures):.0f} ms at "
            f"{figures.bfloat16_flops / 1e12:.0f} TFLOP/s bf16, "
            f"{figures.hbm_bandwidth / 1e9:.0f} GB/s",
            f"  compiled HLO: {census_text}",
            f"  {', '.join(TRACED_OPS)} by origin: {origins(result.sources)}",
        ]
    )


def origins(sources: dict[str, dict[str, int]]) -> str:
    """`op_sources` as one line: each place with its count of every traced op."""
    places = sorted({p for counts in sources.values() for p in counts})
    if not places:
        return "none"
    per_place = lambda p: " / ".join(str(sources[op].get(p, 0)) for op in sources)
    return "; ".join(f"{p} {per_place(p)}" for p in places)


def default_batch(config: ml_collections.ConfigDict, chips: int) -> tuple[int, int]:
    """(clips per chip per micro-batch, micro-batches) of the config's step on `chips`."""
    accum = config.grad_accum_steps
    if config.batch_size % (chips * accum):
        raise AotError(
            f"config.batch_size {config.batch_size} is not a multiple of {chips} chips x "
            f"{accum} micro-batches (config.grad_accum_steps): pass --per_chip_batch"
        )
    return config.batch_size // (chips * accum), accum


def run(
    config: ml_collections.ConfigDict,
    topology: str | None,
    per_chip_batch: int | None = None,
    max_batch: bool = False,
    num_classes: int | None = None,
    evaluation: bool = True,
    gpu: str | None = None,
) -> Compiled:
    """Compile the config's train step for a TPU `topology` or NVIDIA `gpu` (`gpus.parse`) and
    print its report (and, with `evaluation`, the evaluation step's at `config.eval.batch_size`);
    return the train step's."""
    if (topology is None) == (gpu is None):
        raise AotError("give one of --topology (a TPU slice) and --gpu (e.g. h100, h100:8)")
    devices = tpu_devices(topology) if gpu is None else gpu_devices(gpu)
    kind, figures = chip_figures(devices)
    builder = StepBuilder(config, devices, num_classes)
    cfg = builder.model_config
    mesh = jax.sharding.use_abstract_mesh(builder.mesh.abstract_mesh)  # as the steps trace
    with platform.traced_for(devices[0].platform), mesh:
        attention = choose(cfg.attention, jnp.dtype(config.dtype), builder.attention_shapes)
        merge = TCTransformer(cfg).merge_form
    print(
        f"{topology or gpu}: {len(devices)} x {devices[0].device_kind}; {cfg.model} ViT "
        f"{cfg.vision_patch_size}px x {cfg.vision_layers} blocks, {cfg.num_frames} frames, "
        f"{builder.tokens.shape[0]} classes, {config.dtype}, "
        f"{'FSDP' if config.sharding.fsdp else 'data parallel'}, vision blocks "
        f"{'scanned' if builder.model.scan else 'unrolled'}"
        f"{', remat' if builder.model.remat else ''}; attention {attention}"
        f"{f', TC summarisation {merge}' if cfg.is_temporal else ''}",
        flush=True,
    )
    if max_batch:
        best, tried = builder.max_batch(figures)
        for result in tried:
            print(describe(result, kind, figures), flush=True)
        print(f"largest per-chip batch that fits {kind} HBM: {best}", flush=True)
        if not best:
            raise DoesNotFit(f"even 1 clip per chip does not fit {kind} HBM")
        return next(r for r in tried if r.per_chip_batch == best)
    if per_chip_batch is not None:
        if per_chip_batch < 1:
            raise AotError(f"--per_chip_batch must be >= 1, got {per_chip_batch}")
        micro = 1
    else:
        per_chip_batch, micro = default_batch(config, len(devices))
    result = builder.compile(per_chip_batch, micro)
    print(describe(result, kind, figures), flush=True)
    if evaluation:
        # The evaluator's batch on this slice (a slice's hosts divide its chips).
        videos = eval_batch_size(config.eval.batch_size, len(devices))
        if videos != config.eval.batch_size:
            print(
                f"config.eval.batch_size {config.eval.batch_size} rounded up to {videos} videos "
                f"per evaluation step ({videos // len(devices)} per chip), as the evaluator does",
                flush=True,
            )
        print(describe(builder.compile_eval(videos // len(devices)), kind, figures), flush=True)
    return result
