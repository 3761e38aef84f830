"""The training loop shared by every method: model, SGD schedule per stage, evaluation,
label-noise detection metrics, per-epoch checkpoints with exact resume, and the run's outputs.

Built from parts: a Method (engine/methods), TrainingData (engine/data/training_data.py), the
method's config, a seed and a device; `out` (a folder) is optional. Under torchrun it trains on
every process of the job (engine/distributed.py says what is kept in step and how).
"""
import math
import os
import time
import warnings
from contextlib import ExitStack, nullcontext

import numpy as np
import torch
from tqdm import tqdm

from engine.checkpoint import RESUMING, CheckpointError, RunNote, load_checkpoint, save_checkpoint
from engine.config import save_yaml, size_class
from engine.distributed import Processes, ProcessesDiffer, from_environment, local_batch_statistics
from engine.labels import check_clean_subset, detection_metrics
from engine.methods.base import Batch, CleanSubset, Diverged, Preparation, Step, epoch_seed
from engine.models import build_model, load_pretrained
from engine.models.base import recalibrate_batchnorm
from engine.outputs import (FolderInUse, folder_lock, label_issues_table, plot_separation, refuse_foreign_outputs,
                            refuse_unfinished_run, remove_outputs, write_json, write_label_issues, write_metrics)

EVAL_BATCH = 512


def quiet(line):
    """The log of a process that does not print (every one but the first, or verbose=False)."""
    del line


class Trainer:
    """trainer = Trainer(method, data, seed=0, device="cpu", out=None); summary = trainer.run().

    The method is configured for the data's size class unless it already is (method.config);
    with `out`, every output is written there (run_config, a RunConfig, goes to config.yaml)
    and `resume=True` continues from out/checkpoint.pt; a new run there is refused where an
    unfinished run left its checkpoint, unless `overwrite=True`. Under torchrun, `batch_size` is the
    global batch (each process takes batch_size / processes of it) and sync_bn=True (CUDA)
    turns the BatchNorm layers into SyncBatchNorm."""

    def __init__(self, method, data, *, seed=0, device="cpu", out=None, resume=False, overwrite=False, run_config=None,
                 sync_bn=False, log=lambda line: print(line, flush=True)):
        self.method, self.data, self.seed = method, data, seed
        self.processes, self.device = from_environment(device)
        self.out, self.resume, self.overwrite, self.run_config = out, resume, overwrite, run_config
        self.log = log if self.processes.main else quiet
        self.config = method.config or method.configure(size_class(len(data.x_train)), data.num_classes)
        world = self.processes.world
        if self.config.batch_size % world:
            raise ValueError(f"batch size {self.config.batch_size} is the global batch: it must be divisible by the "
                             f"{world} processes (each takes an equal part)")
        for split, count in (("training set", len(data.train_indices)),
                             ("test split", 0 if data.x_test is None else len(data.x_test))):
            if 0 < count < world:  # a process without samples would have nothing to evaluate
                raise ValueError(f"the {split} has {count} samples for {world} processes: each needs at least one")
        if sync_bn and self.device.type != "cuda":
            raise ValueError("sync_bn: SyncBatchNorm runs on CUDA only; leave it off on the CPU")
        self.checkpoint_path = None if out is None else os.path.join(out, "checkpoint.pt")
        clean = data.clean_indices
        check_clean_subset(method, clean, data.given_labels, data.num_classes)
        self.train_indices = data.train_indices
        self.model_name = self.config.model
        if data.features != (self.model_name == "mlp"):
            raise ValueError(f"model {self.model_name!r} does not fit "
                             f"{'feature vectors' if data.features else 'images'}: use "
                             f"{'mlp' if data.features else 'small_cnn or a preact_resnet'}")

        torch.manual_seed(seed)
        method.bind(self.config, torch.from_numpy(data.given_labels), data.num_classes, seed, self.device,
                    processes=self.processes)
        self.model = method.build_model(self.make_network)
        self.trained = self.model  # what the loss runs: the model, in DDP on several processes
        if self.processes.distributed:
            if sync_bn:
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.trained = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.config.batch_size < 2 * world and any(isinstance(module, torch.nn.BatchNorm1d)
                                                      for module in self.model.modules()):
            raise ValueError(f"batch_size {self.config.batch_size}: model {self.model_name}'s BatchNorm1d needs at "
                             f"least 2 samples per batch and process; use batch_size >= {2 * world}")
        self.stages = method.stages()

        # Trusted labels are trained on like the others, except by a method that keeps them for its meta-steps (L2B).
        trained = (self.train_indices if method.clean_subset is CleanSubset.BATCHES
                   else np.arange(len(data.given_labels)))
        if len(trained) < 2 * world:  # the loader leaves out a last batch of 1 sample per process: no step at all
            raise ValueError(f"the training set has {len(trained)} samples to train on: training needs at least 2 per "
                             f"process ({2 * world} for {world})")
        self.train_loader = self.loader(self.config.batch_size, shuffle=True, augment=True, seed=seed,
                                        indices=trained, second_view=method.second_view, shard=True)
        self.clean_loader = None
        if method.clean_subset is CleanSubset.BATCHES:
            self.clean_loader = self.loader(min(self.config.batch_size, len(clean)), shuffle=True, augment=True,
                                            seed=seed + 1, indices=clean, drop_last=True)
        self.train_eval_loader = self.loader(EVAL_BATCH, shard=True)
        self.test_loader = None if data.x_test is None else self.loader(EVAL_BATCH, x=data.x_test, shard=True)
        self.optimizer = None
        self.step = 0
        self.metrics = []
        self.train_outputs = self.issue_probs = None
        self.table = None
        self.data_fingerprint = None  # computed when a checkpoint first needs it

    def __getstate__(self):
        """A trainer pickles (engine.fit's FitResult returned from a joblib or multiprocessing
        worker) without its loaders, which hold generators or DALI pipelines, and its log: an
        unpickled one predicts and keeps its label issues (predict_proba makes its own loader),
        it does not train on."""
        loaders = ("train_loader", "clean_loader", "train_eval_loader", "test_loader")
        return {**vars(self), **dict.fromkeys(loaders), "log": quiet}

    # ------------------------------------------------------------------ helpers

    def make_network(self):
        """A new classifier for the data on the device. channels_last: faster convolutions on
        CUDA and on the CPU too (oneDNN: about 1.4x a training step and 2x an evaluation pass of
        the small CNN)."""
        shape = self.data.input_shape
        in_channels, image_size = (shape[0], 1) if self.data.features else (shape[2], tuple(shape[:2]))
        network = build_model(self.model_name, self.data.num_classes, in_channels=in_channels, image_size=image_size)
        if self.config.pretrained:  # every network the method builds (peers, teachers) starts from it
            load_pretrained(network, self.config.pretrained, self.model_name)
        return network.to(self.device, memory_format=torch.channels_last)

    def loader(self, batch_size, x=None, shard=False, **options):
        """Batches of `x` (default: the training inputs); shard=True: this process's share of
        them (the run's own loaders; a method's sub-trainings run whole on every process).
        Training batches (augment=True) leave out a last batch that would give a process one
        sample, which has no batch statistics (BatchNorm1d refuses it): different samples each
        epoch (the run's loop and a method's own sub-trainings). They are augmented unless the
        config's augment is off."""
        x = self.data.x_train if x is None else x
        processes = self.processes if shard else Processes()
        if options.get("augment") and "drop_last" not in options:
            count = len(x) if options.get("indices") is None else len(options["indices"])
            options["drop_last"] = 0 < count % batch_size < 2 * processes.world
        options["augment"] = options.get("augment", False) and self.config.augment
        return self.data.loader(x, batch_size, self.device, processes=processes, **options)

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def new_optimizer(self):
        return torch.optim.SGD([{"params": self.model.parameters()}, *self.method.param_groups()],
                               lr=self.config.lr, momentum=self.config.momentum, weight_decay=self.config.weight_decay)

    def preparation(self):
        def loader(indices, shuffle=False, augment=False, seed=0, epoch=0):
            batches = self.loader(self.config.batch_size if augment else EVAL_BATCH, shuffle=shuffle,
                                  augment=augment, seed=seed, indices=indices)
            batches.set_epoch(epoch)
            return ((self.to_device(inputs), indices) for inputs, indices in batches)

        def make_optimizer(parameters, lr):
            return torch.optim.SGD(parameters, lr=lr, momentum=self.config.momentum,
                                   weight_decay=self.config.weight_decay)

        def over_training_set(network, output):
            parts = self.evaluate(self.train_eval_loader, network, output)
            return self.processes.gather_rows(torch.cat([part.float() for part in parts]))

        clean = self.data.clean_indices
        return Preparation(clean, torch.from_numpy(self.data.given_labels[clean]).to(self.device),
                           self.train_indices, self.make_network, make_optimizer, loader, self.autocast,
                           over_training_set, self.recalibrate_batchnorm, self.log)

    def clean_batches(self, epoch):
        """Endless augmented batches of the clean subset with their labels; each pass over it is
        seeded by (epoch, pass), so a resumed run draws the same ones."""
        labels = torch.from_numpy(self.data.given_labels)  # the clean subset's given labels are its true ones
        for round_ in range(1_000_000):
            self.clean_loader.set_epoch(epoch * 1000 + round_)
            for inputs, indices in self.clean_loader:
                yield self.to_device(inputs), labels[indices].to(self.device, non_blocking=True)

    def to_device(self, inputs):
        inputs = inputs.to(self.device, non_blocking=True)
        return inputs if inputs.ndim != 4 else inputs.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def evaluate(self, loader, network, output):
        """[output(network, inputs) for each batch of `loader`], in eval mode."""
        network.eval()
        parts = []
        for inputs, _ in loader:
            with self.autocast():
                parts.append(output(network, self.to_device(inputs)))
        return parts

    def predict(self, loader, model):
        """The method's outputs over a whole split, in the split's order (a dict of tensors on
        the device; "probs" is the float32 [N, C] class prediction), gathered from every process."""
        parts = self.evaluate(loader, model, self.method.predict)
        return {key: self.processes.gather_rows(torch.cat([part[key] for part in parts])) for key in parts[0]}

    def predict_proba(self, x):
        """Class probabilities [M, C] (numpy) of the evaluated model for inputs like the training data's."""
        x = self.data.check_inputs(x)
        if not len(x):  # no batch to predict
            return np.zeros((0, self.data.num_classes), dtype=np.float32)
        model = self.method.eval_model(self.model)
        if len(x) < self.processes.world:  # too few to give each process a part: every process predicts all
            parts = self.evaluate(self.loader(EVAL_BATCH, x=x), model, self.method.predict)
            return torch.cat([part["probs"] for part in parts]).cpu().numpy()
        return self.predict(self.loader(EVAL_BATCH, x=x, shard=True), model)["probs"].cpu().numpy()

    def stage_at(self, epoch):
        start = 0
        for stage in self.stages:
            if epoch < start + stage.epochs:
                return stage, epoch - start
            start += stage.epochs
        raise IndexError(epoch)

    # ------------------------------------------------------------------ checkpoints

    def identity(self, before_classes=False):
        """What must match for --resume: the run config without where it runs and writes (its
        files: their content is in the data's fingerprint; before_classes: as TrainingData.fingerprint)."""
        if before_classes:
            fingerprint = self.data.fingerprint(before_classes=True)
        else:
            if self.data_fingerprint is None:
                self.data_fingerprint = self.data.fingerprint()
            fingerprint = self.data_fingerprint
        if self.run_config is None:
            return {"seed": self.seed, "method": self.method.name, "hyperparameters": self.config.to_dict(),
                    "data_fingerprint": fingerprint}
        identity = self.run_config.to_dict()
        for key in ("out", "device"):
            identity.pop(key)
        for key in ("data_dir", "noise_file"):
            if identity["data"] is not None:
                identity["data"].pop(key)
        return {**identity, "data_fingerprint": fingerprint}

    def save_checkpoint(self, epoch):
        if self.checkpoint_path is None or not self.processes.main:
            return
        save_checkpoint(self.checkpoint_path, {
            "epoch": epoch, "step": self.step, "identity": self.identity(), "processes": self.processes.world,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(), "metrics": self.metrics,
        })

    def load_checkpoint(self):
        state = load_checkpoint(self.checkpoint_path, self.identity(), self.device,
                                earlier=lambda: self.identity(before_classes=True))
        try:  # the run's identity matches: a state that does not fit it was built or changed by hand
            self.model.load_state_dict(state["model"])
            self.optimizer = self.new_optimizer()
            self.optimizer.load_state_dict(state["optimizer"])
            self.method.load_state_dict(state["method"])
            if not (isinstance(state["step"], int) and isinstance(state["epoch"], int) and state["step"] >= 0
                    and -1 <= state["epoch"] < self.config.epochs and isinstance(state["metrics"], list)):
                raise ValueError(f"step {state['step']!r:.40}, epoch {state['epoch']!r:.40}")
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as error:
            reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"{RESUMING}: {self.checkpoint_path} holds a state that does not fit this run "
                                  f"({reason}); delete it to start over") from None
        self.step, self.metrics = state["step"], state["metrics"]
        written_by = state.get("processes", self.processes.world)  # absent from checkpoints before 2026-12-07
        if written_by != self.processes.world:  # allowed (README), but no longer one run's computation
            self.note(f"{self.checkpoint_path} was written by {written_by} process(es), this run has "
                      f"{self.processes.world}: it continues, and ends near, not exactly at, an uninterrupted run's "
                      f"result on either")
        return state["epoch"] + 1

    def note(self, text):
        if self.processes.main:
            warnings.warn(text, RunNote, stacklevel=2)

    # ------------------------------------------------------------------ loop

    def train_epoch(self, epoch, stage, epoch_in_stage):
        self.model.train()
        for group in self.optimizer.param_groups:
            if not group.get("fixed_lr", False):
                group["lr"] = stage.lr_at(epoch_in_stage)
        self.train_loader.set_epoch(epoch)
        torch.manual_seed(epoch_seed(self.seed, epoch))
        total, batches = torch.zeros((), device=self.device), 0
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.config.epochs} [{stage.name}]", leave=False,
                   disable=None if self.processes.main else True)
        clean = self.clean_batches(epoch) if self.clean_loader is not None else None
        step = None
        for number, (inputs, indices, *second_view) in enumerate(bar):
            # Not blocking: a blocking copy from pageable memory waits for the GPU every step.
            indices = indices.to(self.device, non_blocking=True)
            share = self.train_loader.share(number)
            batch = Batch(self.to_device(inputs), indices, self.method.given_labels[indices],
                          self.to_device(second_view[0]) if second_view else None, *(next(clean) if clean else ()),
                          first_row=self.train_loader.first_row(number), share=share)
            step = Step(epoch, stage, epoch_in_stage, self.step, self.optimizer)
            with self.autocast():
                try:
                    loss = self.method.loss(self.trained, batch, step)
                except Exception as error:  # NaN outputs can break a loss's input checks before any loss shows NaN
                    if self.outputs_are_finite(batch.images):
                        raise
                    raise self.diverged(epoch, stage, epoch_in_stage, "the model's outputs are NaN or infinite") \
                        from error
            if share != 1 and self.method.loss_is_a_mean_over_the_rows:  # an uneven last batch: its samples
                loss = loss * share  # weigh alike in DDP's average of the processes' gradients
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            sample_parameters = self.method.sample_parameters()
            for parameter in sample_parameters:  # outside DDP: their rows' gradients as in the global batch
                if parameter.grad is not None:
                    parameter.grad /= self.processes.world
            if self.method.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.method.grad_clip)
            self.optimizer.step()
            for parameter in sample_parameters:
                self.processes.sync_rows(parameter, indices)
            self.step += 1
            total += loss.detach()
            batches += 1
        # The mean of the processes' parts' losses, each scaled by its share: the global batch's.
        total = self.processes.all_reduce(total) / self.processes.world
        return (total / max(batches, 1)).item(), step or Step(epoch, stage, epoch_in_stage, self.step,
                                                                self.optimizer)

    def run(self):
        """Trains (or continues a resumed run) to the last epoch; returns the summary. The
        output folder is locked for the run: a second run on it is refused (FolderInUse). Under
        torchrun every process learns rank 0's refusal, and the run is refused where the
        processes were given other data or options (engine.fit's arguments are each script's)."""
        with ExitStack() as held:
            refusal = None
            if self.out is not None and self.processes.main:  # rank 0 alone writes
                os.makedirs(self.out, exist_ok=True)
                try:
                    held.enter_context(folder_lock(self.out))
                except FolderInUse as error:
                    refusal = error
            identity = self.identity() if self.processes.distributed else None  # one process agrees with itself
            agreed = self.processes.gather_objects((None if refusal is None else str(refusal), identity))
            if refusal is not None or agreed[0][0] is not None:
                raise refusal or FolderInUse(agreed[0][0])
            other = next((rank for rank, (_, theirs) in enumerate(agreed) if theirs != agreed[0][1]), None)
            if other is not None:
                raise ProcessesDiffer(f"process {other} of {self.processes.world} has other data or options than "
                                      f"process 0 (their fingerprint or configuration differ); every process must be "
                                      f"given the same (e.g. noise added with a seeded generator)")
            return self.train_all_epochs()

    def train_all_epochs(self):
        start_epoch = 0
        resumed = self.resume and self.checkpoint_path and os.path.exists(self.checkpoint_path)
        if self.resume and not resumed:  # e.g. a mistyped --out
            self.note(f"no checkpoint to resume in {self.out}: a new run")
        if resumed:
            start_epoch = self.load_checkpoint()  # refuses another run's checkpoint before anything is written
            self.log(f"resumed from {self.checkpoint_path} after epoch {start_epoch}")
            self.processes.barrier()  # every process has read it before rank 0 writes the next
        elif self.out is not None:
            if not self.overwrite:  # on every process, so that each stops with the error
                refuse_foreign_outputs(self.out)
                refuse_unfinished_run(self.out)
                self.processes.barrier()  # every process has looked before rank 0 writes a new checkpoint
            if self.processes.main:  # run() holds the folder's lock
                remove_outputs(self.out)
        if self.out is not None and self.run_config is not None and self.processes.main:
            save_yaml(self.run_config, os.path.join(self.out, "config.yaml"))
        if not resumed:
            self.optimizer = self.new_optimizer()
            self.method.prepare(self.preparation())
            self.processes.broadcast_state(self.method)
            self.save_checkpoint(-1)  # a run killed from here on keeps what prepare computed
        train_outputs = None
        for epoch in range(start_epoch, self.config.epochs):
            began = time.time()
            stage, epoch_in_stage = self.stage_at(epoch)
            if epoch_in_stage == 0 and epoch > 0:
                if stage.reset_optimizer:
                    self.optimizer = self.new_optimizer()
                self.method.start_stage(stage, train_outputs if train_outputs is not None else self.predict(
                    self.train_eval_loader, self.model))
                self.processes.broadcast_state(self.method)
            train_loss, step = self.train_epoch(epoch, stage, epoch_in_stage)
            if not math.isfinite(train_loss):  # the weights are lost too: stop before they overwrite the last good ones
                raise self.diverged(epoch, stage, epoch_in_stage, f"the training loss is {train_loss}")
            self.recalibrate_batchnorm(self.model)
            train_outputs = self.predict(self.train_eval_loader, self.model)
            self.method.end_epoch(step, train_outputs)
            self.processes.broadcast_state(self.method)
            evaluated = self.method.eval_model(self.model)
            if evaluated is not self.model:  # e.g. BLDR's EMA of the weights, updated by end_epoch
                self.recalibrate_batchnorm(evaluated)
            test_acc = self.test_accuracy()
            _, flagged = self.method.clean_scores(train_outputs)
            precision, recall, f1 = self.detection(flagged.cpu().numpy())
            self.metrics.append({"epoch": epoch + 1, "stage": stage.name, "train_loss": train_loss,
                                 "test_acc": test_acc, "det_precision": precision, "det_recall": recall,
                                 "det_f1": f1, "seconds": time.time() - began})
            self.save_checkpoint(epoch)
            if self.out is not None and self.processes.main:  # to follow while it trains; a stopped run keeps it
                write_metrics(self.metrics, os.path.join(self.out, "metrics.csv"))
            self.log(f"epoch {epoch + 1}/{self.config.epochs} [{stage.name}] loss {train_loss:.4f}"
                     + (f" test_acc {test_acc:.4f}" if test_acc is not None else "")
                     + (f" det_f1 {f1:.3f}" if f1 is not None else "") + f" ({self.metrics[-1]['seconds']:.1f}s)")
        if train_outputs is None:
            train_outputs = self.predict(self.train_eval_loader, self.model)
        self.train_outputs = train_outputs
        return self.finish()

    @torch.no_grad()
    def outputs_are_finite(self, images):
        """Whether the model's outputs on `images` are finite (asked after a loss failed: a sync)."""
        outputs = self.model(images)  # logits, or several: a tuple, or BLDR's heads by name
        outputs = outputs.values() if isinstance(outputs, dict) else outputs
        return all(torch.isfinite(z).all() for z in (outputs if not isinstance(outputs, torch.Tensor) else [outputs]))

    def diverged(self, epoch, stage, epoch_in_stage, what):
        kept = f"; {self.checkpoint_path} keeps the run as it was before this epoch" if self.checkpoint_path else ""
        return Diverged.at(f"epoch {epoch + 1} [{stage.name}]", what, stage.lr_at(epoch_in_stage), kept)

    def recalibrate_batchnorm(self, model):
        """BatchNorm statistics of `model` from the (unaugmented) training set, after each epoch
        and before anything evaluates it: the method's per-epoch update, the test accuracy, the
        checkpoint."""
        with self.autocast(), local_batch_statistics(model):
            used = recalibrate_batchnorm(model, (self.to_device(inputs) for inputs, *_ in self.train_eval_loader))
        self.processes.average_batchnorm(model, used)

    def test_accuracy(self):
        if self.test_loader is None:
            return None
        probs = self.predict(self.test_loader, self.method.eval_model(self.model))["probs"]
        return (probs.argmax(1).cpu() == torch.from_numpy(self.data.y_test)).float().mean().item()

    def checked(self):
        """The noisy training samples whose true label is known (every one on a benchmark; on
        real data some or none, -1 marking the others), against which detection is measured."""
        true = self.data.true_labels
        if true is None:
            return np.zeros(0, dtype=np.int64)
        return self.train_indices[true[self.train_indices] >= 0]

    def truly_noisy(self):
        """bool [N]: the given label differs from the true one (meaningful on checked() only)."""
        return self.data.given_labels != self.data.true_labels

    def detection(self, flagged):
        """(precision, recall, F1) of the flags on the checked samples, or Nones without any."""
        checked = self.checked()
        if not len(checked):
            return None, None, None
        return detection_metrics(flagged[checked], self.truly_noisy()[checked])

    # ------------------------------------------------------------------ outputs

    def finish(self):
        """The label-issues table and the summary, written to `out` when there is one."""
        # Scored on the device, beside the method's state (its labels, histories); kept on the CPU.
        score, flagged = (t.cpu().numpy() for t in self.method.clean_scores(self.train_outputs))
        self.issue_probs = self.method.issue_probs(self.train_outputs).cpu().numpy()
        self.train_outputs = {key: value.cpu() for key, value in self.train_outputs.items()}
        data, train = self.data, self.train_indices
        self.table = label_issues_table(data.given_labels, self.issue_probs, score, flagged,
                                        true=data.true_labels, clean_indices=data.clean_indices,
                                        class_names=data.class_names, paths=data.train_paths, rows=data.train_rows)
        precision, recall, f1 = self.detection(flagged)
        checked = self.checked()
        test_accs = [row["test_acc"] for row in self.metrics if row["test_acc"] is not None]
        summary = {
            "method": self.method.name, "dataset": data.name, "model": self.model_name, "epochs": self.config.epochs,
            "test_acc": test_accs[-1] if test_accs else None, "best_test_acc": max(test_accs) if test_accs else None,
            "det_precision": precision, "det_recall": recall, "det_f1": f1,
            "estimated_noise_rate": float(flagged[train].mean()),
            "true_noise_rate": float(self.truly_noisy()[checked].mean()) if len(checked) else None,
            "true_labels_known": int(len(checked)),
            "clean_subset_size": int(len(data.clean_indices)),
            "processes": self.processes.world,  # a rerun repeats the run exactly on as many
            **self.method.summary(torch.from_numpy(data.true_labels) if len(checked) == len(train) else None),
        }
        if self.out is not None and self.processes.main:
            write_metrics(self.metrics, os.path.join(self.out, "metrics.csv"))
            write_label_issues(self.table, os.path.join(self.out, "label_issues.csv"))
            write_json(summary, os.path.join(self.out, "summary.json"))
            if len(checked):
                plot_separation(score[checked], self.truly_noisy()[checked], os.path.join(self.out, "separation.png"),
                                f"{self.method.name} on {data.name}")
        return summary
