"""report.json, report.md and the figures a person looks at after a run."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _pct(v: float | None) -> str:
    return "not measured" if v is None else f"{100 * v:.2f} %"


def plot_accuracy(history: list[dict], path: Path) -> None:
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if any("accuracy" in h for h in history):
        ax.plot(steps, [h.get("accuracy") for h in history], marker="o", label="student top-1 (test, reporting only)")
    ax.plot(steps, [h["selection_score"] for h in history], marker=".", linestyle="--", label="selection score")
    ax.set_xlabel("step")
    ax.set_ylabel("fraction")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, class_names: list[str], title: str, path: Path) -> None:
    k = len(class_names)
    size = min(12, 3 + 0.35 * k)
    fig, ax = plt.subplots(figsize=(size, size))
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 20:
        ax.set_xticks(range(k), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(k), class_names, fontsize=7)
        for i in range(k):
            for j in range(k):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_samples(pixels: torch.Tensor, classes: torch.Tensor, class_names: list[str], path: Path) -> None:
    """Up to 32 images as one mosaic on one set of axes, each titled with the teacher's class: one image drawn
    once, since 32 subplots laid out by tight_layout cost every run's finish several times as much."""
    n, cols = min(32, len(pixels)), 8
    rows = (n + cols - 1) // cols
    _, h, w = pixels.shape[1:]
    gap_x, gap_y = max(2, w // 8), max(2, h // 3)  # room between tiles, and above each for its title
    tiles = pixels[:n].permute(0, 2, 3, 1).clamp(0, 1).numpy()
    grey = tiles.shape[-1] == 1
    mosaic = np.ones((rows * (h + gap_y), cols * (w + gap_x), tiles.shape[-1]), dtype=np.float32)
    fig, ax = plt.subplots(figsize=(cols * 1.3, rows * 1.5))
    for i in range(n):
        top, left = (i // cols) * (h + gap_y) + gap_y, (i % cols) * (w + gap_x)
        mosaic[top:top + h, left:left + w] = tiles[i]
        ax.text(left + w / 2, top - 1, class_names[int(classes[i])][:12], ha="center", va="bottom", fontsize=7)
    ax.imshow(mosaic[..., 0] if grey else mosaic, cmap="gray" if grey else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.axis("off")
    fig.suptitle("synthetic images, titled with the teacher's class", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gains(report: dict) -> list[str]:
    """What the user gained, in the first lines of report.md and of the CLI summary: size, compute and the
    measured speed-up; a warning where the student is slower than its teacher."""
    t, s = report["teacher"], report["student"]
    lines = [
        f"Parameters {s['params']:,} / {t['params']:,} ({100 * s['params'] / t['params']:.2f} %), "
        f"MACs {s['macs'] / 1e6:,.2f} M / {t['macs'] / 1e6:,.2f} M ({100 * s['macs'] / t['macs']:.2f} %)."
    ]
    if report.get("params_ratio_why"):
        lines.append(f"Smaller than asked: {report['params_ratio_why']}.")
    deployment = report.get("deployment") or {}
    speed = deployment.get("cpu_speed")
    if not speed:
        lines.append(f"Speed-up not measured ({'the export check failed' if 'error' in deployment else 'no ONNX export'}).")
        return lines
    if not speed.get("speedup"):
        lines.append(f"Speed-up not measured: {teacher_onnx_problem(deployment)}.")
        return lines
    lines.append("Speed-up over the teacher, ONNX Runtime on the CPU: "
                 + ", ".join(f"{v:.2f}× at batch {bs}" for bs, v in speed["speedup"].items()) + ".")
    slower = [bs for bs, v in speed["speedup"].items() if v < 1]
    if slower:
        lines.append(f"WARNING: the student is slower than its teacher at batch {', '.join(slower)} "
                     f"(MACs ratio asked: {report.get('macs_ratio', report['requested_ratio']):g}, "
                     f"student family {s['arch']}); lower --macs-ratio or use --student auto.")
    return lines


def teacher_onnx_problem(deployment: dict) -> str:
    error = ((deployment.get("exporters") or {}).get("teacher") or {}).get("error", "no teacher file")
    return f"the teacher has no ONNX file ({error})"


def exporter_notes(deployment: dict) -> list[str]:
    """One line for each file an exporter other than the torch.export-based one wrote, and for a student
    without its torch.export program."""
    lines = []
    if "error" in (deployment.get("program") or {}):
        lines.append(f"No `student.pt2`: {deployment['program']['error']}.")
    for role, note in (deployment.get("exporters") or {}).items():
        if note.get("exporter_fallback"):
            lines.append(f"`{role}.onnx` came from the TorchScript exporter: the torch.export-based one failed "
                         f"({note['exporter_fallback']}).")
    return lines


def markdown(report: dict) -> str:
    t, s = report["teacher"], report["student"]
    lines = [
        f"# Compression report: {t['arch']} → {s['arch']} student",
        "",
        *[f"**{line}**" if line.startswith("WARNING") else line for line in gains(report)],
        "",
        f"Method `{report['method']}` (preset `{report['preset']}`), {report['steps']} steps "
        f"({report['student_updates']} student updates, batch {report['batch_size']}), "
        f"{report['wall_seconds']:.0f} s on {report['device']}.",
        "",
        "| | parameters | M MACs | top-1 full | top-1 test 20 % | top-1 test 10 % |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in (("teacher", t), ("student", s)):
        a = m["accuracy"]
        lines.append(
            f"| {name} | {m['params']:,} | {m['macs'] / 1e6:.1f} | {_pct(a['full'])} | {_pct(a['test_20'])} "
            f"| {_pct(a['test_10'])} |"
        )
    started = " The student started from its teacher's strongest channels and blocks." if s.get("init") == "teacher" else ""
    lines += ["", f"Student / teacher parameters: **{100 * report['ratio']:.2f} %** "
                  f"(asked for {100 * report['requested_ratio']:.0f} %).{started}"]
    if s["accuracy"]["full"] is None:
        lines += ["", "Accuracy was **not measured**: the run had no evaluation data (pass `--dataset`)."]
    elif t["accuracy"]["full"]:
        lines += [f"Student reaches **{100 * s['accuracy']['full'] / t['accuracy']['full']:.1f} %** of the teacher's accuracy."]
    sel = report["selection"]
    lines += [
        "",
        f"Model selection: {sel['criterion']}; best at step {sel['best_step']} (score {sel['score']:.3f}). "
        "Test data was used for reporting only.",
    ]
    if report.get("deployment"):
        lines += deployment_markdown(report["deployment"])
    lines += ["", "![accuracy](accuracy.png)", ""]
    if (report.get("figures") or {}).get("confusion"):
        lines += [f"![confusion]({f})" for f in report["figures"]["confusion"]] + [""]
    lines += ["![samples](samples.png)", ""]
    return "\n".join(lines)


def deployment_markdown(dep: dict) -> list[str]:
    if "error" in dep:
        return ["", "## Deployment", "", f"**A check after training failed:** {dep['error']}", "",
                "The trained student is kept as `student.pt2` (torch.export), `student.safetensors` and "
                "`checkpoints/best.pt`; `python -m export onnx` can retry the export from them."]
    v = dep["verification"]
    teacher_diff = v.get("teacher_max_abs_logit_diff")
    verified = (f"`student.onnx` and `teacher.onnx` verified against PyTorch with ONNX Runtime at batch sizes "
                f"{v['batch_sizes']}: max |Δlogit| {v['student_max_abs_logit_diff']:.1e} (student), "
                f"{teacher_diff:.1e} (teacher).") if teacher_diff is not None else (
                f"`student.onnx` verified against PyTorch with ONNX Runtime at batch sizes {v['batch_sizes']}: max "
                f"|Δlogit| {v['student_max_abs_logit_diff']:.1e}. No speed comparison: {teacher_onnx_problem(dep)}.")
    lines = ["", "## Deployment", "", f"{verified} INT8 is calibrated on generator samples: no real data.",
             *[line for note in exporter_notes(dep) for line in ("", note)], "",
             "| variant | file | size | top-1 full (ONNX Runtime) |", "|---|---|---:|---:|"]
    for name, info in dep["variants"].items():
        lines.append(f"| student {name} | `{info['file']}` | {info['bytes'] / 1e3:.0f} kB | {_pct(info['accuracy'])} |")
    if dep.get("teacher_file"):
        lines.append(f"| teacher fp32 | `{dep['teacher_file']['file']}` | {dep['teacher_file']['bytes'] / 1e3:.0f} kB | |")
    return lines + speed_markdown(dep["cpu_speed"])


def speed_markdown(speed: dict) -> list[str]:
    lines = ["", f"CPU speed, fp32, ONNX Runtime, {speed['threads']} threads "
                 "(a short measurement; use `python -m export bench` for more):", ""]
    if not speed.get("teacher"):
        lines += ["| batch | student p50 | student img/s |", "|---:|---:|---:|"]
        return lines + [f"| {bs} | {s['p50_ms']:.2f} ms | {s['images_per_second']:.0f} |" for bs, s in speed["student"].items()]
    lines += ["| batch | student p50 | teacher p50 | student img/s | teacher img/s | speed-up |",
              "|---:|---:|---:|---:|---:|---:|"]
    for bs, s in speed["student"].items():
        t = speed["teacher"][bs]
        lines.append(f"| {bs} | {s['p50_ms']:.2f} ms | {t['p50_ms']:.2f} ms | {s['images_per_second']:.0f} | "
                     f"{t['images_per_second']:.0f} | {speed['speedup'][bs]:.2f}× |")
    return lines


def write_report(
    run_dir: Path,
    report: dict,
    confusions: dict[str, np.ndarray],
    sample_pixels: torch.Tensor,
    sample_classes: torch.Tensor,
    class_names: list[str],
) -> None:
    figures = {"accuracy": "accuracy.png", "samples": "samples.png", "confusion": []}
    plot_accuracy(report["history"], run_dir / "accuracy.png")
    plot_samples(sample_pixels, sample_classes, class_names, run_dir / "samples.png")
    for who, matrix in confusions.items():
        name = "confusion_full.png" if who == "student" else f"confusion_full_{who}.png"
        plot_confusion(matrix, class_names, f"{who}, full test split", run_dir / name)
        figures["confusion"].append(name)
    report["figures"] = figures
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    (run_dir / "report.md").write_text(markdown(report))
