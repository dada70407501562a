#!/usr/bin/env bash
# Issue 14's GPU target, one device call: what the KD step costs, and whether the step's fixes hold on CUDA.
#
#   OUT=... bash benchmarks/gpu_step_check.sh          (on the device: $OUT is the folder that comes back)
#
# 0. With TEACHER_MINUTES, a missing teacher is trained first (the 200-epoch recipe at batch 512, its epochs fitted
#    to those minutes) and copied to $OUT with its JSON: work trees are laid anew between sessions, so a
#    git-ignored teacher does not outlive the session that fetched it. Commit the one that comes back.
# 1. The tests that need CUDA: a round never makes the host wait for the GPU (CUDA's sync debug mode), and a
#    synthesis step and a student replayed as CUDA graphs train as the eager ones (skipped without a GPU).
# 2. The trial's milliseconds per round at k = 40 (benchmarks.cifar10_gpu, validation split, a few rounds) for:
#    the tree before the no-sync change, if carried as .before/ (`git archive 4369a80 compressor benchmarks | tar
#    -x -C .before`); this tree eagerly; and this tree with --cuda-graphs. Each JSON's trial.seconds_per_round is
#    the figure; summary.txt lists them.
# Environment: OUT (required), DATA (.data/cifar10-jpeg.tar.gz), TEACHER (benchmarks/teachers/cifar10_wrn_40_2.pth),
# TEACHER_MINUTES (unset: a missing teacher is an error), TEACHER_RECIPE (`benchmarks.cifar10 teacher`'s arguments),
# METHOD ('{"student_steps": 40, "generator_steps": 5}': the round the third lease tuned, and the same round in the
# tree before, whose default g was 5), EXTRA (more arguments for each trial, e.g. "--tiny --device cpu" for a dry run).
set -u
: "${OUT:?set OUT to the folder for the results}"
DATA=${DATA:-.data/cifar10-jpeg.tar.gz}
TEACHER=${TEACHER-benchmarks/teachers/cifar10_wrn_40_2.pth}  # empty: none (the trial trains one)
METHOD=${METHOD:-'{"student_steps": 40, "generator_steps": 5}'}
TEACHER_MINUTES=${TEACHER_MINUTES:-}
TEACHER_RECIPE=${TEACHER_RECIPE:-"--arch wrn_40_2 --epochs 200 --batch-size 512 --lr 0.4 --device cuda"}
EXTRA=${EXTRA:-}
ROOT=$(pwd)
[ -e "$DATA" ] || { echo "error: $DATA not found (carry it, or set DATA)" >&2; exit 2; }
DATA=$(realpath "$DATA")
mkdir -p "$OUT"
OUT=$(realpath "$OUT")  # the trials run from their own trees

if [ -n "$TEACHER" ] && [ ! -e "$TEACHER" ]; then
    if [ -z "$TEACHER_MINUTES" ]; then
        echo "error: $TEACHER not found (carry it, set TEACHER, or set TEACHER_MINUTES to train it first)" >&2
        exit 2
    fi
    mkdir -p "$(dirname "$TEACHER")"
    # shellcheck disable=SC2086  # TEACHER_RECIPE is a list of arguments
    python3 -m benchmarks.cifar10 teacher $TEACHER_RECIPE --minutes "$TEACHER_MINUTES" --data "$DATA" \
        --out "$TEACHER" > "$OUT/teacher.log" 2>&1
    status=$?
    tail -n 3 "$OUT/teacher.log"
    [ $status -eq 0 ] && [ -e "$TEACHER" ] || { echo "error: the teacher's training failed (exit $status)" >&2; exit 1; }
    cp "$TEACHER" "${TEACHER%.pth}.json" "$OUT/"
fi
[ -n "$TEACHER" ] && TEACHER=$(realpath "$TEACHER")

python3 -m pytest -q -p no:cacheprovider \
    "tests/test_methods.py::test_a_round_of_the_default_method_never_makes_the_host_wait_for_the_gpu" \
    tests/test_cuda_graphs.py > "$OUT/cuda_tests.txt" 2>&1
tail -n 12 "$OUT/cuda_tests.txt"

trial() {  # trial NAME TREE [ARGS...]: one timed trial from the source tree TREE
    local name=$1 tree=$2
    shift 2
    local teacher_args=()
    [ -n "$TEACHER" ] && teacher_args=(--teacher "$TEACHER")
    # shellcheck disable=SC2086  # EXTRA is a list of arguments
    (cd "$tree" && python3 -m benchmarks.cifar10_gpu --eval-on val --minutes 0.01 "${teacher_args[@]}" \
        --method "$METHOD" --data "$DATA" --work-dir "/tmp/step_check_$name" --out "$OUT/trial_$name.json" \
        $EXTRA "$@") > "$OUT/trial_$name.log" 2>&1
    echo "$name: exit $?, $(grep -m1 'ms per round' "$OUT/trial_$name.log")"
}

[ -d .before ] && trial before "$ROOT/.before"
trial eager "$ROOT"
trial graphs "$ROOT" --cuda-graphs

python3 - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("trial_*.json")):
    result = json.loads(path.read_text())
    trial, student = result.get("trial") or {}, result.get("student") or {}
    ms = 1000 * trial["seconds_per_round"] if "seconds_per_round" in trial else float("nan")
    print(f"{path.stem}: {ms:.0f} ms per round; device {result.get('device')}; cuda_graphs: {student.get('cuda_graphs')}")
EOF
