"""Train the backbone flow model from one preprocessed tensor file (runs without biopython, e.g. on a bare GPU machine).

    python -m sciddiff.protein.train --chains .gpu/protein/chains.pt --out runs/protein --max-seconds 480

Resumable: if OUT/state.pt exists the run continues from it (model, optimiser, EMA, step, RNG), and --max-seconds is the
budget of this call. Every --ckpt-seconds (and at the end) it writes, atomically:
- OUT/state.pt: the full training state (for resuming);
- OUT/model.pt: EMA weights only + model/flow config (the shipped checkpoint, ~2 MB; what `sciddiff backbone sample` loads);
- OUT/log.csv: step, time, losses (train, and held-out val every --val-every steps), learning rate, residues/s.
On CUDA the network runs under bf16 autocast (noising, losses and the frames inside the model stay float32) and all data
stays on the GPU. Data-parallel under torchrun (`torchrun --standalone --nproc_per_node N -m sciddiff.protein.train ...`,
PyTorch DDP via `sciddiff.train.distributed`): `--batch-residues` is per process, each draws its own chains and noise,
rank 0 alone prints, logs and saves, and the time-based stop and checkpoint decisions are rank 0's, shared every
--log-every steps.
Batches are whole chains up to --batch-residues residues in total.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from sciddiff.cli import (DefaultsHelpFormatter, UserError, check_output_path, load_or_fail, options_below,
                          options_not_positive, print_note, text_digest, torch_device)
from sciddiff.core.ema import EMA
from sciddiff.protein.config import RUN_OPTIONS, DenoiserConfig, FlowConfig, add_training_arguments
from sciddiff.protein.data import ChainSet
from sciddiff.protein.frameflow import training_loss
from sciddiff.protein.model import FrameDenoiser
from sciddiff.protein.ss import SS_UNKNOWN
from sciddiff.train import (
    CSVLogger,
    distributed,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    seed_everything,
    training_state,
    write_json,
)
from sciddiff.train.checkpoint import command_history, earlier_config, rng_restorable
from sciddiff.train.interrupt import decide, interruption, stop_requests


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sciddiff.protein.train", description=__doc__.splitlines()[0],
                                formatter_class=DefaultsHelpFormatter)
    add_training_arguments(p)
    return p


@torch.no_grad()
def validation_loss(net: FrameDenoiser, data: ChainSet, cfg: FlowConfig, batch_residues: int, device: torch.device,
                    batches: int = 4) -> float:
    """Mean loss over a fixed set of val batches with fixed noise (comparable across steps)."""
    gen = torch.Generator(device=device).manual_seed(1234)
    cpu_gen = torch.Generator().manual_seed(1234)
    total = 0.0
    for _ in range(batches):
        b = data.batch(data.sample_chains(batch_residues, cpu_gen))
        loss, _ = training_loss(net, {"rot": b["rot"], "trans": b["trans"]}, b["batch"], b["residue_index"], cfg, gen,
                                ss=b["ss"], amp=device.type == "cuda")
        total += float(loss)
    return total / batches


def _chain_identity(data: dict) -> str:
    """The chains a run trains on, by count and a digest of the ids and split: a resume on other chains is refused,
    the same file moved elsewhere is not."""
    ids = "\n".join(map(str, data.get("ids", []))) + str(data["split"].tolist())
    return (f"{int((data['split'] == 0).sum())} train / {int((data['split'] == 1).sum())} val chains, "
            f"sha256 {text_digest(ids)}")


def train(args: argparse.Namespace) -> Path:
    start = time.time()
    info = distributed.setup()
    device = info.device if info.world_size > 1 else torch_device(args.device)
    if args.init and not Path(args.init).is_file():
        raise UserError(f"--init {args.init} not found")
    # `not > 0`, not `<= 0`: a nan budget would never run out (inf is a deliberate "no time limit")
    if (args.max_steps is not None and args.max_steps < 1) or args.batch_residues < 1 or not args.max_seconds > 0:
        raise UserError("--max-steps, --batch-residues and --max-seconds must be positive")
    bad = options_below(args, 1, "log_every", "val_every", "threads")
    if bad:
        raise UserError(f"{', '.join(bad)} must be >= 1")
    if options_not_positive(args, "lr"):
        raise UserError(f"--lr must be a finite number > 0, got {args.lr}")
    if args.warmup < 0:  # 0 and 1 both mean no warm-up (the first step runs at the full --lr)
        raise UserError(f"--warmup must be >= 0 steps, got {args.warmup}")
    if not 0 <= args.ema <= 1 or options_not_positive(args, "ema_power", zero=True):
        raise UserError("--ema must lie in [0, 1] and --ema-power be a finite number >= 0")
    if not args.ckpt_seconds > 0:  # nan would never checkpoint before the end
        raise UserError(f"--ckpt-seconds must be positive, got {args.ckpt_seconds}")
    # the model and loss options: each a traceback (or a folder left behind) or a meaningless run before
    if bad := options_below(args, 1, "dim", "edge_dim", "heads", "points", "blocks", "k", "max_offset", "rbf"):
        raise UserError(f"{bad[0]} must be >= 1")
    if bad := options_below(args, 0, "seq_window", "k_sc"):  # k_sc 0: no self-conditioning neighbours
        raise UserError(f"{bad[0]} must be >= 0")
    if bad := options_not_positive(args, "rbf_max", "scale"):
        raise UserError(f"{bad[0]} must be a finite number > 0")
    if bad := options_not_positive(args, "aux_weight", "length_balance", zero=True):
        raise UserError(f"{bad[0]} must be a finite number >= 0")
    if not (0 <= args.self_condition <= 1 and 0 <= args.ss_drop <= 1):
        raise UserError("--self-condition and --ss-drop are probabilities: from 0 to 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = check_output_path(args.out, folder=True)
    seed_everything(args.seed)
    data = load_or_fail(lambda path: load_checkpoint(path, map_location="cpu"), args.chains,
                        "chain tensor file from `sciddiff backbone prepare`")
    if not isinstance(data, dict) or "split" not in data:
        raise UserError(f"{args.chains} is not a chain tensor file from `sciddiff backbone prepare`")
    if not bool((data["split"] == 0).any()):
        raise UserError(f"{args.chains} holds no training chains (its split puts them all in val / test)")

    model_cfg = DenoiserConfig(**{k: getattr(args, k) for k in DenoiserConfig().to_dict()})
    flow_cfg = FlowConfig(self_condition=args.self_condition, aux_weight=args.aux_weight, ss_drop=args.ss_drop)
    state_path = out / "state.pt"
    resumed = state_path.is_file()
    if not resumed and (out / "model.pt").exists():  # a new run would replace that model
        raise UserError(f"{out} holds a trained model.pt but no state.pt to resume its run: use a new --out, or "
                        f"--init {out / 'model.pt'} to fine-tune that model")
    if resumed:  # the stored configs win, so a resumed run is the same run
        def load_state(path: Path) -> tuple[dict, DenoiserConfig, FlowConfig]:
            state = load_checkpoint(path, map_location=device)
            return state, DenoiserConfig(**state["model_config"]), FlowConfig(**state["flow_config"])

        state, stored_cfg, flow_cfg = load_or_fail(load_state, state_path, "backbone training state")
        # a model option given here that differs from the run's would be silently ignored
        given = getattr(args, "model_options_given", set())
        changed = [f"--{k.replace('_', '-')}: {getattr(stored_cfg, k)} there, {v} here"
                   for k, v in model_cfg.to_dict().items() if k in given and v != getattr(stored_cfg, k)]
        if changed:
            raise UserError(f"{state_path} belongs to a run with a different model configuration "
                            f"({'; '.join(changed)}); use a new --out, or leave the model options at their defaults "
                            f"to resume it")
        model_cfg = stored_cfg
        # training options likewise: given with another value, refused; left out, the run's own (not the defaults)
        # runs saved before the options were stored (2026-12-06): the last call's, from config.json
        last_call = earlier_config(out / "config.json").get("args") or {}
        stored_run = {**state.get("run_options", {k: last_call[k] for k in RUN_OPTIONS if k in last_call}),
                      **flow_cfg.to_dict()}
        changed = [f"--{k.replace('_', '-')}: {stored_run[k]} there, {getattr(args, k)} here" for k in RUN_OPTIONS
                   if k in given and k in stored_run and getattr(args, k) != stored_run[k]]
        if changed:
            raise UserError(f"{state_path} belongs to a run trained with other options ({'; '.join(changed)}); "
                            f"resuming keeps them: drop those options, or use a new --out")
        for k in RUN_OPTIONS:
            if k in stored_run:
                setattr(args, k, stored_run[k])
        if "data" not in state:  # saved before 2026-12-07: chains in 10 A units whatever --scale, data by path only
            if model_cfg.scale != 10:
                raise UserError(f"{state_path} began before --scale applied to the data (it trained in 10 A units, "
                                f"its model reads {model_cfg.scale:g}): start a new --out")
            if state.get("chains") and state["chains"] != str(Path(args.chains).resolve()) and info.is_main:
                print_note(f"resuming on {args.chains}; the run began on {state['chains']}")
        elif state["data"] != _chain_identity(data):  # the val set and SS library would change under it
            raise UserError(f"{state_path} belongs to a run on other chains ({state['data']}; {args.chains}: "
                            f"{_chain_identity(data)}): resume it on its own, or use a new --out")
        if args.init and info.is_main:
            print_note(f"--init {args.init} is not used: {out} resumes its own run")
    # translations in the model's units (--scale A each): the loss and the sampler read them so
    train_set = ChainSet(data, "train", scale=model_cfg.scale, device=device)
    has_val = bool((data["split"] == 1).any())
    val_set = ChainSet(data, "val", scale=model_cfg.scale, device=device) if has_val else None  # tiny sets: no val
    if model_cfg.ss_condition and not bool((train_set.ss < SS_UNKNOWN).any()):
        raise UserError(f"--ss-condition needs secondary-structure labels: re-run `sciddiff backbone prepare` "
                        f"({args.chains} predates them)")
    net = FrameDenoiser(model_cfg).to(device)
    init_steps = 0  # the --init checkpoint's own training steps, so that total_steps counts from scratch
    if args.init and not resumed:  # fine-tuning: weights only, fresh optimizer and EMA
        def load_init(path: Path) -> tuple[dict, DenoiserConfig]:
            ckpt = load_checkpoint(path, map_location=device)
            if "optimizer" in ckpt:
                raise ValueError(f"{path.name} is a training state (to resume a run); give the model.pt beside it")
            return ckpt, DenoiserConfig(**ckpt["model_config"])

        init, init_cfg = load_or_fail(load_init, args.init, "backbone checkpoint")
        # Adding secondary-structure conditioning to an unconditional model is allowed: its embedding starts at zero.
        if (replace(init_cfg, ss_condition=model_cfg.ss_condition) != model_cfg
                or init_cfg.ss_condition > model_cfg.ss_condition):
            differ = [f"--{k.replace('_', '-')} {v}" for k, v in init_cfg.to_dict().items()
                      if v != getattr(model_cfg, k) and k != "ss_condition"]
            differ += ["--ss-condition"] if init_cfg.ss_condition and not model_cfg.ss_condition else []
            raise UserError(f"--init {args.init} has a different model configuration than this run: give "
                            f"{' '.join(differ)} (its own) to fine-tune it")
        net.load_state_dict(init["ema"], strict=init_cfg.ss_condition == model_cfg.ss_condition)
        init_steps = int(init.get("total_steps", init.get("step", 0)))
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0, fused=device.type == "cuda")
    # Warm-up matters for short runs: a fixed 0.999 would still weigh the random init by 37% after 1,000 steps.
    ema = EMA(net, decay=args.ema, power=args.ema_power or None, max_decay=args.ema)
    step, elapsed_before = 0, 0.0
    if resumed:
        init_steps = int(state.get("init_steps", 0))
        step = restore_training_state(state, model=net, optimizer=opt, ema=ema)
        elapsed_before = float(state.get("train_seconds", 0.0))
        if info.is_main:
            print(f"resumed {state_path} at step {step}", flush=True)
    if info.world_size > 1 and not (resumed and rng_restorable(state)):
        # the same initial weights everywhere, different chains and noise per process (a resume under another
        # process count restores no RNG: every rank drew the same batches)
        seed_everything(args.seed * 1000 + info.rank + (step * 7919 if resumed else 0))
    command = " ".join(sys.argv)
    config = {"model_config": model_cfg.to_dict(), "flow_config": flow_cfg.to_dict(), "command": command,
              "commands": command_history(out / "config.json", command) if resumed else [command],
              "train_chains": len(train_set), "val_chains": len(val_set) if val_set else 0, "params": net.num_parameters()}
    plain_args = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}
    out.mkdir(parents=True, exist_ok=True)  # only once data, model and optimizer are built: a bad input leaves no run
    if info.is_main:
        write_json(out / "config.json", {**config, "args": plain_args, "processes": info.world_size})
        print(f"{net.num_parameters()} parameters, {config['train_chains']} train / {config['val_chains']} val chains, "
              f"device {device}, {info.world_size} process(es)", flush=True)

    # The default secondary-structure prior at sampling draws from the training chains' labels (`ss.draw_ss_labels`).
    library = {"ss_library": train_set.ss_strings()} if model_cfg.ss_condition else {}

    def save() -> None:  # every rank: gathers their RNG states
        extra = {"model_config": model_cfg.to_dict(), "flow_config": flow_cfg.to_dict(), "init_steps": init_steps,
                 "train_seconds": elapsed_before + time.time() - start, "chains": str(Path(args.chains).resolve()),
                 "data": _chain_identity(data),
                 "run_options": {k: getattr(args, k) for k in RUN_OPTIONS}}
        state = training_state(model=net, step=step, optimizer=opt, ema=ema, **extra)
        if not info.is_main:
            return
        save_checkpoint(state_path, state)
        save_checkpoint(out / "model.pt", {"ema": {k: v.float() for k, v in ema.state_dict()["shadow"].items()},
                                           "step": step, "total_steps": init_steps + step, **config, **library})

    log = CSVLogger(out / "log.csv", resume_step=step if resumed else None) if info.is_main else None
    last_ckpt = time.time()
    residues, t_log = 0, time.time()
    net.train()
    # DDP averages the gradients; self-conditioning makes an extra no-grad call on some steps of some ranks, so no
    # per-call buffer broadcast, and parameters a step leaves unused are allowed
    model = distributed.wrap(net, broadcast_buffers=False, find_unused_parameters=True)
    sync_every = 1 if info.world_size == 1 else args.log_every  # steps between rank 0's shared time decisions
    interrupted = False
    with stop_requests() as requests:
        while True:
            if args.max_steps is not None and step >= args.max_steps:
                break
            if step % sync_every == 0:  # any process's Ctrl-C or SIGTERM stops all of them here; they save below
                stop, save_now, interrupted = decide(time.time() - start > args.max_seconds,
                                                     time.time() - last_ckpt > args.ckpt_seconds, requests,
                                                     info.world_size, device)
                if save_now:
                    save()
                    last_ckpt = time.time()
                if stop:
                    break
            lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
            for group in opt.param_groups:
                group["lr"] = lr
            b = train_set.batch(train_set.sample_chains(args.batch_residues, length_balance=args.length_balance))
            loss, parts = training_loss(model, {"rot": b["rot"], "trans": b["trans"]}, b["batch"], b["residue_index"],
                                        flow_cfg, ss=b["ss"], amp=device.type == "cuda")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            if not math.isfinite(float(grad_norm)):  # the averaged gradients: every rank stops alike
                raise UserError(f"training diverged: loss {float(loss)}, gradient norm {float(grad_norm)} at step "
                                f"{step} (a lower --lr?); {out} keeps its last checkpoint, if one was saved")
            opt.step()
            ema.update(net)
            step += 1
            residues += b["batch"].shape[0]
            validate = val_set is not None and step % args.val_every == 0
            if step % args.log_every == 0 or validate:  # every rank: the logged numbers are over all of them
                now = time.time()
                logged = {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}, "residues": residues}
                logged = distributed.mean_over_ranks(logged, list(logged))
                residues_per_s = logged.pop("residues") * info.world_size / (now - t_log)
                if info.is_main:
                    row = {"step": step, "seconds": round(elapsed_before + now - start, 1), **logged,
                           "grad_norm": float(grad_norm), "lr": lr, "residues_per_s": round(residues_per_s, 1),
                           "val_loss": ""}
                    if validate:
                        net.eval()
                        row["val_loss"] = validation_loss(net, val_set, flow_cfg, args.batch_residues, device)
                        net.train()
                    log.log(**row)
                    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                          flush=True)
                residues, t_log = 0, time.time()  # after validation: its time is not training throughput
    save()
    if info.is_main:
        log.close()
        print(f"done: step {step}, {time.time() - start:.0f} s this call; EMA weights in {out / 'model.pt'}", flush=True)
    del model  # before cleanup (see there)
    distributed.cleanup()
    if interrupted:  # saved above: exit as interrupted (130, SIGTERM 143); re-running the command resumes
        raise interruption(requests)
    return out / "model.pt"


def main(argv: list[str] | None = None) -> int:
    from sciddiff.cli import run_command

    return run_command(train, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
