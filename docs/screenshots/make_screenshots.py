"""Make the README's screenshots: the live view of a sweep and ``ftsweep status``, at 80 columns.

Run from the repository root, with the environment active (tmux must be installed):

    python docs/screenshots/make_screenshots.py

It runs the demo sweep (``examples/campaign/demo.yaml``: 6 trials on 2 workers, with a tiny BERT
built on the spot instead of MiniLM, so that it takes a minute or two) in a scratch folder, inside
a tmux window of 80 x 24, and captures the window while trials are running (once a trial has
finished, so that a best value shows too); then it runs ``ftsweep status campaign-demo`` in an
80-column window. Each capture is written as text (``live-view.txt``, ``status-80.txt``) and as a
PNG drawn with matplotlib (``live-view.png``, ``status-80.png``) beside this script.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEMO = REPO / "examples" / "campaign"
WIDTH = 80
HEIGHT = 24
RUN = "ftsweep run demo.yaml --set trainer.model=tiny-model --n-trials 6 --workers 2"
STATUS = "ftsweep status campaign-demo"
#: Not passed on: the window's own size, and stores other than the scratch folder's.
LEFT_OUT_VARIABLES = ("COLUMNS", "LINES", "FTSWEEP_STORAGE", "MLFLOW_TRACKING_URI")


class Terminal:
    """A tmux server of its own with one window of ``width`` x ``height``."""

    def __init__(self, tmux: str, folder: Path, env: dict[str, str]) -> None:
        self.tmux = tmux
        self.folder = folder
        self.env = env
        config = folder / "tmux.conf"
        config.write_text("set -g remain-on-exit on\nset -g history-limit 5000\n", encoding="utf-8")
        self.server = ["-L", f"ftsweep-shots-{uuid.uuid4().hex[:8]}", "-f", str(config)]

    def start(self, name: str, command: str, height: int = HEIGHT) -> None:
        """Show ``$ command`` as typed at a prompt, then run it; ``<name>.exit`` holds its exit status."""
        script = self.folder / f"{name}.sh"
        script.write_text(
            f"printf '$ %s\\n' {shlex.quote(command)}\n{command}\necho $? > {name}.exit\n", encoding="utf-8"
        )
        subprocess.run(
            [self.tmux, *self.server, "new-session", "-d", "-s", name, "-x", str(WIDTH), "-y", str(height)]
            + ["-c", str(self.folder), f"sh {script.name}"],
            check=True,
            env=self.env,
        )

    def screen(self, name: str, history: bool = False) -> list[str]:
        """The window's text (``-J``: a line the terminal wrapped comes back whole, to be measured)."""
        extra = ["-S", "-"] if history else []
        captured = subprocess.run(
            [self.tmux, *self.server, "capture-pane", "-p", "-J", "-t", name, *extra],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        # remain-on-exit keeps a finished command's window readable, and adds a line of its own.
        lines = [line.rstrip() for line in captured.splitlines() if not line.startswith("Pane is dead")]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    def finished(self, name: str) -> bool:
        return (self.folder / f"{name}.exit").exists()

    def close(self) -> None:
        subprocess.run([self.tmux, *self.server, "kill-server"], check=False, capture_output=True)


def wait_for(condition, what: str, timeout: float = 900.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    raise SystemExit(f"make_screenshots: {what} did not happen within {timeout:.0f} s")


def capture_live_view(terminal: Terminal, timeout: float = 900.0) -> list[str]:
    """The run's window while two trials run and a best value shows: preferably with both trials past
    their first epoch, else the first such screen."""
    deadline = time.monotonic() + timeout
    fallback: list[str] | None = None
    while time.monotonic() < deadline:
        ended = terminal.finished("run")
        lines = terminal.screen("run")
        rows = [line for line in lines if re.match(r"\s*\d+\s+cpu ", line)]
        past_first_epoch = [row for row in rows if re.search(r"\s[1-9]\d*/\d+\s", row)]
        if len(rows) >= 2 and past_first_epoch and any("best val_f1" in line for line in lines):
            if len(past_first_epoch) == len(rows):
                return lines
            fallback = fallback or lines
        if ended:
            if fallback is None:
                print("\n".join(terminal.screen("run", history=True)), file=sys.stderr)
                raise SystemExit("make_screenshots: the sweep ended before its live view could be captured")
            return fallback
        time.sleep(0.2)
    raise SystemExit(f"make_screenshots: no live view within {timeout:.0f} s")


def write_png(lines: list[str], path: Path, title: str) -> None:
    """Monospace text on a dark background, one row per line, 80 columns wide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    font_size = 10.0
    char_width = 0.6 * font_size / 72  # inches: DejaVu Sans Mono's advance is 0.6 em
    line_height = 1.25 * font_size / 72
    margin = 0.25
    rows = [title, ""] + lines
    figure = plt.figure(
        figsize=(WIDTH * char_width + 2 * margin, len(rows) * line_height + 2 * margin), facecolor="#1e1e1e"
    )
    height = figure.get_figheight()
    for index, line in enumerate(rows):
        figure.text(
            margin / figure.get_figwidth(),
            1 - (margin + index * line_height) / height,
            line,
            family="DejaVu Sans Mono",
            size=font_size,
            color="#8fbcbb" if index == 0 else "#e0e0e0",
            va="top",
            ha="left",
        )
    figure.savefig(path, dpi=110, facecolor=figure.get_facecolor())
    plt.close(figure)


def save(lines: list[str], name: str, title: str) -> None:
    too_wide = [line for line in lines if len(line) > WIDTH]
    if too_wide:
        raise SystemExit(
            f"make_screenshots: {name}: {len(too_wide)} line(s) wider than {WIDTH}: {too_wide[0]!r}"
        )
    (HERE / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_png(lines, HERE / f"{name}.png", title)
    print(f"wrote {HERE / name}.txt and .png ({len(lines)} lines)")


def main() -> int:
    tmux = shutil.which("tmux")
    if tmux is None:
        print("make_screenshots: tmux is not installed (e.g. apt-get install tmux)", file=sys.stderr)
        return 2
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **{key: value for key, value in os.environ.items() if key not in LEFT_OUT_VARIABLES},
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO),
        "TERM": "xterm-256color",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    # A folder of a fixed name: the paths the sweep prints read the same each time.
    folder = Path(tempfile.gettempdir()) / "ftsweep-screenshots"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    try:
        for name in ("demo.yaml", "train.csv", "val.csv", "test.csv"):
            shutil.copy(DEMO / name, folder / name)
        sys.path.insert(0, str(REPO))
        import csv

        from trainers.tiny_model import build_tiny_model

        with open(folder / "train.csv", newline="", encoding="utf-8") as stream:
            texts = [row["text"] for row in csv.DictReader(stream)]
        build_tiny_model(folder / "tiny-model", texts, num_layers=2, hidden_size=64, num_heads=2)
        terminal = Terminal(tmux, folder, env)
        try:
            terminal.start("run", RUN)
            live = capture_live_view(terminal)
            save(live, "live-view", "ftsweep run: the live view in an 80 x 24 terminal")
            wait_for(lambda: terminal.finished("run"), "the end of the sweep")
            terminal.start("status", STATUS)
            wait_for(lambda: terminal.finished("status"), "ftsweep status")
            save(terminal.screen("status", history=True), "status-80", "ftsweep status in 80 columns")
        finally:
            terminal.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
