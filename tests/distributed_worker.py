"""One process of a test run (python or torchrun): trains like `python -m engine.train ARGS`
and writes OUT/rank<rank>.json with what tests/test_distributed.py compares across processes
and against one process: the sample indices of every step of the first epoch, checksums of
the method's per-sample state right after each end_epoch (before the trainer broadcasts rank
0's copy, so equal checksums show the processes computed the same state) and of the model's
weights, and the summary.

    [torchrun --nproc_per_node=2] tests/distributed_worker.py OUT ARGS...

LATE_RANK_SECONDS=S in the environment starts rank 1's training S seconds after the others'.
"""
import json
import os
import sys
import time

import torch

from engine.train import parse_args, trainer_for


def checksums(state):
    return {key: float(value.double().sum()) + float((value.double() ** 2).sum())
            for key, value in state.items() if isinstance(value, torch.Tensor)}


def main(out, argv):
    run, method, start = parse_args(argv)
    trainer = trainer_for(run, method, **start)
    record = {"steps": [], "epochs": []}
    loss, end_epoch = method.loss, method.end_epoch

    def recorded_loss(model, batch, step):
        if step.epoch == 0:
            record["steps"].append([batch.first_row, batch.indices.tolist()])
        return loss(model, batch, step)

    def recorded_end_epoch(step, outputs):
        end_epoch(step, outputs)
        record["epochs"].append({"method": checksums(method.state_dict()),
                                 "model": checksums(trainer.model.state_dict())})

    method.loss, method.end_epoch = recorded_loss, recorded_end_epoch
    if trainer.processes.rank == 1:
        time.sleep(float(os.environ.get("LATE_RANK_SECONDS", 0)))
    record["summary"] = trainer.run()
    record["world"] = trainer.processes.world
    with open(os.path.join(out, f"rank{trainer.processes.rank}.json"), "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
