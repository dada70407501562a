#!/usr/bin/env bash
# Issue 29's first GPU measurements, one device call: which step mode makes a round fastest, and does it train the same.
#
#   OUT=... bash benchmarks/gpu_step_check.sh          (on the device: $OUT is the folder that comes back)
#
# 0. With TEACHER_MINUTES, a missing teacher is trained first (the 200-epoch recipe at batch 512, its epochs fitted
#    to those minutes) and copied to $OUT with its JSON: work trees are laid anew between sessions, so a
#    git-ignored teacher does not outlive the session that fetched it. Commit the one that comes back.
# 1. The tests that need CUDA (unless TESTS=0): a round never makes the host wait for the GPU (CUDA's sync debug
#    mode); a synthesis step and a student replayed as CUDA graphs, inductor's compiled steps and labelling in each
#    step train as the eager default does.
# 2. The step modes (MODES: eager, CUDA graphs, inductor) on the published pair (PAIR, a random teacher: speed does
#    not depend on weights), each with every method setting in METHODS (labelling ahead on and off, the default
#    round and k = 40), timed by `benchmarks.gpu` at the same student work (UPDATES) after WARM_UP rounds run apart:
#    milliseconds per round, GPU busy % and the seconds before the first round (no export: only the rounds count
#    here). modes.json is written after each row; summary.txt compares each mode with eager at the same settings.
# Environment: OUT (required), DATA (.data/cifar10-jpeg.tar.gz, read only to train the teacher), TEACHER (benchmarks/teachers/cifar10_wrn_40_2.pth;
# empty: none), TEACHER_MINUTES (unset: a missing teacher is an error), TEACHER_RECIPE (`benchmarks.cifar10
# teacher`'s arguments), TESTS (1), MODES (off,cuda-graphs,inductor), PAIR (wrn_40_2@32:wrn_16_1), METHODS (one
# JSON object a line), UPDATES (240), WARM_UP (2), EXTRA (more arguments for benchmarks.gpu, e.g. "--device cpu").
set -u
: "${OUT:?set OUT to the folder for the results}"
DATA=${DATA:-.data/cifar10-jpeg.tar.gz}
TEACHER=${TEACHER-benchmarks/teachers/cifar10_wrn_40_2.pth}
TEACHER_MINUTES=${TEACHER_MINUTES:-}
TEACHER_RECIPE=${TEACHER_RECIPE:-"--arch wrn_40_2 --epochs 200 --batch-size 512 --lr 0.4 --device cuda"}
TESTS=${TESTS:-1}
MODES=${MODES:-off,cuda-graphs,inductor}
PAIR=${PAIR:-wrn_40_2@32:wrn_16_1}
METHODS=${METHODS:-'{}
{"label_ahead": false}
{"student_steps": 40}
{"student_steps": 40, "label_ahead": false}'}
UPDATES=${UPDATES:-240}
WARM_UP=${WARM_UP:-2}
EXTRA=${EXTRA:-}
mkdir -p "$OUT"

if [ -n "$TEACHER" ] && [ ! -e "$TEACHER" ]; then  # only the teacher's training reads the data
    if [ -z "$TEACHER_MINUTES" ]; then
        echo "error: $TEACHER not found (carry it, set TEACHER, or set TEACHER_MINUTES to train it first)" >&2
        exit 2
    fi
    [ -e "$DATA" ] || { echo "error: $DATA not found (carry it, or set DATA)" >&2; exit 2; }
    mkdir -p "$(dirname "$TEACHER")"
    # shellcheck disable=SC2086  # TEACHER_RECIPE is a list of arguments
    python3 -m benchmarks.cifar10 teacher $TEACHER_RECIPE --minutes "$TEACHER_MINUTES" --data "$DATA" \
        --out "$TEACHER" > "$OUT/teacher.log" 2>&1
    status=$?
    tail -n 3 "$OUT/teacher.log"
    [ $status -eq 0 ] && [ -e "$TEACHER" ] || { echo "error: the teacher's training failed (exit $status)" >&2; exit 1; }
    cp "$TEACHER" "${TEACHER%.pth}.json" "$OUT/"
fi

if [ "$TESTS" != 0 ]; then
    python3 -m pytest -q -p no:cacheprovider \
        "tests/test_methods.py::test_a_round_of_the_default_method_never_makes_the_host_wait_for_the_gpu" \
        "tests/test_distill.py::test_on_cuda_each_step_mode_trains_as_the_eager_default" \
        tests/test_cuda_graphs.py > "$OUT/cuda_tests.txt" 2>&1
    tail -n 12 "$OUT/cuda_tests.txt"
fi

method_args=()
while IFS= read -r method; do
    [ -n "$method" ] && method_args+=(--method "$method")
done <<< "$METHODS"
# shellcheck disable=SC2086  # EXTRA is a list of arguments
python3 -m benchmarks.gpu --pairs "$PAIR" --compile "$MODES" --student-updates "$UPDATES" --warm-up "$WARM_UP" \
    --no-export "${method_args[@]}" --out "$OUT/modes.json" $EXTRA > "$OUT/modes.log" 2>&1
status=$?
sed -n '/^compared with eager/,$p' "$OUT/modes.log" | tee "$OUT/summary.txt"
[ $status -eq 0 ] || { echo "error: the step modes' benchmark failed (exit $status): see modes.log" >&2; exit 1; }
