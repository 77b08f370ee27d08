"""Make the README's screenshot of the sweep report (``docs/screenshots/report.png``).

Run from the repository root, with the environment active (Chromium must be installed, e.g.
``apt-get install chromium``):

    python docs/screenshots/make_report_screenshot.py

It runs the demo sweep (``examples/campaign/demo.yaml``: 8 trials on 2 workers, with a tiny BERT
built on the spot instead of MiniLM) and its final fit with the baseline in a scratch folder, then
``ftsweep report campaign-demo``, and photographs the HTML with headless Chromium, the way
``tests/test_sweep_report.py`` does: ``chromium --headless --screenshot``. A few minutes on 2 cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEMO = REPO / "examples" / "campaign"
TARGET = HERE / "report.png"
WIDTH, HEIGHT = 1200, 5600
COMMANDS = (
    ["run", "demo.yaml", "--set", "trainer.model=tiny-model", "--n-trials", "8", "--workers", "2"],
    ["final", "campaign-demo", "--baseline"],
    ["report", "campaign-demo"],
)


def chromium_screenshot(html: Path, png: Path, width: int, height: int) -> None:
    """The page as Chromium draws it, headless (no display, no GPU)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("make_report_screenshot: chromium is not installed (apt-get install chromium)")
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={png}",
            f"--window-size={width},{height}",
            html.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )


def crop_blank_bottom(png: Path) -> None:
    """Cut the white space under the page's last section."""
    from PIL import Image, ImageChops

    image = Image.open(png).convert("RGB")
    box = ImageChops.difference(image, Image.new("RGB", image.size, "white")).getbbox()
    if box is not None:
        image.crop((0, 0, image.width, min(image.height, box[3] + 24))).save(png, optimize=True)


def main() -> int:
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("FTSWEEP_STORAGE", "MLFLOW_TRACKING_URI")},
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "FTSWEEP_REPORT": "off",  # the report is made once, at the end, in the foreground
    }
    folder = Path(tempfile.gettempdir()) / "ftsweep-report-screenshot"
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
        for command in COMMANDS:
            print("ftsweep", " ".join(command), flush=True)
            subprocess.run(
                [sys.executable, "-m", "orchestrator.cli", *command], cwd=folder, env=env, check=True
            )
        html = folder / "ftsweep-runs" / "campaign-demo" / "report" / "report.html"
        chromium_screenshot(html, TARGET, WIDTH, HEIGHT)
        crop_blank_bottom(TARGET)
        print(f"wrote {TARGET}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
