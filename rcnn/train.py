"""One training loop for every model: stages, SGD, checkpoints, resume, time budget, logs.

A model trains in one or more stages (Faster R-CNN's approximate joint training has one, its
4-step alternating training four). Each stage gets its share of the epochs (and of a time
budget), a fresh SGD optimizer over what that stage trains, warm-up and step decay. A model
may also name "fitted" stages that are not SGD (R-CNN's SVMs and box regressors): the loop
hands those a FitContext once and checkpoints what they fitted. After
every epoch, and every ``checkpoint_every`` iterations, one checkpoint file is written
atomically; ``resume`` restores weights, optimizer, random generator and the position in the
data, so on the CPU a resumed run ends with the same weights as an uninterrupted one. A time
budget (training seconds) or a deadline (the wall clock's) stops the run cleanly (checkpoint
first); a loss that stops being finite stops it with the stage, epoch and step named. An
image that cannot be decoded is skipped with a warning and counted in ``skipped_images`` (kept
in the checkpoint), never a crash mid-epoch.

Started by torchrun, the same loop trains data parallel (``rcnn.distributed``): each rank takes
its share of every batch of ``train.images_per_batch`` images, the logged losses are the
ranks' mean, the clock is the slowest rank's, and rank 0 writes the checkpoint (with every
rank's random state) and the logs (``rcnn.logs``). ``train.amp``, ``train.channels_last`` and
``train.compile`` switch on mixed precision, NHWC layout and a compiled trunk.
"""

from __future__ import annotations

import math
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from rcnn import checkpoint, distributed
from rcnn.backbones import Trunk
from rcnn.data.dataset import DetectionDataset
from rcnn.data.loader import make_loader
from rcnn.data.memory import InMemory
from rcnn.data.transforms import TrainTransform, make_batch
from rcnn.distributed import World
from rcnn.errors import RcnnError
from rcnn.logs import RunLog
from rcnn.models.build import RunConfig
from rcnn.optim import TrainConfig, learning_rate_factor, make_optimizer, set_learning_rate
from rcnn.structures import ImageBatch

CHECKPOINT = "checkpoint.safetensors"
LOG_EVERY = 10  # iterations between log lines


@dataclass
class Position:
    """Where training stands: stage, epoch within it, batch within the epoch, iterations done
    in the stage, and training seconds spent over all sessions (stage and total)."""

    stage: int = 0
    epoch: int = 0
    batch: int = 0
    step: int = 0
    stage_seconds: float = 0.0
    seconds: float = 0.0


@dataclass(frozen=True)
class Plan:
    """What the run will do: its stages, epochs per stage, iterations per epoch, and seconds
    per stage when there is a time budget."""

    stages: tuple[str, ...]
    epochs: tuple[int, ...]
    iterations: int
    budgets: tuple[float, ...] | None

    def progress(self, position: Position) -> float:
        """How far through its stage the run is, by iterations or by the clock if further."""
        done = position.step / max(1, self.epochs[position.stage] * self.iterations)
        if self.budgets is None:
            return done
        return max(done, position.stage_seconds / self.budgets[position.stage])


def make_plan(
    config: RunConfig,
    stages: tuple[str, ...],
    fitted: tuple[str, ...],
    size: int,
    budget_minutes: float | None,
) -> Plan:
    """Epochs (and seconds) split over the SGD stages by ``train.stage_shares`` (equal by
    default, at least one epoch each); fitted stages get none."""
    trained = [stage for stage in stages if stage not in fitted]
    shares = config.train.stage_shares or (1.0,) * len(trained)
    if len(shares) != len(trained):
        names = ", ".join(trained)
        raise RcnnError(f"train.stage_shares needs {len(trained)} values, one per stage: {names}")
    share = dict(zip(trained, (s / sum(shares) for s in shares), strict=True))
    epochs = tuple(
        max(1, round(config.train.epochs * share[s])) if s in share else 0 for s in stages
    )
    budgets = None
    if budget_minutes is not None:
        budgets = tuple(60 * budget_minutes * share.get(s, 0.0) for s in stages)
    return Plan(stages, epochs, math.ceil(size / config.train.images_per_batch), budgets)


@dataclass(frozen=True)
class FitContext:
    """What a fitted (non-SGD) stage gets: the training images, unflipped at the test scale,
    with their annotations (and proposals, for the models that take them), and the run
    directory for caches (R-CNN's features)."""

    dataset: DetectionDataset
    transform: TrainTransform
    pixel_stats: tuple[tuple[float, ...], tuple[float, ...]]
    size_divisible: int
    run_dir: Path
    workers: int

    def batches(self, images_per_batch: int = 1, description: str = "fit") -> Iterator[ImageBatch]:
        """The data set once, in order, as ImageBatches, with a progress bar."""
        loader = make_loader(
            self.dataset, images_per_batch, self.transform, False, num_workers=self.workers
        )
        mean, std = self.pixel_stats
        for samples in tqdm(loader, desc=description, leave=False, dynamic_ncols=True):
            if samples:
                yield make_batch(samples, mean, std, self.size_divisible)


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        dataset: DetectionDataset,
        config: RunConfig,
        run_dir: Path,
        pixel_stats: tuple[tuple[float, ...], tuple[float, ...]],
        evaluate: Callable[[nn.Module], float] | None = None,
        time_budget: float | None = None,
        world: World | None = None,
        deadline: float | None = None,
    ):
        world = world or World()  # one process unless torchrun started several
        if config.train.cache_images:
            dataset = InMemory(dataset, processes=torch.get_num_threads())
        # a deadline (a time.time() by which this session stops) also bounds the budget, so
        # that the schedule has run its course by then
        if deadline is not None:
            left = max(0.0, deadline - time.time()) / 60
            time_budget = left if time_budget is None else min(time_budget, left)
        self.deadline = deadline
        self.world, self.device = world, world.device()
        self.model = prepare_model(model, config.train, world)
        self.network = self.model  # what the steps call: DistributedDataParallel around it
        self.dataset, self.config, self.run_dir = dataset, config, Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_log = RunLog(self.run_dir) if world.is_main else None  # rank 0 writes
        self.pixel_stats = pixel_stats
        self.evaluate = evaluate
        self.fitted = tuple(getattr(model, "fitted_stages", ()))
        self.plan = make_plan(config, model.stages, self.fitted, len(dataset), time_budget)
        transform = TrainTransform(
            config.input.min_sizes, config.input.max_size, 0.5 if config.input.flip else 0.0
        )
        self.loader = make_loader(
            dataset,
            per_rank_batch(config.train.images_per_batch, world),
            transform,
            True,
            config.train.seed,
            config.train.workers,
            (world.rank, world.size),
            skip_bad=True,  # an image that fails to decode mid-epoch is skipped, not fatal
            group_by_aspect=True,
        )
        self.position = Position()
        if config.train.freeze_through:  # a layer the trunk lacks fails now, not mid-run
            early_layers(self.model.trunk, config.train.freeze_through)
        self.frozen_in_stage: int | None = None  # the stage whose early layers were frozen
        # (path, problem) -> how often it was skipped, over every session of the run
        self.skipped_images: dict[tuple[str, str], int] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        amp = config.train.amp and self.device.type == "cuda"  # bfloat16 needs no scaling
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp)
        if world.is_distributed:  # the target layers' sampling: a stream of its own per rank
            torch.manual_seed(torch.initial_seed() + world.rank)

    def run(self, resume: bool = False) -> bool:
        """Train to the end of the plan; True if finished, False if the time budget stopped it."""
        if resume:
            self.resume()
        while self.position.stage < len(self.plan.stages):
            stage = self.plan.stages[self.position.stage]
            if stage in self.fitted:
                self.fit(stage)
                continue
            if self.optimizer is None:
                self.model.set_stage(stage)
                self.optimizer = make_optimizer(self.model, self.config.train)
                self.network = distributed.wrap(self.model, self.world)
            if not self.run_stage():
                return False
            self.position = Position(stage=self.position.stage + 1, seconds=self.position.seconds)
            self.optimizer = None
        return True

    def fit(self, stage: str) -> None:
        """A fitted stage: the model fits itself on the training set; then the run moves to the
        next stage and checkpoints, so that a resumed run does not fit it again."""
        self.model.set_stage(stage)
        self.model.eval()
        started = time.perf_counter()
        transform = TrainTransform((self.config.input.test_size,), self.config.input.max_size, 0.0)
        context = FitContext(
            self.dataset,
            transform,
            self.pixel_stats,
            self.config.input.size_divisible,
            self.run_dir,
            self.config.train.workers,
        )
        self.model.fit_stage(stage, context)
        seconds = self.position.seconds + time.perf_counter() - started
        self.position = Position(stage=self.position.stage + 1, seconds=seconds)
        self.optimizer = None
        self.save()
        self.log({"stage": stage, "epoch": 0, "step": 0, "fitted": 1.0})

    def run_stage(self) -> bool:
        while self.position.epoch < self.plan.epochs[self.position.stage]:
            if not self.run_epoch():
                return False
            self.position.epoch += 1
            self.position.batch = 0
            self.save()
            self.maybe_evaluate()
        return True

    def run_epoch(self) -> bool:
        """One epoch from the current batch on; False when the time budget ran out."""
        p, plan, batch_size = self.position, self.plan, self.config.train.images_per_batch
        self.loader.sampler.set_epoch(
            p.stage * 10_000 + p.epoch, start=min(p.batch * batch_size, len(self.dataset))
        )
        stage = plan.stages[p.stage]
        bar = tqdm(
            total=plan.iterations,
            initial=p.batch,
            desc=f"{stage} epoch {p.epoch + 1}/{plan.epochs[p.stage]}",
            dynamic_ncols=True,
            leave=False,
            disable=not self.world.is_main,
        )
        running: dict[str, float] = {}
        training_mode(self.model)
        for samples in self.loader:
            for skipped in samples.skipped:
                self.skipped_images[skipped] = self.skipped_images.get(skipped, 0) + 1
            started = time.perf_counter()
            losses = self.step(samples) if samples else {}
            elapsed = distributed.maximum(time.perf_counter() - started, self.world)
            p.batch, p.step = p.batch + 1, p.step + 1
            p.stage_seconds, p.seconds = p.stage_seconds + elapsed, p.seconds + elapsed
            running = {k: 0.9 * running.get(k, v) + 0.1 * v for k, v in losses.items()}
            bar.set_postfix(
                {k.replace("_", ""): f"{v:.3f}" for k, v in running.items()}, refresh=False
            )
            bar.update()
            if p.step % LOG_EVERY == 0:
                self.log({"stage": stage, "epoch": p.epoch, "step": p.step, **running})
            if self.out_of_time():
                bar.close()
                self.save()
                return False
            if p.step % self.config.train.checkpoint_every == 0:
                self.save()
        bar.close()
        return True

    def out_of_time(self) -> bool:
        """The stage's budget of training seconds is spent, or the deadline has passed (the
        wall clock: the budget counts only the steps, not the data waits and checkpoints)."""
        p, budgets = self.position, self.plan.budgets
        if budgets is not None and p.stage_seconds >= budgets[p.stage]:
            return True
        if self.deadline is None:
            return False
        late = time.time() >= self.deadline  # one verdict for all ranks: the latest clock's
        return distributed.maximum(float(late), self.world) > 0

    def step(self, samples) -> dict[str, float]:
        """One SGD iteration on a list of Samples; the losses as floats."""
        batch = self.batch(samples)
        progress = self.plan.progress(self.position)
        self.maybe_freeze(progress)
        factor = learning_rate_factor(self.config.train, self.position.step, progress)
        set_learning_rate(self.optimizer, factor)
        with self.autocast():
            losses = self.network(batch)
        total = sum(loss.float() for loss in losses.values())
        # the ranks' mean: the logged losses, and one verdict on divergence for all ranks
        stacked = torch.stack([loss.detach().float() for loss in losses.values()])
        means = dict(zip(losses, distributed.mean(stacked, self.world).tolist(), strict=True))
        if not math.isfinite(sum(means.values())):
            values = ", ".join(f"{k}={v:.4g}" for k, v in means.items())
            p = self.position
            raise RcnnError(
                f"training diverged in stage {self.plan.stages[p.stage]}, epoch {p.epoch + 1}, "
                f"step {p.step + 1}: the loss is no longer finite ({values}); the last good "
                f"checkpoint is {self.run_dir / CHECKPOINT} (try a lower train.learning_rate)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return means

    def maybe_freeze(self, progress: float) -> None:
        """FreezeOut (``train.freeze_through``, ``train.freeze_at``): once the stage is far
        enough through, its early trunk layers stop training. Their parameters stay in the
        optimizer (a resumed run finds the state it saved) but take no more gradients, their
        BatchNorm keeps its statistics (``training_mode``), and DDP is built again around
        what still trains. A resumed run freezes again at its first step."""
        train, stage = self.config.train, self.position.stage
        if not train.freeze_through or progress < train.freeze_at or self.frozen_in_stage == stage:
            return
        for layer in early_layers(self.model.trunk, train.freeze_through):
            layer.requires_grad_(False)
        training_mode(self.model)
        self.network = distributed.wrap(self.model, self.world)
        self.frozen_in_stage = stage

    def batch(self, samples) -> ImageBatch:
        """Samples -> an ImageBatch on the training device (channels-last images if asked)."""
        mean, std = self.pixel_stats
        config = self.config
        layout = config.train.channels_last
        return make_batch(samples, mean, std, config.input.size_divisible, layout).to(self.device)

    def autocast(self) -> torch.autocast:
        """Mixed precision when train.amp: float16 on CUDA (with the GradScaler), bfloat16 on
        the CPU (float32's exponent range, so nothing to scale)."""
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(self.device.type, dtype, enabled=self.config.train.amp)

    def maybe_evaluate(self) -> None:
        every = self.config.train.eval_every
        if self.evaluate is None or every <= 0 or self.position.epoch % every:
            return
        self.model.eval()
        map50 = self.evaluate(self.model)
        training_mode(self.model)
        p = self.position
        self.log(
            {"stage": self.plan.stages[p.stage], "epoch": p.epoch, "step": p.step, "map50": map50}
        )

    def log(self, record: dict) -> None:
        if self.run_log is not None:
            self.run_log.write({**record, "seconds": round(self.position.seconds, 2)})

    def save(self) -> None:
        """The checkpoint, written by rank 0, with every rank's random state."""
        states = distributed.gather(torch.get_rng_state(), self.world)
        if not self.world.is_main:
            return
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        state = self.optimizer.state_dict() if self.optimizer else {"state": {}, "param_groups": []}
        for index, values in state["state"].items():
            tensors.update({f"optimizer.{index}.{key}": value for key, value in values.items()})
        # the target layers sample with the torch generator: rank 0's, then the others'
        tensors["rng.torch"] = states[0]
        tensors.update({f"rng.torch.{rank}": s for rank, s in enumerate(states) if rank})
        groups = [{k: v for k, v in g.items() if k != "params"} for g in state["param_groups"]]
        meta = {
            "position": asdict(self.position),
            "stage": self.plan.stages[min(self.position.stage, len(self.plan.stages) - 1)],
            "param_groups": groups,
            "scaler": self.scaler.state_dict(),
            "skipped_images": [[*key, times] for key, times in self.skipped_images.items()],
        }
        checkpoint.save(self.run_dir / CHECKPOINT, tensors, meta)

    def resume(self) -> None:
        """Continue exactly where the checkpoint left off."""
        tensors, meta = checkpoint.load(self.run_dir / CHECKPOINT)
        self.position = Position(**meta["position"])
        self.model.set_stage(meta["stage"])
        checkpoint.load_model(self.run_dir / CHECKPOINT, self.model)
        torch.set_rng_state(tensors.get(f"rng.torch.{self.world.rank}", tensors["rng.torch"]))
        if meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        self.skipped_images = {(p, q): n for p, q, n in meta.get("skipped_images", [])}
        if not meta["param_groups"]:  # saved after a fitted stage: the next stage starts afresh
            return
        self.optimizer = make_optimizer(self.model, self.config.train)
        self.network = distributed.wrap(self.model, self.world)
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in tensors.items():
            if name.startswith("optimizer."):
                _, index, key = name.split(".", 2)
                per_param.setdefault(int(index), {})[key] = value
        current = self.optimizer.state_dict()["param_groups"]
        groups = [
            dict(saved, params=now["params"])
            for saved, now in zip(meta["param_groups"], current, strict=True)
        ]
        self.optimizer.load_state_dict({"state": per_param, "param_groups": groups})


def early_layers(trunk: nn.Module, last: str) -> list[nn.Module]:
    """The trunk's layers (its children, in order) up to and including the one named
    ``last`` (``train.freeze_through``)."""
    children = list(trunk.named_children())
    names = [name for name, _ in children]
    if last not in names:
        raise RcnnError(
            f"train.freeze_through: the trunk has no layer {last!r}; its layers: "
            + ", ".join(names)
        )
    return [layer for _, layer in children[: names.index(last) + 1]]


def training_mode(model: nn.Module) -> None:
    """``model.train()``, except that BatchNorm layers whose parameters are frozen also keep
    their statistics (eval mode): a frozen layer stays the function it was. SPPNet's fixed
    convolutions, the shared convolutions in steps 3-4 of alternating training and step 2's
    proposal trunk are frozen this way."""
    model.train()
    for module in model.modules():
        parameters = list(module.parameters(recurse=False))
        batch_norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
        if batch_norm and parameters and not any(p.requires_grad for p in parameters):
            module.eval()


def prepare_model(model: nn.Module, config: TrainConfig, world: World) -> nn.Module:
    """The model on this rank's device, BatchNorm synchronised across GPUs, in channels-last
    layout (``train.channels_last``: faster convolutions on recent GPUs and CPUs) and with its
    trunk compiled (``train.compile``)."""
    model = distributed.sync_batch_norm(model, world).to(world.device())
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if config.compile:
        # the trunk's forward function compiled and bound to it: its weights keep their names
        # (torch.compile(module) would prefix them with _orig_mod.), and a deep copy (alternating
        # training's proposal trunk) binds it to the copy. nn.Module.compile() would be simpler,
        # but in torch 2.13 Dynamo skips it (Module._call_impl is in its skip list).
        # A Trunk's forward runs its ``tapped``, which the detectors with skip pooling call
        # themselves: compiling that one compiles both.
        trunk = model.trunk
        method = "tapped" if isinstance(trunk, Trunk) else "forward"
        setattr(trunk, method, types.MethodType(torch.compile(getattr(type(trunk), method)), trunk))
    return model


def per_rank_batch(images_per_batch: int, world: World) -> int:
    """Each rank's share of a step's ``train.images_per_batch`` images."""
    if images_per_batch % world.size:
        raise RcnnError(
            f"train.images_per_batch ({images_per_batch}) must be a multiple of the number of "
            f"processes ({world.size}): each takes an equal share of every batch"
        )
    return images_per_batch // world.size
