#!/bin/bash
# Submit the chunked segmentation of AFFINITIES to Slurm: split, then per-chunk job arrays and
# whole-volume jobs, each waiting for the one before (--dependency=afterok). All outputs go to
# WORKDIR (created; use a fresh one), in this folder layout; the segmentation is
# WORKDIR/seg.h5:/seg and each job's log is in WORKDIR/logs/.
#
#   examples/slurm/submit.sh AFFINITIES WORKDIR
#   CHUNK_ZYX=64,512,512 HALO_ZYX=8,64,64 THRESHOLD=0.5 examples/slurm/submit.sh affs.h5:/affs run1
#
#   split (1 job) -> watershed (array) -> offsets -> edges (array) -> stitch -> relabel (array) -> merge
#
# Prints the job ids on stdout, one per line, in that order (the last one is the merge job). If a
# job fails, the jobs after it are cancelled (--kill-on-invalid-dep=yes). The em-* tools must be on
# PATH (sbatch passes the environment on); partition, account, time limit etc. come from sbatch's
# own variables (SBATCH_PARTITION, SBATCH_ACCOUNT, SBATCH_TIMELIMIT, ...).
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: submit.sh AFFINITIES WORKDIR  (env: CHUNK_ZYX, HALO_ZYX, THRESHOLD, UNTIL)" >&2
    exit 2
fi
affinities=$1
workdir=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export CHUNK_ZYX=${CHUNK_ZYX:-64,512,512} HALO_ZYX=${HALO_ZYX:-8,64,64} THRESHOLD=${THRESHOLD:-0.5}
export UNTIL=${UNTIL:-$THRESHOLD}

for tool in em-tile em-watershed em-agglomerate sbatch; do
    command -v "$tool" > /dev/null || { echo "submit.sh: error: $tool not found on PATH" >&2; exit 1; }
done
# the tools are run with the job's working folder as cwd: a relative input must not go stale there
case $affinities in /*) ;; *) affinities=$PWD/$affinities ;; esac

# the plan (reads the metadata only, writes nothing) checks the chunking and gives the array size
chunks=$(em-tile split "$affinities" --chunk "$CHUNK_ZYX" --halo "$HALO_ZYX" -o affchunks --list -q | wc -l)
if [[ $chunks -lt 1 ]]; then
    echo "submit.sh: error: no chunks planned for $affinities" >&2
    exit 1
fi
mkdir -p "$workdir/logs"
workdir=$(cd "$workdir" && pwd)

last=
submitted=()
submit() {  # submit JOB_NAME SBATCH_ARGS... SCRIPT ARGS...: the new job waits for the previous one
    local name=$1; shift
    local after=()
    [[ -n $last ]] && after=(--dependency="afterok:$last" --kill-on-invalid-dep=yes)
    if ! last=$(sbatch --parsable --chdir="$workdir" --job-name="$name" "${after[@]}" "$@"); then
        # a failed submission cancels the jobs this run already queued
        [[ ${#submitted[@]} -eq 0 ]] || scancel "${submitted[@]}" || true
        echo "submit.sh: error: sbatch failed for $name; cancelled ${submitted[*]:-nothing}" >&2
        exit 1
    fi
    last=${last%%;*}  # "id;cluster" on a multi-cluster set-up
    submitted+=("$last")
    echo "$last"
}
array=(--array="1-$chunks" --output="$workdir/logs/%x-%A_%a.out")
single=(--output="$workdir/logs/%x-%j.out")

submit em-split "${single[@]}" "$here/gather.sbatch" split "$affinities"
submit em-watershed "${array[@]}" "$here/chunks.sbatch" watershed affchunks.txt
submit em-offsets "${single[@]}" "$here/gather.sbatch" offsets
submit em-edges "${array[@]}" "$here/chunks.sbatch" edges affchunks.txt
submit em-stitch "${single[@]}" "$here/gather.sbatch" stitch
submit em-relabel "${array[@]}" "$here/chunks.sbatch" relabel affchunks.txt
submit em-merge "${single[@]}" "$here/gather.sbatch" merge
echo "submit.sh: $chunks chunks, 7 jobs; the segmentation will be $workdir/seg.h5:/seg" >&2
