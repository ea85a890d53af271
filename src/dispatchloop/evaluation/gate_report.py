"""`gate --html FILE`: one self-contained page a person can sign a promotion off from.

Four figures (matplotlib, rendered to PNG and embedded, so the file travels
alone): the per-episode paired differences, the sequential looks with their
intervals against the margin, each guardrail's rise against its margin, and the
off-policy importance weights. Below them the gate table and the record as JSON.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

from dispatchloop.evaluation.gate_run import render_record
from dispatchloop.evaluation.judge import Judgement


def write_html(judgement: Judgement, path: str) -> None:
    """Render the judgement's figures and record into a self-contained HTML file."""
    image = _figure_png(judgement)
    record = judgement.record
    title = f"{html.escape(record.candidate)} vs {html.escape(str(record.champion))}"
    body = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>gate: {title}</title>",
        "<body style='font-family:sans-serif;max-width:1100px;margin:auto'>",
        f"<h1>{html.escape(record.verdict.replace('_', ' '))}: {html.escape(record.candidate)}"
        f" vs {html.escape(str(record.champion))}</h1>",
        f"<img alt='gate figures' style='width:100%' src='data:image/png;base64,{image}'>",
        f"<pre>{html.escape(render_record(record))}</pre>",
        "<h2>Decision record</h2>",
        f"<pre>{html.escape(record.model_dump_json(indent=2))}</pre>",
        f"<p>Judged in {judgement.seconds:.1f} s.</p></body>",
    ]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(body))


def _figure_png(judgement: Judgement) -> str:
    import matplotlib  # noqa: PLC0415 - only the report needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(2, 2, figsize=(13, 9))
    _differences(axes[0][0], judgement)
    _looks(axes[0][1], judgement)
    _guardrails(axes[1][0], judgement)
    _weights(axes[1][1], judgement)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _differences(ax: Any, judgement: Judgement) -> None:
    ax.set_title("paired difference per TEST episode (candidate − champion reward)")
    diffs = judgement.differences
    if diffs.size == 0:
        ax.text(0.5, 0.5, "not played", ha="center", transform=ax.transAxes)
        return
    ax.hist(diffs, bins=60, color="tab:blue", alpha=0.8)
    ax.axvline(0.0, color="black", lw=1)
    ax.axvline(float(diffs.mean()), color="tab:red", lw=2, label=f"mean {diffs.mean():+.2f}")
    ax.set_xlabel("reward per episode")
    ax.legend()


def _looks(ax: Any, judgement: Judgement) -> None:
    paired = judgement.evidence.paired
    ax.set_title("sequential looks: mean and simultaneous interval")
    if paired is None:
        ax.text(0.5, 0.5, "not played", ha="center", transform=ax.transAxes)
        return
    n = [look.episodes for look in paired.looks]
    means = np.array([look.mean for look in paired.looks])
    lows = means - np.array([look.ci.low for look in paired.looks])
    highs = np.array([look.ci.high for look in paired.looks]) - means
    ax.errorbar(n, means, yerr=[lows, highs], fmt="o", capsize=5)
    ax.axhline(paired.margin, color="tab:red", ls="--", label=f"margin {paired.margin:g}")
    for planned in paired.design.looks:
        ax.axvline(planned, color="grey", lw=0.5)
    ax.set_xlabel("paired episodes")
    ax.set_ylabel("candidate − champion reward")
    ax.legend()


def _guardrails(ax: Any, judgement: Judgement) -> None:
    ax.set_title("guardrails: rise / margin (left of 1 holds)")
    gates = {g.name: g for g in judgement.record.gates if g.name.startswith("guardrail.")}
    if not gates or any(g.ci is None or not g.threshold for g in gates.values()):
        ax.text(0.5, 0.5, "no guardrail intervals", ha="center", transform=ax.transAxes)
        return
    names = list(gates)
    for row, name in enumerate(names):
        gate = gates[name]
        assert gate.ci is not None and gate.threshold and gate.value is not None
        scale = gate.threshold
        ax.plot([gate.ci[0] / scale, gate.ci[1] / scale], [row, row], color="tab:blue", lw=3)
        ax.plot(gate.value / scale, row, "o", color="black")
    ax.axvline(1.0, color="tab:red", ls="--")
    ax.axvline(0.0, color="black", lw=0.5)
    ax.set_yticks(range(len(names)), [n.removeprefix("guardrail.") for n in names])


def _weights(ax: Any, judgement: Judgement) -> None:
    ope = judgement.evidence.ope
    ax.set_title("off-policy importance weights on logged decisions")
    if ope is None:
        ax.text(
            0.5, 0.5, judgement.evidence.ope_note, ha="center", wrap=True, transform=ax.transAxes
        )
        return
    for label, estimates in (("candidate", ope.candidate), ("champion", ope.champion)):
        support = estimates.support
        ax.hist(
            estimates.weights,
            bins=40,
            alpha=0.6,
            label=f"{label}: ESS {support.ess:.0f}, max {support.max_weight:.2f}",
        )
    ax.set_yscale("log")
    ax.set_xlabel("π(a|s) / μ(a|s)")
    ax.legend()
