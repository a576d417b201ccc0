"""Data-parallel training over several worker processes (TF_CONFIG) or local devices, on tf.distribute.

Keras 3's model.fit does not run under MultiWorkerMirroredStrategy (keras-team/keras#20585: it peeks a batch of the
distributed dataset, a PerReplica, to build the metrics). Here the model's own train_step and test_step run through
strategy.run in a tf.function; the optimizer all-reduces the gradients (sum of per-replica losses each scaled by
1/replicas, as Keras does), batch normalisation uses the statistics of the global batch, and an epoch loop drives the
same Keras callbacks as fit. Validation scores are read from the metrics' variables in cross-replica context: their
sums are all-reduced over every worker, so the Dice is that of the whole validation set."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import time
from dataclasses import dataclass

import keras
import tensorflow as tf

from keras_unet.errors import ConfigError, TrainingError

TIMEOUT_ENV = "KERAS_UNET_WORKER_TIMEOUT"
DEFAULT_TIMEOUT = 60.0  # seconds a worker waits for the others before it gives up
HEARTBEAT_SECONDS = 30  # a worker that stops answering for this long ends the others' training with an error
JOBS = ("chief", "worker")


@dataclass(frozen=True)
class Cluster:
    """The chief and worker addresses of a TF_CONFIG and this process's task in it."""

    jobs: dict
    task_type: str
    index: int

    @property
    def size(self) -> int:
        """Number of training processes (chief and workers)."""
        return sum(len(self.jobs.get(job, ())) for job in JOBS)

    @property
    def leader(self) -> tuple[str, int]:
        """(job, index) of the task that leads: the chief when there is one, else worker 0."""
        return ("chief", 0) if self.jobs.get("chief") else ("worker", 0)

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run folder."""
        return (self.task_type, self.index) == self.leader

    @property
    def name(self) -> str:
        """This task as TF_CONFIG names it ('worker 1')."""
        return f"{self.task_type} {self.index}"

    def peers(self) -> list[tuple[str, str]]:
        """(task name, address) of every other training process."""
        return [(f"{job} {i}", address) for job in JOBS for i, address in enumerate(self.jobs.get(job, ()))
                if (job, i) != (self.task_type, self.index)]


def read_tf_config(text: str | None = None) -> Cluster | None:
    """The cluster TF_CONFIG (or text) describes; None when it is unset or empty; ConfigError when it does not parse."""
    text = os.environ.get("TF_CONFIG", "") if text is None else text
    if not text.strip():
        return None
    try:
        spec = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"TF_CONFIG: not valid JSON ({e})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("cluster"), dict) or not isinstance(spec.get("task"), dict):
        raise ConfigError('TF_CONFIG: needs {"cluster": {"worker": ["host:port", ...]}, '
                          '"task": {"type": "worker", "index": N}}')
    jobs = {}
    for job, addresses in spec["cluster"].items():
        if job not in JOBS:
            raise ConfigError(f"TF_CONFIG: cluster job {job!r} is not used here; only chief and worker tasks train")
        if not isinstance(addresses, list) or not addresses or not all(_is_address(a) for a in addresses):
            raise ConfigError(f"TF_CONFIG: cluster {job!r} must be a list of host:port addresses, got {addresses!r}")
        jobs[job] = list(addresses)
    if len(jobs.get("chief", ())) > 1:
        raise ConfigError("TF_CONFIG: a cluster has at most one chief")
    task_type, index = spec["task"].get("type"), spec["task"].get("index", 0)
    if task_type not in jobs:
        raise ConfigError(f"TF_CONFIG: task type {task_type!r} is not a job of the cluster ({', '.join(jobs)})")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(jobs[task_type]):
        raise ConfigError(f"TF_CONFIG: task index {index!r} is not one of the {len(jobs[task_type])} "
                          f"{task_type} addresses")
    return Cluster(jobs, task_type, index)


def _is_address(address) -> bool:
    host, _, port = str(address).rpartition(":") if isinstance(address, str) else ("", "", "")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def worker_timeout() -> float:
    """Seconds a worker waits for the others (KERAS_UNET_WORKER_TIMEOUT, default 60)."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise ConfigError(f"{TIMEOUT_ENV}={text!r}: must be a positive number of seconds")
    return value


def wait_for(address: str, deadline: float) -> bool:
    """Whether a TCP connection to host:port opens before the time.monotonic() deadline (retried every 0.5 s)."""
    host, _, port = address.rpartition(":")
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


_STRATEGY = {}  # one MultiWorkerMirroredStrategy per process: collective ops are configured once


def multi_worker_strategy(cluster: Cluster, timeout: float | None = None) -> tf.distribute.Strategy:
    """The MultiWorkerMirroredStrategy of the cluster (made once per process); TrainingError naming the workers that
    did not answer within timeout seconds.

    The leader (chief, else worker 0) first waits for every other worker's port: the others start their servers
    at once and register with the leader, which TensorFlow would otherwise wait for without end; the others give
    up when the leader has not registered them within the timeout."""
    key = json.dumps([cluster.jobs, cluster.task_type, cluster.index])
    if key in _STRATEGY:
        return _STRATEGY[key]
    timeout = worker_timeout() if timeout is None else timeout
    if cluster.is_chief:
        deadline = time.monotonic() + timeout
        missing = [f"{name} ({address})" for name, address in cluster.peers() if not wait_for(address, deadline)]
        if missing:
            raise TrainingError(f"TF_CONFIG: {cluster.name} could not reach {', '.join(missing)} within "
                                f"{timeout:.0f} s; start every worker with the same TF_CONFIG cluster "
                                f"(or raise {TIMEOUT_ENV})")
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    job, _ = cluster.leader
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=f"/job:{job}/replica:0/task:0",
        cluster_register_timeout_in_ms=int(timeout * 1000), heartbeat_timeout_in_ms=HEARTBEAT_SECONDS * 1000,
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=j, num_tasks=len(cluster.jobs[j]))
                          for j in JOBS if j in cluster.jobs])
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except tf.errors.OpError as e:
        leader = dict(cluster.peers()).get(" ".join(map(str, cluster.leader)), "")
        raise TrainingError(f"TF_CONFIG: {cluster.name} could not join the cluster through "
                            f"{' '.join(map(str, cluster.leader))} ({leader or 'this task'}) within {timeout:.0f} s "
                            f"({type(e).__name__}); start every worker with the same TF_CONFIG cluster "
                            f"(or raise {TIMEOUT_ENV})") from None
    _STRATEGY[key] = strategy
    return strategy


def is_distributed(strategy) -> bool:
    """Whether training under strategy needs the distributed loop (several replicas, or several workers)."""
    return strategy is not None and (strategy.num_replicas_in_sync > 1
                                     or isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy))


def worker_shard(items: list, context: tf.distribute.InputContext) -> list:
    """This input pipeline's share of items: every num_input_pipelines-th one from its id (TrainingError when
    there are fewer items than pipelines)."""
    if len(items) < context.num_input_pipelines:
        raise TrainingError(f"{len(items)} images cannot be shared among {context.num_input_pipelines} workers; "
                            "each needs at least one training and one validation image")
    return items[context.input_pipeline_id::context.num_input_pipelines]


@contextlib.contextmanager
def _global_batch_norm(model):
    """Batch normalisation over the global batch (all replicas) while a step is traced; the layers' saved
    settings stay as they are (synchronized=True would only load on the TensorFlow backend)."""
    layers = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    previous = [layer.synchronized for layer in layers]
    for layer in layers:
        layer.synchronized = True
    try:
        yield
    finally:
        for layer, value in zip(layers, previous):
            layer.synchronized = value


class DistributedLoop:
    """The compiled model's train_step/test_step run on every replica of strategy; one call per step or set."""

    def __init__(self, model, strategy):
        self.model, self.strategy = model, strategy

        @tf.function
        def train(iterator):
            outputs = strategy.run(self._train_step, args=(next(iterator),))
            return strategy.reduce("MEAN", outputs["loss"], axis=None)  # the running epoch loss, same on all

        @tf.function
        def test(batch):
            strategy.run(self._test_step, args=(batch,))

        @tf.function
        def scores():
            return model.get_metrics_result()

        @tf.function
        def total(flag):
            return strategy.reduce("SUM", strategy.run(lambda: tf.identity(flag)), axis=None)

        # cross-replica reads and reductions run traced, never eagerly: TensorFlow's eager all-reduce runs in a
        # ThreadPool that a lost worker leaves open, and its __del__ prints a traceback when the process exits
        self.train, self.test, self._scores, self._total = train, test, scores, total

    def _train_step(self, data):
        with _global_batch_norm(self.model):
            return self.model.train_step(data)

    def _test_step(self, data):
        """test_step, except on the empty batch a replica gets once its share is used up (its loss would be NaN)."""
        def update():
            self.model.test_step(data)
            return tf.constant(True)

        tf.cond(tf.shape(tf.nest.flatten(data)[0])[0] > 0, update, lambda: tf.constant(False))

    def scores(self) -> dict:
        """The model's metric results over every replica (its variables' sums all-reduced), as floats."""
        with self.strategy.scope():
            return {name: float(value) for name, value in self._scores().items()}

    def broadcast(self, values):
        """The chief's values (first replica) on every replica (all-reduce with zeros elsewhere), as tensors."""
        shapes = [v.shape for v in values]

        def share(values):  # one all-reduce of everything, flattened: quick to trace and to run
            context = tf.distribute.get_replica_context()
            first = tf.cast(tf.equal(context.replica_id_in_sync_group, 0), tf.float64)
            flat = tf.concat([tf.reshape(tf.cast(v, tf.float64), [-1]) for v in values], axis=0)
            flat = context.all_reduce("SUM", flat * first)
            parts = tf.split(flat, [math.prod(s.as_list()) for s in shapes])
            return [tf.cast(tf.reshape(p, s), v.dtype) for p, s, v in zip(parts, shapes, values)]

        shared = tf.function(lambda: self.strategy.run(share, args=(values,)))()
        return [self.strategy.experimental_local_results(v)[0] for v in shared]

    def any(self, flag: bool) -> bool:
        """Whether flag is true on any worker."""
        return float(self._total(tf.constant(float(flag)))) > 0


def distribute(strategy, make, batch_size: int, repeat: bool):
    """Distributed dataset of make(context, per-replica batch size) for each worker; repeat: endless, in full
    per-replica batches (every step then trains on the global batch)."""
    def build(context):
        local = context.get_per_replica_batch_size(batch_size)
        ds = make(context, local)
        if repeat:
            ds = ds.unbatch().repeat().batch(local, drop_remainder=True)
        return ds.prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(build)


def fit_distributed(model, strategy, train, val, epochs: int, steps: int, batch_size: int, callbacks: list,
                    finished: bool = False) -> None:
    """Train model under strategy for epochs of steps global batches: the fit loop of Keras (same callback calls,
    logs and validation) with every replica in step; train/val: make(context, per-replica batch) -> tf.data.

    The chief's restored state (its BackupAndRestore's weights, optimizer and epoch, and finished: its fit already
    ended) is broadcast to every worker first; a stop asked on any worker stops all."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ConfigError(f"--batch-size {batch_size} must be a multiple of the {replicas} replicas (workers x "
                          "devices): each trains on an equal share of the global batch")
    loop = DistributedLoop(model, strategy)
    with strategy.scope():
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
    model._symbolic_build(data_batch=_element_spec(strategy, train, batch_size))  # what fit's peek would build
    callbacks = keras.callbacks.CallbackList(callbacks, add_history=True, model=model, epochs=epochs, steps=steps,
                                             verbose=0)
    model.stop_training = False
    model._initial_epoch = None
    callbacks.on_train_begin()
    try:
        state = [*model.variables, *model.optimizer.variables]
        epoch, done, *values = loop.broadcast([tf.constant(float(model._initial_epoch or 0)),
                                               tf.constant(float(finished)), *[v.value for v in state]])
        for variable, value in zip(state, values):
            variable.assign(value)
        _epochs(model, strategy, loop, callbacks, train, val, int(epoch), epochs, steps, batch_size, float(done))
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
            tf.errors.CancelledError) as e:
        lost = sorted(set(re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", str(e).split("unhealthy", 1)[-1])))
        who = ", ".join(f"{job} {task}" for job, task in lost) if "unhealthy" in str(e) else "a worker"
        raise TrainingError(f"training stopped: {who} stopped answering ({type(e).__name__}); start every worker "
                            "again with the same command to resume from the last finished epoch") from None


def _epochs(model, strategy, loop, callbacks, train, val, epoch, epochs, steps, batch_size, done) -> None:
    """fit_distributed's epochs from epoch on (none when done)."""
    logs = None
    iterator = iter(distribute(strategy, train, batch_size, repeat=True))
    val_ds = distribute(strategy, val, batch_size, repeat=False) if val is not None else None
    while not done and epoch < epochs:
        model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        for step in range(steps):
            callbacks.on_train_batch_begin(step)
            loss = float(loop.train(iterator))
            callbacks.on_train_batch_end(step, {"loss": loss})
            if model.stop_training:
                break
        logs = loop.scores()
        if val_ds is not None:
            model.reset_metrics()
            callbacks.on_test_begin()
            for batch in val_ds:
                loop.test(batch)
            val_logs = loop.scores()
            callbacks.on_test_end(val_logs)
            logs.update({f"val_{name}": value for name, value in val_logs.items()})
        callbacks.on_epoch_end(epoch, logs)
        epoch += 1
        if loop.any(model.stop_training):
            break
    model.optimizer.finalize_variable_values(model.trainable_weights)
    callbacks.on_train_end(logs=logs)


def _element_spec(strategy, make, batch_size: int):
    """The per-replica batch spec of make's dataset (shapes and dtypes, nothing read)."""
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=strategy.num_replicas_in_sync)
    return make(context, context.get_per_replica_batch_size(batch_size)).element_spec
