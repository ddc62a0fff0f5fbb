"""Pictures of the report's tables (matplotlib, installed by Scripts/bench): each bar labelled with the very text
of its table cell, so a picture can never say another number than the table beside it."""

import matplotlib

matplotlib.use("Agg")   # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

OURS, THEIRS = "#1f6fb4", "#c8c8c8"


def paired_bars(path, title, footer, rows, ours_label, theirs_label):
    """Writes a PNG of horizontal bar pairs, top to bottom in the order of ROWS: (label, ours, ours_text, theirs,
    theirs_text), seconds, either side None where there is no figure. Returns the texts written beside the bars."""
    figure, axes = plt.subplots(figsize=(9, 0.9 * len(rows) + 1.9), dpi=120)
    height, drawn = 0.38, []
    longest = max([v for _, ours, _, theirs, _ in rows for v in (ours, theirs) if v is not None] or [1])
    for index, (label, ours, ours_text, theirs, theirs_text) in enumerate(rows):
        y = len(rows) - 1 - index
        for offset, value, text, colour in ((height / 2, ours, ours_text, OURS), (-height / 2, theirs, theirs_text, THEIRS)):
            if value is None:
                continue
            axes.barh(y + offset, value, height, color=colour)
            axes.text(value + longest * 0.01, y + offset, text, va="center", fontsize=9)
            drawn.append(text)
    axes.set_yticks(range(len(rows)), [label for label, *_ in reversed(rows)], fontsize=9)
    axes.set_xlim(0, longest * 1.25)
    axes.set_xlabel("seconds (shorter is better)")
    axes.spines[["top", "right"]].set_visible(False)
    axes.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=OURS), plt.Rectangle((0, 0), 1, 1, color=THEIRS)],
                labels=[ours_label, theirs_label], loc="lower right", fontsize=9, frameon=False)
    axes.set_title(title, fontsize=11, loc="left")
    figure.text(0.01, 0.01, footer, fontsize=8, color="#555555")
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    # No timestamp in the file: the date on the picture is the run's, and a rerun of --report-only gives the same bytes.
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)
    return drawn
