"""Train the docking score model by denoising score matching on a preprocessed tensor file.

    python -m sciddiff.dock.train --data .gpu/dock/train.pt --out runs/dock --max-seconds 480

Needs only torch + e3nn + torch-geometric (no rdkit): make the data file with `python -m sciddiff.dock.data`.
Resumable (re-running with the same --out continues from out/state.pt), bf16 autocast on CUDA, EMA weights,
DDP under torchrun (each rank draws its own complexes), a CSV log (out/log.csv). The shipped artefact is
out/score_model.pt: EMA weights + model config + the training command, small enough to commit.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from sciddiff.cli import (DefaultsHelpFormatter, UserError, check_output_path, load_or_fail, options_below,
                          options_not_positive, print_note, run_command, text_digest)
from sciddiff.core.ema import EMA
from sciddiff.dock.data import TrainSet, dsm_loss
from sciddiff.dock.model import ATOM_DIM, ScoreModel, ScoreModelConfig, count_parameters
from sciddiff.train import (CSVLogger, autocast, distributed, load_checkpoint, restore_training_state, save_checkpoint,
                            seed_everything, training_state, write_json)
from sciddiff.train.checkpoint import command_history, earlier_config
from sciddiff.train.interrupt import decide, interruption, stop_requests


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sciddiff.dock.train", description=__doc__.splitlines()[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="preprocessed .pt file (python -m sciddiff.dock.data)")
    p.add_argument("--out", required=True, help="run folder (state.pt, score_model.pt, log.csv); resumed if present")
    p.add_argument("--max-seconds", type=float, default=600.0, help="stop (and save) after this much wall time")
    p.add_argument("--max-steps", type=int, default=100000, help="stop (and save) at this total step count")
    p.add_argument("--batch-size", type=int, default=16, help="complexes per step and rank")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay of the saved weights")
    p.add_argument("--save-every", type=float, default=60.0, help="seconds between checkpoints")
    p.add_argument("--seed", type=int, default=0, help="random seed (noise, batches, initial weights)")
    p.add_argument("--init", default=None,
                   help="start a new run from the weights of this score_model.pt (its architecture; fresh optimizer)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (ignored on CUDA)")
    # the architecture (None: the default for a new run, the run's own when resuming)
    for name in MODEL_OPTIONS:
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=None,
                       help=f"model: {name} (default {getattr(ScoreModelConfig, name)} for a new run; a resumed run "
                            "keeps its own)")
    return p.parse_args(argv)


MODEL_OPTIONS = ("ns", "nv", "rec_layers", "lig_layers")


def export(path: Path, model: ScoreModel, ema: EMA, cfg: ScoreModelConfig, step: int, command: str) -> None:
    """The shipped checkpoint: EMA weights only (fp32), config, step and the command that made it."""
    save_checkpoint(path, {"weights": {k: v.detach().float().cpu() for k, v in ema.shadow.items()},
                           "config": cfg.to_dict(), "step": step, "command": command, "kind": "sciddiff-dock-score"})


def save_state(out: Path, model, opt, ema: EMA, cfg: ScoreModelConfig, step: int, running: dict[str, float],
               seconds: float, data: str = "") -> None:
    """Resume state in two files (optimizer.pt first, so a state.pt never points past its optimizer), each under
    the 16 MiB that a GPU-machine run can bring back; with it the logged running losses and the run's training
    seconds, so that log.csv goes on as one run. Call it on every rank (it gathers their RNG states); rank 0 writes."""
    state = training_state(model=model, step=step, ema=ema, config=cfg.to_dict(), running=running, seconds=seconds,
                           data=data)
    if distributed.is_main():
        save_checkpoint(out / "optimizer.pt", {"optimizer": opt.state_dict(), "step": step})
        save_checkpoint(out / "state.pt", state)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m sciddiff.dock.train " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    return run_command(lambda a: train(a, command), args)


def _model_config(args: argparse.Namespace, out: Path) -> tuple[ScoreModelConfig, dict | None, dict | None]:
    """(architecture, resume state, --init checkpoint), all checked: a resumed run keeps the architecture it started
    with, so model options that contradict it are refused (and an --init, which only starts a run, is noted)."""
    given = {k: getattr(args, k) for k in MODEL_OPTIONS if getattr(args, k) is not None}
    if (out / "state.pt").exists():
        state, cfg = load_or_fail(lambda path: _with_config(load_checkpoint(path)), out / "state.pt",
                                  "docking training state")
        load_or_fail(lambda path: load_checkpoint(path)["optimizer"], out / "optimizer.pt",  # written first: must exist
                     "docking optimizer state")
        if any(getattr(cfg, k) != v for k, v in given.items()):
            raise UserError(f"{out} holds a run of {cfg.to_dict()}: resuming keeps its model; drop the model options "
                            "or use a new --out")
        if args.init:  # "resume, else start from these weights" is how the GPU script calls it: said, not refused
            print_note(f"{out} holds a run: resuming it; --init {args.init} is not used")
        return cfg, state, None
    if args.init:
        init, cfg = load_or_fail(_init_model, args.init, "docking score model")
        if differ := [f"--{k.replace('_', '-')} {getattr(cfg, k)}" for k, v in given.items() if getattr(cfg, k) != v]:
            raise UserError(f"--init {args.init} has {', '.join(differ)}: fine-tuning keeps its architecture; drop "
                            "those options (they were ignored)")
        return cfg, None, init
    return ScoreModelConfig(**given), None, None


MAX_SKIPPED = 20  # consecutive non-finite batches that stop a run
LOG_COLUMNS = ("loss", "tr", "rot", "tor")  # running losses in log.csv, each averaged over ranks


def _note_other_options(out: Path, args: argparse.Namespace) -> None:
    """A note naming the training options (data, learning rate, batch, seed, EMA) that differ from those the run
    was started or last resumed with (config.json): they take effect from here (config.json's `commands` keeps
    every call's command)."""
    before = earlier_config(out / "config.json").get("args") or {}

    def same(k: str) -> bool:  # the data file by where it is, not by how it was spelled
        now = getattr(args, k)
        return Path(before[k]).resolve() == Path(now).resolve() if k == "data" else before[k] == now

    differ = [f"--{k.replace('_', '-')} {before[k]} -> {getattr(args, k)}"
              for k in ("data", "lr", "batch_size", "seed", "ema_decay") if k in before and not same(k)]
    if differ and distributed.is_main():
        print_note(f"resuming with other training options ({'; '.join(differ)}): they apply from this step on")


def _with_config(ckpt: dict) -> tuple[dict, ScoreModelConfig]:
    return ckpt, ScoreModelConfig(**ckpt["config"])


def _init_model(path: Path) -> tuple[dict, ScoreModelConfig]:
    """An --init checkpoint and its architecture, its weights checked against it (a file of the right kind whose
    weights do not fit failed at load_state_dict, after the run folder was made)."""
    init = load_checkpoint(path)
    if init.get("kind") != "sciddiff-dock-score":
        raise ValueError("not a docking score model (score_model.pt)")
    init, cfg = _with_config(init)
    ScoreModel(cfg).load_state_dict(init["weights"])
    return init, cfg


def train(args: argparse.Namespace, command: str) -> None:
    if bad := options_below(args, 1, "max_steps", "batch_size", "threads", *MODEL_OPTIONS):
        raise UserError(f"{bad[0]} must be >= 1")
    if not (args.max_seconds > 0 and args.save_every >= 0):  # `<= 0` would let nan through: a run without end
        raise UserError("--max-seconds must be > 0 and --save-every >= 0")
    if bad := options_not_positive(args, "lr"):
        raise UserError(f"{bad[0]} must be a finite number > 0")
    if not 0 <= args.ema_decay < 1:
        raise UserError("--ema-decay must lie in [0, 1)")
    out = check_output_path(args.out, folder=True)
    cfg, state, init = _model_config(args, out)
    blob = load_or_fail(load_checkpoint, args.data, "docking data file (python -m sciddiff.dock.data)")
    if not blob.get("complexes"):
        raise UserError(f"--data {args.data} holds no complexes")
    widths = {int(c["feat"].shape[-1]) for c in blob["complexes"]}
    if widths != {ATOM_DIM}:  # another featuriser's file: it failed at the first step, after the run folder was made
        raise UserError(f"--data {args.data} has {sorted(widths)} ligand atom features where this code computes "
                        f"{ATOM_DIM}: re-make it with `python -m sciddiff.dock.data`")
    info = distributed.setup()
    device = info.device
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    seed_everything(args.seed + info.rank)
    out.mkdir(parents=True, exist_ok=True)
    data = TrainSet(blob, device, cfg)
    names = "\n".join(map(str, blob.get("names") or [])) + repr(sorted((blob.get("meta") or {}).items()))
    data_id = f"{len(blob['complexes'])} complexes, sha256 {text_digest(names)}"
    del blob
    model = ScoreModel(cfg).to(device)
    if init is not None:
        model.load_state_dict(init["weights"])
    ema = EMA(model, decay=args.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-6)
    step, running, seconds_before = 0, {}, 0.0  # the logged running losses and training time of earlier calls
    if state is not None:
        state = load_checkpoint(out / "state.pt", map_location=device)
        state["optimizer"] = load_checkpoint(out / "optimizer.pt", map_location=device)["optimizer"]
        step = restore_training_state(state, model=model, optimizer=opt, ema=ema)
        running, seconds_before = dict(state.get("running", {})), float(state.get("seconds", 0.0))
        print(f"resumed from {out / 'state.pt'} at step {step}", flush=True)
        _note_other_options(out, args)
        if (before := state.get("data")) and before != data_id and info.is_main:  # a file re-made at the same path
            print_note(f"resuming on other complexes ({before} -> {data_id}): they train from this step on")
        if step >= args.max_steps:  # nothing to train: the files stay as they are (the model's digest with them)
            print(f"{out} is trained to step {step}, --max-steps {args.max_steps}: nothing to train (a larger "
                  "--max-steps goes on)", flush=True)
            distributed.cleanup()
            return
    # a batch of rigid ligands (no rotatable bond) leaves the torsion head unused on that rank
    ddp_model = distributed.wrap(model, find_unused_parameters=True)
    gen, pick = torch.Generator(device=device), torch.Generator()
    retries = 0  # draws of the current step: a batch skipped for non-finite gradients is drawn anew
    if info.is_main:
        print(f"{len(data)} complexes, {count_parameters(model)} parameters, device {device}, world {info.world_size}",
              flush=True)
        commands = command_history(out / "config.json", command) if state is not None else [command]
        write_json(out / "config.json", {"model": cfg.to_dict(), "args": vars(args), "command": command,
                                         "commands": commands}, indent=1)
    log = CSVLogger(out / "log.csv", resume_step=step) if info.is_main else None
    start = last_save = time.time()
    start_step = step
    sync_every = 1 if info.world_size == 1 else 25  # steps between rank 0's shared time decisions

    def save() -> None:
        save_state(out, model, opt, ema, cfg, step, running, seconds_before + time.time() - start, data_id)
        if info.is_main:
            export(out / "score_model.pt", model, ema, cfg, step, command)

    interrupted = False
    with stop_requests() as requests:
        while step < args.max_steps:
            if step % sync_every == 0:  # any process's Ctrl-C or SIGTERM stops all of them here; they save below
                stop, save_now, interrupted = decide(time.time() - start >= args.max_seconds,
                                                     time.time() - last_save > args.save_every, requests,
                                                     info.world_size, device)
                if save_now:
                    save()
                    last_save = time.time()
                if stop:
                    break
            # seeded by the step (and rank): a resumed run draws the batches and noise an uninterrupted one would
            for g in (gen, pick):
                g.manual_seed(args.seed * 1000 + info.rank + 7919 * step + 104729 * retries)
            idx = torch.randint(0, len(data), (args.batch_size,), generator=pick).tolist()
            lig, rec, t, targets = data.batch(idx, gen)
            with autocast(device):
                loss, parts = dsm_loss(ddp_model, lig, rec, t, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if not torch.isfinite(torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)):
                # the gradients are averaged over ranks (DDP), so every rank skips this batch alike, and stops alike
                print(f"step {step}: non-finite loss or gradients, batch skipped", flush=True)
                retries += 1
                if retries >= MAX_SKIPPED:  # diverged: skipping on would spin until --max-seconds (forever under
                    # torchrun, whose time check comes every few steps) and save weights that dock cannot use
                    raise UserError(f"training diverged: {retries} batches in a row with non-finite loss or gradients "
                                    f"at step {step} (a lower --lr?); {out} keeps its last saved state, if any")
                continue
            # short warm-up, then constant: runs are minutes long and resumable, so no schedule tied to a horizon
            for g in opt.param_groups:
                g["lr"] = args.lr * min(1.0, (step + 1) / 200)
            opt.step()
            ema.update(model)
            step, retries = step + 1, 0
            for k, v in {"loss": loss, **parts}.items():
                running[k] = 0.98 * running.get(k, float(v.detach())) + 0.02 * float(v.detach())
            if step % 25 == 0 or step == 1 or step == args.max_steps:  # the last step too
                # over all ranks (each key over those whose batches had it: rigid ligands have no torsion loss), on
                # one set of columns (a run whose first logged batches were rigid ligands had no "tor" column)
                logged = distributed.mean_over_ranks(running, LOG_COLUMNS)
                if info.is_main:
                    elapsed = seconds_before + time.time() - start
                    log.log(step=step, seconds=round(elapsed, 1),
                            **{k: round(logged[k], 5) if k in logged else "" for k in LOG_COLUMNS})
                    print(f"step {step} {elapsed:.0f}s " + " ".join(f"{k} {v:.4f}" for k, v in logged.items()),
                          flush=True)
    save()
    if info.is_main:
        log.close()
        rate = (step - start_step) / max(time.time() - start, 1e-9)
        print(f"saved {out / 'score_model.pt'} at step {step} ({rate:.2f} steps/s this session)", flush=True)
    del ddp_model  # before cleanup (see there)
    distributed.cleanup()
    if interrupted:  # saved above: exit as interrupted (130, SIGTERM 143); re-running the command resumes
        raise interruption(requests)


if __name__ == "__main__":
    raise SystemExit(main())
