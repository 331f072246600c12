"""The fidelity report's Markdown table, plot and frame strip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from evaluation.rollouts import HORIZON

STRIP_HORIZONS = (1, 2, 4, 8, 12, 16)


def write_strip(real: np.ndarray, gen: np.ndarray, path: str | Path, episodes: int = 4, scale: int = 2) -> None:
    """A PNG to look at (PSNR alone rewards blur): per episode a row of real frames and below it
    the generated ones, at horizons 1, 2, 4, 8, 12, 16; the first column is the last context
    frame in both rows. ``real``: (M, 1 + H, ...) from the last context frame; ``gen``: (M, H, ...)."""
    from PIL import Image

    hs = [h for h in STRIP_HORIZONS if h <= gen.shape[1]]
    rows = []
    for m in range(min(episodes, len(gen))):
        rows.append(np.concatenate([real[m, 0]] + [real[m, h] for h in hs], 1))
        rows.append(np.concatenate([real[m, 0]] + [gen[m, h - 1] for h in hs], 1))
    img = np.concatenate(rows, 0)
    Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST).save(path)


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def pair_text(report: dict[str, Any], a: str, b: str) -> str | None:
    """'x / y' of two report fields (older reports lack them: None)."""
    if report.get(a) is None and report.get(b) is None:
        return None
    return f"{_fmt(report.get(a))} / {_fmt(report.get(b))}"


def render_markdown(report: dict[str, Any]) -> str:
    s = report["sampler"]
    span = f"1-{min(HORIZON, len(report['psnr_at']))}"  # the *_16 fields average the first 16 steps at most
    rows = [
        (f"PSNR mean {span} (dB)", report["psnr_mean_16"], report["copy_last_psnr_mean_16"], report["ae_ceiling_psnr"]),
        (f"SSIM mean {span}", report["ssim_mean_16"], report.get("copy_last_ssim_mean_16"), None),
        (f"changed-region PSNR {span}", report["changed_psnr_mean_16"], report["copy_last_changed_psnr_mean_16"], None),
        (f"seen-region PSNR {span}", report["seen_psnr_mean_16"], report["copy_last_seen_psnr_mean_16"], None),
        (f"player found {span}", report["player_found_16"], None, report.get("ae_player_found")),
        ("creatures found 1-8", report.get("creatures_found_8"), None, report.get("ae_creatures_found_8")),
        (f"player position error {span} (px)", report["player_pos_err_16"], None, None),
        (f"sharpness ratio {span}", report["sharpness_ratio_16"], None, report["ae_sharpness_ratio"]),
        ("action accuracy (IDM)", report["action_accuracy"], None, report["idm_real_accuracy"]),
        ("action accuracy on AE reconstructions", report.get("idm_ae_accuracy"), None, report["idm_real_accuracy"]),
        ("action accuracy, key changed / held", pair_text(report, "action_accuracy_switch", "action_accuracy_hold"),
         None, pair_text(report, "idm_real_accuracy_switch", "idm_real_accuracy_hold")),
        ("action accuracy, view scrolled / still", pair_text(report, "action_accuracy_view_moved",
                                                              "action_accuracy_view_still"), None, None),
        ("gap closed at step 1", report["gap_closed_1"], None, None),
        ("Fréchet early / late", f"{_fmt(report['frechet_early'])} / {_fmt(report['frechet_late'])}", None, None),
        ("revisit PSNR (dB)", report["revisit_psnr"], report["copy_last_revisit_psnr"], None),
        ("revisit centre PSNR at shift 0 / best shift (dB)",
         pair_text(report, "revisit_center_psnr", "revisit_aligned_psnr"), None, None),
        ("revisit best shift (px, |dy| + |dx|)", report.get("revisit_shift_px"), None, None),
        ("revisit from real frames / with the walk hidden (dB)",
         pair_text(report, "revisit_teacher_forced_psnr", "revisit_hidden_walk_psnr"), None, None),
        ("31 hidden frames standing still (dB)", report.get("revisit_hidden_still_psnr"),
         report.get("copy_last_still_psnr"), None),
        (f"walks that returned ({sum(report.get('revisit_returned') or [])} of "
         f"{len(report.get('revisit_returned') or [])}): revisit / walk hidden (dB)",
         pair_text(report, "revisit_psnr_returned", "revisit_hidden_walk_psnr_returned"),
         report.get("copy_last_revisit_psnr_returned"), None),
    ]
    p = report["protocol"]
    out = [f"# Evaluation: {report['provenance']['checkpoint']}", "",
           f"Sampler {s['kind']} {s['steps']} steps, CFG {s['cfg']}, shift {s['shift']}; {p['episodes']} episodes of "
           f"{p['world']}, {p['context']} context frames, horizon {p['horizon']}; seeds from {min(p['eval_seeds'])}.",
           "", "| measure | model | copy last frame | ceiling (AE / real) |", "|---|---|---|---|"]
    out += [f"| {name} | {_fmt(a)} | {_fmt(b)} | {_fmt(c)} |" for name, a, b, c in rows]
    out += ["", "PSNR per horizon step: " + ", ".join(f"{v:.1f}" for v in report["psnr_at"]), "",
            f"Command: `{report['provenance']['command']}` (git {report['provenance']['git_commit']})", ""]
    return "\n".join(out)


def render_plot(report: dict[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = np.arange(1, len(report["psnr_at"]) + 1)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].plot(h, report["psnr_at"], label="model")
    ax[0].plot(h, report["copy_last_psnr_at"], label="copy last frame", ls="--")
    ax[0].plot(h, report["ae_ceiling_psnr_at"], label="autoencoder ceiling", ls=":")
    if report.get("changed_psnr_at"):
        ax[0].plot(h, [np.nan if v is None else v for v in report["changed_psnr_at"]], label="model, changed region")
    ax[0].set_xlabel("horizon (frames)")
    ax[0].set_ylabel("PSNR (dB)")
    ax[0].legend(fontsize=7)
    ax[1].plot(h, report["sharpness_ratio_at"], label="sharpness ratio")
    if report.get("player_found_at"):
        ax[1].plot(h, report["player_found_at"], label="player found")
    ax[1].axhline(1.0, color="grey", lw=0.5)
    ax[1].set_xlabel("horizon (frames)")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
