"""What a soak run comes to: the jobs' outcome, the record (JSON, for machines), its checks, and the summary for
people that render() prints."""
from __future__ import annotations

import json
import os
import platform
import re
from datetime import UTC, datetime

from benchmarks.soak.config import ATTACKS, MB, SoakConfig
from benchmarks.soak.disk import JobsDisk
from benchmarks.soak.harness import Soak
from benchmarks.soak.load import Attempt, classification_summary
from benchmarks.soak.memory import FrontMemory

# A job that failed with one of these (in its reason, or its disk full in the last lines of its log) failed from a
# fault the service is meant to ride out: a process killed under it, or a disk that filled up for a while.
SURVIVABLE_REASON = re.compile(r"code -\d+|signal|No space left|Errno 28|ENOSPC", re.IGNORECASE)
SURVIVABLE_LOG = re.compile(r"No space left|Errno 28|ENOSPC", re.IGNORECASE)


def job_summary(soak: Soak, table: list[dict], meta: dict) -> dict:
    ours = {j["job_id"]: j for j in table if j["job_id"] in soak.job_ids}
    succeeded, bad_students, failed, unexplained, survivable, other, tails = [], {}, {}, [], {}, {}, {}
    hit = {job for event in soak.events for job in event.get("jobs_hit", [])}
    for job_id in soak.job_ids:
        job = ours.get(job_id)
        status = job["status"] if job else "missing"
        if status == "succeeded":
            problem = soak.check_student(job_id, meta)
            if problem:
                bad_students[job_id] = problem
            else:
                succeeded.append(job_id)
        elif status == "failed":
            reason = (job.get("error") or "").strip()
            failed[job_id], tails[job_id] = reason, soak.log_tail(job_id)
            if not reason:
                unexplained.append(job_id)
            elif (SURVIVABLE_REASON.search(reason) or SURVIVABLE_LOG.search("\n".join(tails[job_id]))
                  or (job_id in hit and "not resumed again" not in reason)):  # that many interruptions: by design
                survivable[job_id] = reason
        elif status not in ("queued", "running"):
            other[job_id] = status
    stuck = [j["job_id"] for j in table if j["status"] in ("queued", "running")]
    return {"submitted": len(soak.job_ids), "succeeded": len(succeeded), "failed": len(failed),
            "failed_reasons": failed, "failed_without_reason": unexplained, "failed_from_survivable_faults": survivable,
            "failed_log_tails": tails, "hit_by_faults": sorted(hit & set(soak.job_ids)),
            "succeeded_with_bad_student": bad_students, "stuck": stuck, "other": other,
            "notes": {j: ours[j].get("notes", []) for j in soak.job_ids if j in ours and ours[j].get("notes")}}


def checks_of(record: dict, config: SoakConfig) -> dict[str, bool]:
    cls, jobs, memory = record["classification"], record["jobs"], record["front_memory"]
    checks = {
        "no classification lost": cls["lost"] == 0,
        "no unexpected 4xx on valid classifications": cls["client_error"] == 0,
        "no job stuck in queued or running": not jobs["stuck"],
        "every job succeeded with a working student or failed with a reason": (
            jobs["succeeded"] + len(jobs["failed_reasons"]) - len(jobs["failed_without_reason"]) == jobs["submitted"]),
        "at least one job succeeded": jobs["succeeded"] > 0 or jobs["submitted"] == 0,
        "no job failed from a fault it should survive (kill -9, full disk)": not jobs["failed_from_survivable_faults"],
        "no orphan job processes after the clean stop": not record["orphans"],
        f"front RSS at the end within {config.memory_tolerance:.0%} of its baseline": (
            memory["ratio"] is not None and memory["ratio"] <= 1 + config.memory_tolerance),
        "every fault injected without a harness error": not any("error" in e for e in record["events"]),
    }
    for event in record["events"]:
        if event["kind"] in ATTACKS and "passed" in event:
            name = {"slow_bodies": "slow bodies cut off by the server",
                    "padded_jpeg": "padded JPEG answered (no 5xx, no hang)",
                    "empty_weights": "empty-weights checkpoint refused with 4xx"}[event["kind"]]
            checks[name] = checks.get(name, True) and event["passed"]
    return checks


def soak_record(config: SoakConfig, soak: Soak, disk: JobsDisk, attempts: list[Attempt], jobs: dict, orphans: list[dict],
                memory: FrontMemory, baseline: tuple[int, int] | None, end: tuple[int, int] | None) -> dict:
    """The record of a finished soak run, its `checks` and `passed` included."""
    ratio = end[1] / baseline[1] if baseline and end else None
    record = {
        "command": "run_soak(config)",  # main() puts its own command line here
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": datetime.now(UTC).isoformat(
            timespec="seconds"), "config": json.loads(config.model_dump_json()), "workdir": str(soak.workdir),
        "disk": {"tmpfs_mb": disk.size_mb if config.disk_fills and disk.why_not is None else None,
                 "skipped": disk.why_not if config.disk_fills else "no disk fills asked for"},
        "events": soak.events, "down_windows_s": [round(b - a, 1) for a, b in soak.down if b is not None],
        "classification": classification_summary(attempts, soak.down), "jobs": jobs, "orphans": orphans,
        "front_memory": {"baseline_mib": round(baseline[1] / MB, 1) if baseline else None,
                         "end_mib": round(end[1] / MB, 1) if end else None,
                         "ratio": round(ratio, 3) if ratio else None,
                         "fronts": len(memory.peak), "peak_mib": round(max(memory.peak.values(), default=0) / MB, 1),
                         "same_front": bool(baseline and end and baseline[0] == end[0])},
        "seconds": soak.now(),
    }
    record["checks"] = checks_of(record, config)
    record["passed"] = all(record["checks"].values())
    return record


def render(record: dict) -> str:
    """The record for people: what was done, what came of it, and each check."""
    c, j, m = record["classification"], record["jobs"], record["front_memory"]
    lines = [f"soak of {record['seconds']:.0f} s, {record['config']['clients']} clients, {j['submitted']} jobs "
             f"({record['machine']}, {record['date']})", "faults:"]
    for e in record["events"]:
        detail = {k: v for k, v in e.items() if k not in ("kind", "at_s", "took_s")}
        lines.append(f"  {e['at_s']:6.1f} s  {e['kind']:<16} {json.dumps(detail, default=str)[:160]}")
    if record["disk"]["skipped"]:
        lines.append(f"  disk phase skipped: {record['disk']['skipped']}")
    p50 = f"{c['p50_ms']:.0f}" if c["p50_ms"] is not None else "-"
    p99 = f"{c['p99_ms']:.0f}" if c["p99_ms"] is not None else "-"
    explained = len(j["failed_reasons"]) - len(j["failed_without_reason"])
    lines += [f"classification: sent {c['sent']}, answered 200 {c['ok']}, refused 503/429 at once {c['refused']}, "
              f"lost {c['lost']}, server down {c['server_down']}, other 4xx {c['client_error']}; "
              f"p50 {p50} ms, p99 {p99} ms",
              *(f"  lost: {n} x {why}" for why, n in c["lost_why"].items()),
              f"jobs: succeeded {j['succeeded']}, failed with a reason {explained}, "
              f"failed without one {len(j['failed_without_reason'])}, stuck {len(j['stuck'])}, "
              f"bad student {len(j['succeeded_with_bad_student'])}",
              *(line for job, why in j["failed_reasons"].items() for line in (
                  f"  failed {job[:8]}: {why}", *(f"    note: {n}" for n in j["notes"].get(job, [])),
                  *(f"    log: {t[:150]}" for t in j["failed_log_tails"].get(job, [])))),
              *(f"  bad student {job[:8]}: {why}" for job, why in j["succeeded_with_bad_student"].items()),
              f"orphan processes: {len(record['orphans'])}",
              *(f"  {o['pid']}: {o['cmdline'][:150]}" for o in record["orphans"]),
              f"front RSS: {m['baseline_mib']} MiB after warm-up, {m['end_mib']} MiB at the end (ratio {m['ratio']}, "
              f"{'same front' if m['same_front'] else 'a restarted front'}), peak {m['peak_mib']} MiB",
              "checks:"]
    lines += [f"  [{'pass' if ok else 'FAIL'}] {name}" for name, ok in record["checks"].items()]
    lines.append("PASSED" if record["passed"] else "FAILED")
    return "\n".join(lines)
