"""How an exported reproducer runs: its own gloo ranks or torchrun's, the hang watchdog, ``--phase save|load``.

``export`` copies these functions, as they are, after ``script``'s ``RUN``; the names
they take from ``script`` (the case's constants and ``round_trip``) are defined in
the exported script above them.
"""

from __future__ import annotations

import datetime
import os
import shutil
import sys
import tempfile
import time

import torch
import torch.distributed as dist

from shardfuzz.rank.portable.script import HANG_SECONDS, LOAD_TORCH, PHASE, SAVE_TORCH, WORLD_SIZE, round_trip

__all__ = [
    "watch_for_hang",
    "finish_together",
    "rank_main",
    "parse_phase",
    "main",
]


def watch_for_hang(rank):
    """A rank still running after HANG_SECONDS is stuck (in a collective its peers never join)."""
    import threading

    def expire():
        if PHASE[0] == "finish":  # done, waiting for a peer that is stuck: let that one report
            time.sleep(2)
        else:
            print(f"REPRODUCED on rank {rank}: hang: still in {PHASE[0]} after {HANG_SECONDS}s", file=sys.stderr)
            sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(HANG_SECONDS, expire)
    timer.daemon = True
    timer.start()


def finish_together(finish_group):
    """Wait for every rank on a group of its own before leaving. As in shardfuzz's warm pool, a
    rank that is done stays alive: a peer stuck in a collective with it then hangs (and the
    watchdog says where) instead of failing on a closed connection once the done rank exits."""
    PHASE[0] = "finish"
    dist.barrier(group=finish_group)


def rank_main(rank, world_size, init_file, checkpoint_dir, phase="both"):
    torch.set_num_threads(1)
    watch_for_hang(rank)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=300),
    )
    finish_group = dist.new_group(backend="gloo")
    round_trip(rank, checkpoint_dir, phase)
    finish_together(finish_group)
    dist.destroy_process_group()


def parse_phase(argv):
    """``(phase, folder)`` of ``--phase save|load --dir DIR`` (a case across two torches), or ("both", None)."""
    import argparse

    parser = argparse.ArgumentParser(description="reproduce a shardfuzz corpus entry")
    parser.add_argument("--phase", choices=("both", "save", "load"), default="both")
    parser.add_argument("--dir", default=None, help="the checkpoint folder both phases share")
    args = parser.parse_args(argv)
    if args.phase != "both" and args.dir is None:
        parser.error("--phase save and --phase load need the same --dir")
    return args.phase, args.dir


def main():
    phase, shared_dir = parse_phase(sys.argv[1:])
    if phase == "both" and SAVE_TORCH != LOAD_TORCH:
        print(
            f"note: found saving under torch {SAVE_TORCH} and loading under torch {LOAD_TORCH}: run "
            "--phase save --dir DIR under the one, then --phase load --dir DIR under the other",
            file=sys.stderr,
        )
    if "RANK" in os.environ:  # launched by torchrun
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
        rank = dist.get_rank()  # kept: after destroy_process_group() there is no group to ask
        watch_for_hang(rank)
        if dist.get_world_size() != WORLD_SIZE:
            sys.exit(f"run with --nproc-per-node {WORLD_SIZE}, not {dist.get_world_size()}")
        holder = [shared_dir or tempfile.mkdtemp(prefix="shardfuzz-repro-") if rank == 0 else None]
        dist.broadcast_object_list(holder, src=0)
        finish_group = dist.new_group(backend="gloo")
        round_trip(rank, os.path.join(holder[0], "ckpt") if shared_dir else holder[0], phase)
        finish_together(finish_group)
        dist.destroy_process_group()
        if rank == 0 and not shared_dir:
            shutil.rmtree(holder[0], ignore_errors=True)
        return
    import torch.multiprocessing as mp

    scratch = tempfile.mkdtemp(prefix="shardfuzz-repro-")
    os.makedirs(shared_dir or scratch, exist_ok=True)
    try:
        mp.spawn(
            rank_main,
            args=(WORLD_SIZE, os.path.join(scratch, "store"), os.path.join(shared_dir or scratch, "ckpt"), phase),
            nprocs=WORLD_SIZE,
            join=True,
        )
    except Exception as exc:  # a rank exited 1 after printing REPRODUCED, or died (a signal: a crash)
        if "signal" in str(exc):
            print(f"REPRODUCED: a rank died: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
