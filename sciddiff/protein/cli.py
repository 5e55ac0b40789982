"""`sciddiff backbone ...`: sample, evaluate, prepare data for, and train the protein backbone flow model.

    sciddiff backbone sample --length 120 --num 8 --seed 0 --out designs/
    sciddiff backbone eval designs/ [--reference natural_pdbs/] [--json metrics.json]
    sciddiff backbone prepare --data ../shared/data --out .gpu/protein/chains.pt
    sciddiff backbone train --chains .gpu/protein/chains.pt --out runs/backbone --max-seconds 600

Heavy modules are imported inside the commands so that `sciddiff --help` stays fast.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from sciddiff.cli import (DefaultsHelpFormatter, UserError, check_output_path, idle_threads, load_or_fail,
                          print_note, torch_device)

MAX_LENGTH = 1000
VALID_LENGTH = 400  # the shipped model's samples measured valid up to here (docs/protein.md)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "backbone", help="protein backbone generation (flow matching on residue frames, SE(3)-equivariant denoiser)",
        description="Generate and evaluate protein backbones (N, CA, C, O) with an SE(3) flow-matching model.")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    fmt = DefaultsHelpFormatter

    s = sub.add_parser("sample", help="generate backbones and write them as PDB files",
                       description="Generate backbones; writes OUT/len<L>_seed<S>_<i>.pdb (poly-Gly N, "
                                   "CA, C, O) and OUT/samples.json. Sample i depends only on (seed, i, steps), not --num.")
    s.add_argument("--length", required=True, metavar="L|MIN-MAX",
                   help="residues per backbone, or a range: each backbone's length drawn uniformly from MIN..MAX "
                        "(seeded by --seed and its index)")
    s.add_argument("--num", type=int, default=1, help="number of backbones (default: 1)")
    s.add_argument("--seed", type=int, default=0, help="random seed; same seed, same backbones (default: 0)")
    s.add_argument("--out", required=True, help="output folder (created if missing)")
    s.add_argument("--steps", type=int, default=None, help="Euler steps (default: the checkpoint's, 50)")
    s.add_argument("--rot-rate", type=float, default=None,
                   help="rate of the exponential rotation schedule (FrameFlow: 10; default: the checkpoint's, 20 for "
                        "the shipped model); higher settles residue orientations earlier: more helix and strand")
    s.add_argument("--noise-scale", type=float, default=None,
                   help="sampling temperature, the std of the translation prior (default: the checkpoint's, 1.0); "
                        "0.8 gives more helix and more compact chains")
    s.add_argument("--langevin-eta", type=float, default=None,
                   help="strength of the Langevin term on translations (stochastic low-temperature sampling; "
                        "default: the checkpoint's, 1.0); 0 = the deterministic ODE")
    s.add_argument("--langevin-temperature", type=float, default=None,
                   help="temperature of that term: 1 keeps the model's distribution, below 1 sharpens it toward its "
                        "modes: more helix and strand (default: the checkpoint's, 0.1)")
    s.add_argument("--compactness", type=float, default=None,
                   help="radius-of-gyration guidance: chains predicted more extended than natural proteins of their "
                        "length (Rg > 1.59 N^0.465 A) are pulled in with this strength during sampling (default: the "
                        "checkpoint's, 1.0); 0 = off")
    s.add_argument("--compactness-floor", type=float, default=None,
                   help="the same guidance's lower side: chains of --compactness-floor-length residues or more predicted "
                        "more compact than this fraction of that fit are pushed out to it (the model alone packs long chains too "
                        "densely; default: the checkpoint's, 0.9); 0 = off (one-sided guidance)")
    s.add_argument("--compactness-floor-length", type=int, default=None, metavar="N",
                   help="shortest chain that --compactness-floor applies to (default: the checkpoint's, 150; shorter "
                        "chains, which the model builds too extended, measured worse with it)")
    s.add_argument("--ss", default=None, metavar="natural|none|STRING",
                   help="secondary structure to build (models trained with it): 'natural' draws each backbone's helix/"
                        "strand/loop layout from a natural training chain of similar length, 'none' leaves it to the "
                        "model, or one string of H, E and L (or - or C) per residue, any case (a string that starts with "
                        "'-' is given as --ss=STRING); default: natural when the checkpoint supports it, else none")
    s.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    s.add_argument("--batch-size", type=int, default=16, help="backbones generated together (default: 16)")
    s.add_argument("--threads", type=int, default=None,
                   help="CPU threads: each batch's chains are sampled in this many groups concurrently, one thread each "
                        "(default: 2 when no other process is running on the two cores, else 1; on a busy 2-core "
                        "machine two threads measured 30x slower than one)")
    s.add_argument("--checkpoint", default=None, help="model.pt from `sciddiff backbone train` (default: shipped model)")
    s.add_argument("--overwrite", action="store_true", help="replace existing files of the same names")
    s.add_argument("--no-hbonds", action="store_true",
                   help="idealize peptide geometry only, without the relax's backbone H-bond term (see docs/protein.md)")
    s.add_argument("--no-idealize", action="store_true",
                   help="return the network's frames as they are, without the final restrained idealization of peptide geometry")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="metrics of a folder of backbones against natural chains",
                       description="Bond geometry, CA-CA distances, clashes, Ramachandran, DSSP, Rg and MMD to natural "
                                   "chains (with ideal-helix and random-walk baselines). Prints a table, writes JSON "
                                   "and PNG plots.")
    e.add_argument("dir", help="folder of backbones: PDB or mmCIF files (.pdb, .ent, .cif, optionally .gz)")
    e.add_argument("--reference", default=None,
                   help="folder of reference PDBs (default: the held-out natural chains of the test split, "
                        "length-matched to the samples)")
    e.add_argument("--json", default=None, help="metrics file (default: DIR/eval.json)")
    e.add_argument("--plots", default=None, help="folder for phi_psi.png and distances.png (default: DIR)")
    e.add_argument("--data", default=None, help="shared data folder (default: $SCIDDIFF_DATA or ../shared/data)")
    e.set_defaults(func=cmd_eval)

    p = sub.add_parser("prepare", help="preprocess natural chains into one tensor file for training",
                       description="Read the unbroken chains of DATA/proteins/manifest.tsv, split them by sequence "
                                   "cluster, add whole unbroken docking-protein chains to train, and save N/CA/C "
                                   "coordinates, lengths and split in one .pt file.")
    p.add_argument("--data", default=None, help="shared data folder ($SCIDDIFF_DATA or ../shared/data)")
    p.add_argument("--out", default=".gpu/protein/chains.pt", help="output tensor file (default: %(default)s)")
    p.add_argument("--split", default=None,
                   help="split.tsv to reuse, or to create if missing (default: the shipped data/protein/split.tsv)")
    p.add_argument("--new-split", action="store_true",
                   help="recompute the cluster split and write it to --split (required) once all chains are read")
    p.add_argument("--seed", type=int, default=0, help="seed of a new split (default: 0)")
    p.add_argument("--no-docking", action="store_true",
                   help="natural chains only (default: also whole unbroken chains of DATA/docking proteins, train only)")
    p.set_defaults(func=cmd_prepare)

    t = sub.add_parser("train", help="train (or resume) a model from a prepared tensor file", formatter_class=fmt,
                       description="Same as `python -m sciddiff.protein.train` (which needs no biopython).")
    from sciddiff.protein.config import add_training_arguments

    add_training_arguments(t)
    t.set_defaults(func=cmd_train)


def length_range(text: str) -> tuple[int, int]:
    """`--length L` or `MIN-MAX` -> (MIN, MAX), checked."""
    try:
        lo, hi = (int(v) for v in text.split("-")) if "-" in text.strip("-") else (int(text),) * 2
    except ValueError:
        raise UserError(f"--length must be a number of residues or a range MIN-MAX, got {text!r}") from None
    if not 5 <= lo <= hi <= MAX_LENGTH:
        raise UserError(f"--length must lie between 5 and {MAX_LENGTH} (MIN <= MAX), got {text}")
    return lo, hi


def sample_lengths(text: str, num: int, seed: int) -> list[int]:
    """`--length L` or `MIN-MAX` -> one length per sample; sample i's length depends on (seed, i) only."""
    lo, hi = length_range(text)
    if lo == hi:
        return [lo] * num
    import numpy as np

    return [int(np.random.default_rng([seed, i, 2]).integers(lo, hi + 1)) for i in range(num)]


def cmd_sample(args: argparse.Namespace) -> int:
    if args.ss is not None and args.ss.lower() in ("natural", "none"):  # the keywords in any case, as the strings
        args.ss = args.ss.lower()
    if args.num < 1 or args.batch_size < 1:
        raise UserError("--num and --batch-size must be >= 1")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    for option, value in (("--rot-rate", args.rot_rate), ("--noise-scale", args.noise_scale)):
        if value is not None and not (math.isfinite(value) and value > 0):  # `<= 0` alone lets nan through
            raise UserError(f"{option} must be a finite number > 0, got {value}")
    if any(v is not None and not 0 <= v <= 100 for v in (args.langevin_eta, args.langevin_temperature, args.compactness)):
        raise UserError("--langevin-eta, --langevin-temperature and --compactness must be between 0 and 100")
    if args.compactness_floor is not None and not 0 <= args.compactness_floor <= 1:
        raise UserError(f"--compactness-floor must be between 0 and 1, got {args.compactness_floor}")
    if args.compactness_floor_length is not None and args.compactness_floor_length < 0:
        raise UserError(f"--compactness-floor-length must be >= 0, got {args.compactness_floor_length}")
    lengths = sample_lengths(args.length, args.num, args.seed)
    if args.ss not in (None, "natural", "none") and len(set(length_range(args.length))) > 1:
        # said here for any --num: with one sample the drawn length would otherwise surface as a puzzling mismatch
        raise UserError("--ss: one secondary-structure string fits one length; give a single --length")
    device = torch_device(args.device)
    out = check_output_path(args.out, folder=True)
    names = [f"len{n}_seed{args.seed}_{i:03d}.pdb" for i, n in enumerate(lengths)]
    earlier = _earlier_samples(out)
    clash = [n for n in names if (out / n).exists()]
    if (clash or earlier) and not args.overwrite:
        what = (f"{out / clash[0]} exists" if clash else
                f"{out} holds an earlier run ({len(earlier)} backbones, samples.json)")
        raise UserError(f"{what}; pass --overwrite to replace it or another --out")

    import torch

    from sciddiff.protein.evaluate import PLOT_FILES, pdb_files
    from sciddiff.protein.frameflow import sample
    from sciddiff.protein.pdbio import write_backbone
    from sciddiff.protein.pretrained import DEFAULT_CHECKPOINT, load_model
    from sciddiff.protein.refine import IdealizeConfig
    from sciddiff.protein.ss import chain_labels, labels_to_string
    from sciddiff.train import progress, write_json

    if out.is_dir() and (foreign := [p.name for p in pdb_files(out) if p.name not in earlier and p.name not in names]):
        print_note(f"{out} also holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, not of a sample "
                   "run: `backbone eval` scores only the backbones samples.json lists")
    threads = idle_threads() if args.threads is None else args.threads
    torch.set_num_threads(threads)
    net, flow_cfg, meta = load_or_fail(lambda path: load_model(path, device), args.checkpoint or DEFAULT_CHECKPOINT,
                                       "backbone checkpoint")
    if _shipped(args.checkpoint or DEFAULT_CHECKPOINT) and max(lengths) > VALID_LENGTH:
        print_note(f"the shipped model learned from chains of 50-300 residues; above {VALID_LENGTH} its backbones "
                   "come out less often valid (CA-CA gaps; eval reports them)")
    conditional = bool(net.cfg.ss_condition)
    spec = args.ss if args.ss is not None else ("natural" if conditional and meta.get("ss_library") else "none")
    if spec != "none" and not conditional:
        raise UserError("--ss needs a checkpoint trained with secondary-structure conditioning (--ss-condition)")
    try:
        targets = chain_labels(spec, lengths, [(args.seed, i) for i in range(args.num)], meta.get("ss_library"))
    except ValueError as err:
        raise UserError(f"--ss: {err}") from None
    overrides = {"steps": args.steps, "rot_rate": args.rot_rate, "noise_scale": args.noise_scale,
                 "langevin_eta": args.langevin_eta, "langevin_temperature": args.langevin_temperature,
                 "compactness": args.compactness, "compactness_floor": args.compactness_floor,
                 "compactness_floor_min_length": args.compactness_floor_length}
    flow_cfg = replace(flow_cfg, **{k: v for k, v in overrides.items() if v is not None})
    steps = flow_cfg.steps
    idealize = False if args.no_idealize else IdealizeConfig(hbond_weight=0.0) if args.no_hbonds else IdealizeConfig()
    start = time.time()
    bar = progress(total=args.num * steps, desc="sampling", unit="backbone-step")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".sampling-*"):  # a run killed outright (SIGKILL) left its staging folder
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".sampling-", dir=out))  # moved into place once all are written
    try:
        for first in range(0, args.num, args.batch_size):
            idx = list(range(first, min(args.num, first + args.batch_size)))

            def ticking(steps_iter, n=len(idx)):
                for item in steps_iter:
                    bar.update(n)  # counted as the step starts: the sampler returns from inside its last step
                    yield item

            backbones = sample(net, [lengths[i] for i in idx], flow_cfg, steps=steps,
                               seeds=[(args.seed, i) for i in idx], device=device, progress=ticking,
                               idealize=idealize, ss=None if targets is None else [targets[i] for i in idx],
                               workers=threads)
            for i, bb in zip(idx, backbones):
                write_backbone(staging / names[i], bb)
    except BaseException:  # interrupted or failed: no partial set of files, and an earlier run stays as it was
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    finally:
        bar.close()
    for name in names:
        os.replace(staging / name, out / name)
    staging.rmdir()
    # --overwrite: the earlier run is replaced as a whole, its evaluation (which described it) too
    for name in (set(earlier) - set(names)) | ({"eval.json", *PLOT_FILES} if earlier or clash else set()):
        (out / name).unlink(missing_ok=True)
    seconds = time.time() - start
    lo, hi = length_range(args.length)
    # "length" is what was asked: a range stays a range, also when --num 1 draws one length
    info = {"length": lo if lo == hi else args.length, "lengths": lengths, "num": args.num,
            "seed": args.seed, "steps": steps,
            "rot_rate": flow_cfg.rot_rate, "noise_scale": flow_cfg.noise_scale, "langevin_eta": flow_cfg.langevin_eta,
            "langevin_temperature": flow_cfg.langevin_temperature, "compactness": flow_cfg.compactness,
            "compactness_floor": flow_cfg.compactness_floor,
            "compactness_floor_min_length": flow_cfg.compactness_floor_min_length,
            "device": str(device), "threads": threads,
            "checkpoint": str(Path(args.checkpoint or DEFAULT_CHECKPOINT).resolve()),  # eval reads it from anywhere
            "checkpoint_step": meta.get("total_steps", meta.get("step")),
            "idealized": not args.no_idealize, "hbond_relax": not (args.no_idealize or args.no_hbonds), "ss": spec,
            "seconds": round(seconds, 2), "files": names}
    if targets is not None:
        info["ss_targets"] = {n: labels_to_string(t) for n, t in zip(names, targets)}
    write_json(out / "samples.json", info)
    print(f"wrote {args.num} backbone{'s' if args.num > 1 else ''} of {args.length} residues to {out}/ in "
          f"{seconds:.1f} s")
    return 0


def _shipped(checkpoint: str | os.PathLike) -> bool:
    """Whether a checkpoint is one the project ships (named by any path), the secondary-structure model too."""
    from sciddiff.protein.pretrained import DEFAULT_CHECKPOINT

    shipped = (DEFAULT_CHECKPOINT, DEFAULT_CHECKPOINT.with_name("backbone_flow_ss.pt"))
    return Path(checkpoint).resolve() in {p.resolve() for p in shipped}


def _sample_record(folder: Path) -> dict:
    """A sample run's samples.json ({} where there is none or it cannot be read)."""
    try:
        record = json.loads((folder / "samples.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _earlier_samples(out: Path, record: dict | None = None) -> list[str]:
    """The backbone files of an earlier `sample` run in `out` (listed in its samples.json, or `record` read from it),
    [] if none."""
    files = (_sample_record(out) if record is None else record).get("files") or []
    return [f for f in files if isinstance(f, str) and Path(f).name == f]


def cmd_eval(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder")
    from sciddiff.protein.evaluate import PLOT_FILES, evaluate, format_report, pdb_files, read_folder, unbonded
    from sciddiff.train import write_json

    json_path = check_output_path(args.json or folder / "eval.json", option="--json")
    if args.plots:
        check_output_path(args.plots, folder=True, option="--plots")
    plots = Path(args.plots or folder)
    if any(json_path.resolve() == (plots / name).resolve() for name in PLOT_FILES):
        raise UserError(f"--json {json_path} is one of the plots eval writes to {plots}; name another file")
    record = _sample_record(folder)
    listed = _earlier_samples(folder, record)  # a sample run's own backbones, not other PDB files beside them
    if not listed and (folder / "samples.json").is_file():
        print_note(f"{folder}/samples.json lists no backbone files (damaged or not a sample run's): every PDB and "
                   f"mmCIF file in {folder} is scored")
    if missing := [name for name in listed if not (folder / name).is_file()]:
        print_note(f"{len(missing)} of the {len(listed)} backbones {folder}/samples.json lists are not there "
                   f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}): scored without them")
    if listed and (others := [p.name for p in pdb_files(folder) if p.name not in listed]):
        print_note(f"{folder} holds {len(others)} PDB file(s) besides the {len(listed)} its samples.json lists "
                   f"({', '.join(others[:3])}{' ...' if len(others) > 3 else ''}): left out")
    try:
        names, backbones, gaps = read_folder(folder, set(listed) if listed else None)
    except ValueError as err:
        raise UserError(str(err)) from None
    if len(backbones) < 2:
        raise UserError(f"{folder} has {len(backbones)} backbone PDB file(s); eval needs at least 2")
    if broken := [f"{n} ({int(g.sum())})" for n, g in zip(names, gaps) if g.any()]:
        more = " ..." if len(broken) > 5 else ""
        print_note(f"chain gaps (residue numbers skipping, C-N over 2 A) in {', '.join(broken[:5])}{more}: "
                   "left out of the bond, CA-CA and Ramachandran metrics")
    if stretched := [n for n, b, g in zip(names, backbones, gaps) if (unbonded(b) & ~g).any()]:
        more = " ..." if len(stretched) > 5 else ""
        print_note(f"consecutively numbered residues over 2 A apart (C-N) in {', '.join(stretched[:5])}{more}: "
                   "scored as peptide bonds (a broken chain); a file renumbered over missing residues should keep "
                   "their numbers")
    reference, ref_name, ref_gaps = None, "natural test split", None
    if not args.reference and isinstance(own := record.get("checkpoint"), str) and not _shipped(own):
        print_note(f"the default reference is the shipped split's test chains; {own} may have trained on some of "
                   "them (its own split's held-out chains: --reference DIR)")
    if args.reference:
        if not Path(args.reference).is_dir():
            raise UserError(f"--reference {args.reference} is not a folder")
        try:
            _, reference, ref_gaps = read_folder(args.reference)
        except ValueError as err:
            raise UserError(f"--reference: {err}") from None
        if len(reference) < 2:
            raise UserError(f"--reference {args.reference} has fewer than 2 PDB files")
        ref_name = str(args.reference)
    plots.mkdir(parents=True, exist_ok=True)
    # plots are drawn into a staging folder and the earlier results replaced only once the new ones exist: a failed
    # or interrupted eval leaves the earlier eval.json and plots as they were, never new plots beside an old eval.json
    with tempfile.TemporaryDirectory(prefix=".eval-", dir=plots) as staging:
        try:
            result = evaluate(backbones, names, reference, ref_name, data=args.data, plots=Path(staging), gaps=gaps,
                              reference_gaps=ref_gaps)
        except FileNotFoundError as err:
            raise UserError(f"{err} (or pass --reference DIR)") from None
        json_path.unlink(missing_ok=True)
        for name in PLOT_FILES:
            os.replace(Path(staging) / name, plots / name)
    result["plots"] = [str(plots / Path(p).name) for p in result["plots"]]
    if (folder / "samples.json").is_file():
        from sciddiff.protein.evaluate import target_agreement

        result["ss_targets"] = target_agreement(result["chains"], record.get("ss_targets") or {})
    write_json(json_path, result)
    print(format_report(result))
    print(f"metrics: {json_path}; plots: {', '.join(result['plots'])}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from sciddiff.protein.data import SPLIT_FILE, data_root, prepare_chains

    root = data_root(args.data)
    if not (root / "proteins" / "manifest.tsv").is_file():
        raise UserError(f"no proteins/manifest.tsv under {root} (pass --data)")
    if args.new_split and not args.split:  # the default is the shipped, tracked split: never replaced by accident
        raise UserError(f"--new-split needs --split FILE to write to (the default {SPLIT_FILE} is the shipped split)")
    out = check_output_path(args.out, option="--out")
    split = check_output_path(args.split, option="--split") if args.split else SPLIT_FILE
    if out.resolve() == split.resolve():
        raise UserError(f"--out and --split are the same file {out}")
    try:
        data = prepare_chains(root, out, split, seed=args.seed, docking=not args.no_docking, new_split=args.new_split)
    except ValueError as err:  # a malformed manifest or split file, or no usable chain: nothing was written
        raise UserError(str(err)) from None
    counts = [int((data["split"] == i).sum()) for i in range(3)]
    print(f"{len(data['ids'])} chains, {int(data['lengths'].sum())} residues -> {args.out} "
          f"(train/val/test {counts[0]}/{counts[1]}/{counts[2]} chains; split {split})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from sciddiff.protein.train import train

    if not Path(args.chains).is_file():
        raise UserError(f"--chains {args.chains} not found (make it with `sciddiff backbone prepare`)")
    train(args)
    return 0
