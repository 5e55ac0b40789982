#!/bin/bash
# Make, on the CPU, every file the one-call GPU run (.gpu/run_all.sh) carries; files already there are kept.
#   bash .gpu/prepare.sh            # ~15-25 min on 2 cores from nothing; seconds when all exist
# Shared data: $SCIDDIFF_DATA or ../shared/data. Writes (git-ignored):
#   .gpu/policy/pusht_completed_{state,image}.npz   human demos completed by the scripted planner (docs/policy.md)
#   .gpu/policy/dagger_*_state.npz                  the corrective (DAgger) stores found under runs/dagger*/ (optional)
#   .gpu/protein/chains.pt  .gpu/dock/train.pt
# then prints the device call. Carry the three folders (the tool takes at most 8 paths, 64 MiB with the ~28 MB of
# tracked files): carry=[".gpu/policy", ".gpu/protein", ".gpu/dock"].
set -eu
cd "$(dirname "$0")/.."
DATA=${SCIDDIFF_DATA:-../shared/data}
ZARR=$DATA/pusht/pusht_cchi_v7_replay.zarr
mkdir -p .gpu/policy .gpu/protein .gpu/dock runs/policy

completed() {  # completed() NPZ OBS_TYPE ZARR_OUT [--no-images]
    [ -f "$1" ] && return
    if [ ! -d "$3" ]; then  # built under another name until whole; a stopped run continues after its episodes
        sciddiff policy demos --complete "$ZARR" --out "$3.part" --max-steps 150 "${@:4}"
        mv "$3.part" "$3"
    fi
    sciddiff policy prepare --zarr "$3" --obs-type "$2" --out "$1"
}
completed .gpu/policy/pusht_completed_state.npz state runs/policy/completed.zarr --no-images
completed .gpu/policy/pusht_completed_image.npz image runs/policy/completed_img.zarr
for store in runs/dagger*/dagger_*.zarr; do
    [ -d "$store" ] || continue
    npz=.gpu/policy/$(basename "$store" .zarr)_state.npz
    [ -f "$npz" ] || sciddiff policy prepare --zarr "$store" --obs-type state --out "$npz"
done
[ -f .gpu/protein/chains.pt ] || sciddiff backbone prepare --data "$DATA" --out .gpu/protein/chains.pt
[ -f .gpu/dock/train.pt ] || python -m sciddiff.dock.data --data "$DATA/docking" \
    --split "$DATA/docking/splits/train.txt" --out .gpu/dock/train.pt --conformers 2
# Optional, unmeasured: SYNTHETIC=N adds N synthetic complexes (sciddiff.dock.synthetic, DiffDock-L's extra pockets) to
# the training split in .gpu/dock/train_synthetic.pt; train on it with DOCK_DATA=.gpu/dock/train_synthetic.pt, and
# carry that file instead of the folder (carry=[".gpu/policy", ".gpu/protein", ".gpu/dock/train_synthetic.pt"]:
# both dock files together pass the 64 MiB limit).
if [ -n "${SYNTHETIC:-}" ] && [ ! -f .gpu/dock/train_synthetic.pt ]; then
    rm -rf runs/synthetic/gpu
    python -m sciddiff.dock.synthetic --proteins "$DATA/proteins" --out runs/synthetic/gpu --complexes "$SYNTHETIC" --seed 1
    { cat "$DATA/docking/splits/train.txt"; sed "s|^|$PWD/runs/synthetic/gpu/|" runs/synthetic/gpu/splits/synthetic.txt; } \
        > runs/synthetic/gpu/train_synthetic.txt  # absolute ids: a split may mix data roots
    python -m sciddiff.dock.data --data "$DATA/docking" --split runs/synthetic/gpu/train_synthetic.txt \
        --out .gpu/dock/train_synthetic.pt --conformers 2
fi

du -ch .gpu/policy/*.npz .gpu/protein/chains.pt .gpu/dock/train.pt | tail -n 1
echo "device call: carry=[\".gpu/policy\", \".gpu/protein\", \".gpu/dock\"], timeout ~590 s, command:"
if ls .gpu/policy/dagger_*_state.npz > /dev/null 2>&1; then
    echo '  POLICY_STATE_EXTRA="--extra-data .gpu/policy/dagger_*_state.npz" OUT=$OUT bash .gpu/run_all.sh 480'
else
    echo '  OUT=$OUT bash .gpu/run_all.sh 480'
fi
