"""The memory plan's report: a plan as a per-program table, a sweep as Markdown, and the
results files (OUT.json, OUT.md) with their provenance."""

from __future__ import annotations

import json
import os

GIB = 2 ** 30


def format_plan(p: dict) -> str:
    """A plan as a small per-program table (GiB per device; MiB for plans under 1 GiB)."""
    s = p["setting"]
    st = p["state_bytes_per_device"]
    unit, scale = ("GiB", GIB) if p["peak_bytes_per_device"] >= GIB else ("MiB", 2 ** 20)

    def _gib(n: int) -> str:
        return f"{n / scale:.2f}"
    lines = [
        f"{s['preset']} ({s['layers']} layers, {s['params'] / 1e9:.2f}B params) on mesh "
        f"{s['mesh']} ({s['devices']} devices): batch {s['batch']} = {s['prompts']} prompts x "
        f"{s['group']}, prompt {s['prompt_len']} + completion {s['completion_len']}, micro-batch "
        f"{s['micro_batch']} (reference {s['ref_micro_batch']}), remat {s['remat']}, "
        f"{s['param_dtype']} params, {s['master_dtype']} master + AdamW moments"
        + (f"; packed: {s['packed_rows']} rows x {s['packed_row_len']} tokens (reference "
           f"{s['packed_ref_rows']})" if s.get("packed") else ""),
        f"  train state per device: params {_gib(st['params'])} + master {_gib(st['master'])} + "
        f"optimizer {_gib(st['optimizer'])} = {_gib(st['train_state_total'])} {unit}; "
        f"reference weights {_gib(st['reference_params'])} {unit}",
        f"  {unit + ' per device':<18}{'args':>8}{'outputs':>9}{'aliased':>9}{'temps':>9}{'program':>9}"
        f"{'+other':>8}{'peak':>8}{'compile':>9}",
    ]
    for q in p["programs"]:
        lines.append(f"  {q['name']:<18}{_gib(q['arguments']):>8}{_gib(q['outputs']):>9}"
                     f"{_gib(q['aliased']):>9}{_gib(q['temporaries']):>9}"
                     f"{_gib(q['program_total']):>9}{_gib(q['resident_besides']):>8}"
                     f"{_gib(q['peak']):>8}{q['compile_s']:>8.0f}s")
    lines.append(f"  peak per device: {_gib(p['peak_bytes_per_device'])} {unit} "
                 f"({p['peak_bytes_per_device'] / 1e9:.1f} GB); <= 80 GB: "
                 f"{'yes' if p['fits_80GB'] else 'no'}; <= 24 GB: "
                 f"{'yes' if p['fits_24GB'] else 'no'}; <= 16 GB: "
                 f"{'yes' if p['fits_16GB'] else 'no'}")
    return "\n".join(lines)


def sweep_markdown(plans: list[dict]) -> str:
    """The sweep as a Markdown table (GB = 1e9 bytes, as the targets are stated)."""
    head = ("| mesh | remat | micro-batch (train / ref) | train step: args / temps / peak | "
            "ref forward: temps / peak | rollout (slots): args / temps / peak "
            "| peak per device | <= 80 GB | <= 24 GB | <= 16 GB |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for p in plans:
        s = p["setting"]
        if "refused" in p:  # the TPU compiler proved it cannot fit: no numbers to show
            rows.append(f"| {s['mesh']} | {s['remat']} | {s['micro_batch']} / "
                        f"{s['ref_micro_batch']} | compiler: {p['refused']} | - | - | - "
                        f"| no | no | no |")
            continue
        tr, rf, *ro = p["programs"]
        gb = lambda n: f"{n / 1e9:.1f}"  # noqa: E731
        yes = lambda limit: "yes" if p["peak_bytes_per_device"] <= limit else "no"  # noqa: E731
        rollout = (f"({s.get('slots') or 'all rows'}) {gb(ro[0]['arguments'])} / "
                   f"{gb(ro[0]['temporaries'])} / {gb(ro[0]['peak'])} GB" if ro else "not planned")
        rows.append(f"| {s['mesh']} | {s['remat']} | {s['micro_batch']} / {s['ref_micro_batch']} "
                    f"| {gb(tr['arguments'])} / {gb(tr['temporaries'])} / {gb(tr['peak'])} GB "
                    f"| {gb(rf['temporaries'])} / {gb(rf['peak'])} GB | {rollout} "
                    f"| **{gb(p['peak_bytes_per_device'])} GB** "
                    f"| {yes(80e9)} | {yes(24e9)} | {yes(16e9)} |")
    return head + "\n" + "\n".join(rows)


def provenance() -> dict:
    """The commit of this checkout ('unknown' outside git), the UTC date and the load averages,
    for the results files (as benchmarks/bench_common.py writes them)."""
    import datetime
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def write_results(plans: list[dict], out: str, command: str) -> None:
    """OUT.json (every number) and OUT.md (the table, with the command and XLA flags), each
    with its provenance (commit, date, load average)."""
    from socialr1_jax import cli

    prov = provenance()
    with cli.atomic_write(out + ".json") as f:
        json.dump({"provenance": prov, "command": command, "plans": plans}, f, indent=1)
    first = next((p for p in plans if "refused" not in p), plans[0])
    with cli.atomic_write(out + ".md") as f:
        f.write(f"# Memory plan: per-device bytes from XLA's compiled programs\n\n"
                f"Commit {prov['commit']}, {prov['date']}, load average "
                f"{', '.join(map(str, prov['load_avg']))}.\n\n"
                f"`{command}` (jax {first.get('jax', '?')}, backend "
                f"{first.get('backend', 'tpu (every setting refused)')}, "
                f"{first['setting'].get('devices', '?')} simulated devices, "
                f"XLA_FLAGS=`{first.get('xla_flags', '')}`). GB = 1e9 bytes.\n\n"
                + sweep_markdown(plans) + "\n")
